"""Publishing fields of a save: tags (`metadata`), chapter marks (`chapters`) and several
`outputs` of one render.

Validated at the API (a 422 naming the field) and again in the worker (the event could come
from anywhere). Chapter times are **source** milliseconds; `output_chapters` moves them onto the
rendered file's timeline (trim, voice-chain cuts, speed). docs/publishing.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec

from audioprep.domain.recipe import OutputOptions, SaveFormat
from audioprep.shared.keys import DEFAULT_TENANT, safe_filename, stem
from audioprep.shared.names import check_token

MAX_CHAPTERS: Final = 500
MAX_OUTPUTS: Final = 5
CHAPTERS_JSON_VERSION: Final = "1.2.0"
CHAPTERS_MEDIA_TYPE: Final = "application/json+chapters"

# No NUL or other C0 controls (tab allowed); tags are single lines except `comment`.
_LINE = r"^[^\x00-\x08\x0a-\x1f\x7f]*$"
_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
_Line = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=_LINE)]
_Comment = Annotated[str, msgspec.Meta(min_length=1, max_length=4000, pattern=_TEXT)]
_Date = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?$",
        description="ISO 8601 date: YYYY, YYYY-MM or YYYY-MM-DD",
    ),
]
_Language = Annotated[
    str, msgspec.Meta(pattern=r"^[a-z]{3}$", description="ISO 639-2 code, e.g. `eng`, `deu`")
]
_Key = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
_Url = Annotated[str, msgspec.Meta(min_length=8, max_length=2048, pattern=r"^https?://[!-~]+$")]


class _Strict(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    rename="camel",
    forbid_unknown_fields=True,
    omit_defaults=True,
):
    pass


class Metadata(_Strict, frozen=True, kw_only=True):
    """Tags written into a saved file; every field optional. `album` is the show, `track` the
    episode number; `coverKey` is an `imageKey` from `POST /api/images`."""

    title: _Line | None = None
    artist: _Line | None = None
    album: _Line | None = None
    album_artist: _Line | None = None
    track: Annotated[int, msgspec.Meta(ge=1, le=999_999)] | None = None
    year: Annotated[int, msgspec.Meta(ge=1000, le=9999)] | None = None
    date: _Date | None = None
    genre: _Line | None = None
    comment: _Comment | None = None
    language: _Language | None = None
    publisher: _Line | None = None
    copyright: _Line | None = None
    cover_key: _Key | None = None

    @property
    def date_text(self) -> str | None:
        """`date`, else `year` as text."""
        if self.date is not None:
            return self.date
        return str(self.year) if self.year is not None else None


class Chapter(_Strict, frozen=True, kw_only=True):
    start_ms: Annotated[int, msgspec.Meta(ge=0, le=100 * 3600 * 1000)]
    title: _Line
    url: _Url | None = None


class Output(_Strict, frozen=True, kw_only=True):
    """One file of a save with several outputs: its format, encoder options and name."""

    format: SaveFormat
    options: OutputOptions | None = None
    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None


OutputList = Annotated[list[Output], msgspec.Meta(min_length=1, max_length=MAX_OUTPUTS)]


def output_stems(outputs: list[Output], default: str) -> list[str]:
    """Each output's storage-safe file stem (its `filename`, else `default`); two outputs of
    one format with the same stem get `-2`, `-3` so no file overwrites another."""
    taken: set[tuple[str, str]] = set()
    stems: list[str] = []
    for output in outputs:
        base = safe_filename(stem(output.filename)) if output.filename else default
        name, n = base, 1
        while (output.format, name) in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add((output.format, name))
        stems.append(name)
    return stems


class MetadataError(ValueError):
    """A cross-field rule broken; `field` is the JSON path (without `$.`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message


ChapterList = Annotated[list[Chapter], msgspec.Meta(max_length=MAX_CHAPTERS)]


def _one_line(field: str, value: str | None) -> None:
    # msgspec matches patterns with re.search, where `$` also matches before a final "\n":
    # the schema's (ECMAScript) reading of _LINE refuses it, so do we.
    if value is not None and "\n" in value:
        raise MetadataError(field, "must be a single line")


def check_metadata(metadata: Metadata | None) -> None:
    """Rules the field patterns can't say exactly. (`date` wins over `year` when both are
    given: a cross-field 422 would refuse bodies the published schema calls valid.)"""
    if metadata is None:
        return
    for name, encoded in zip(
        metadata.__struct_fields__, metadata.__struct_encode_fields__, strict=True
    ):
        value = getattr(metadata, name)
        if isinstance(value, str) and name != "comment":
            _one_line(f"metadata.{encoded}", value)


def sorted_chapters(chapters: list[Chapter] | None) -> list[Chapter]:
    """Chapters by start time (stable: of two at the same start, the later one in the request
    is the one that plays, see `output_chapters`)."""
    if not chapters:
        return []
    for index, chapter in enumerate(chapters):
        _one_line(f"chapters[{index}].title", chapter.title)
        _one_line(f"chapters[{index}].url", chapter.url)
    return sorted(chapters, key=lambda chapter: chapter.start_ms)


def parse_metadata(raw: dict[str, Any] | None) -> Metadata | None:
    """The worker's check of `JobRequested.metadata` (msgspec.ValidationError / MetadataError)."""
    if raw is None:
        return None
    metadata = msgspec.convert(raw, Metadata)
    check_metadata(metadata)
    return metadata


def parse_chapters(raw: list[dict[str, Any]] | None) -> list[Chapter]:
    if not raw:
        return []
    return sorted_chapters(msgspec.convert(raw, list[Chapter]))


@dataclass(frozen=True, slots=True)
class OutputChapter:
    """A chapter on the output's timeline: [start_ms, end_ms)."""

    start_ms: int
    end_ms: int
    title: str
    url: str | None = None


def output_chapters(
    chapters: list[Chapter],
    *,
    duration_ms: int,
    kept_start_ms: int = 0,
    kept_end_ms: int | None = None,
    cuts_ms: list[tuple[int, int]] | None = None,
    speed: float = 1.0,
    offset_ms: int = 0,
    episode_ms: int | None = None,
) -> list[OutputChapter]:
    """Move source-time chapters onto the output.

    Output time of source time t = offset + (t − kept start − cut time before t) / speed,
    where `offset` is where the episode starts (after an intro, less its crossfade). A chapter
    at or past the kept end (or the episode's end in the output) is dropped. Chapters that
    land on the same output time (all those before the kept start land on the episode's
    start; a chapter inside a cut lands where the cut was) keep only the last of them: its
    content is what plays from there. The last chapter ends with the output (an outro).
    """
    cuts = sorted(cuts_ms or [])
    end_of_episode = duration_ms if episode_ms is None else min(offset_ms + episode_ms, duration_ms)
    placed: dict[int, Chapter] = {}
    for chapter in chapters:
        t = chapter.start_ms
        if kept_end_ms is not None and t >= kept_end_ms:
            continue
        t = max(t, kept_start_ms)
        removed = sum(max(0, min(end, t) - max(start, kept_start_ms)) for start, end in cuts)
        out = offset_ms + round((t - kept_start_ms - removed) / speed)
        if out >= end_of_episode:
            continue
        placed[max(out, offset_ms, 0)] = chapter  # a later chapter replaces one at its time
    starts = sorted(placed)
    return [
        OutputChapter(
            start_ms=start,
            end_ms=starts[i + 1] if i + 1 < len(starts) else duration_ms,
            title=placed[start].title,
            url=placed[start].url,
        )
        for i, start in enumerate(starts)
    ]


def chapters_json(chapters: list[OutputChapter], metadata: Metadata | None = None) -> bytes:
    """Podcasting 2.0 JSON chapters (`application/json+chapters`, version 1.2.0)."""
    doc: dict[str, Any] = {"version": CHAPTERS_JSON_VERSION}
    if metadata is not None and metadata.title:
        doc["title"] = metadata.title
    if metadata is not None and metadata.album:
        doc["podcastName"] = metadata.album
    doc["chapters"] = [
        {
            "startTime": c.start_ms / 1000,
            "endTime": c.end_ms / 1000,
            "title": c.title,
            **({"url": c.url} if c.url else {}),
        }
        for c in chapters
    ]
    return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"


# ---- cover images (POST /api/images) -------------------------------------------------------

IMAGES_DIR: Final = "images"
JPEG_MAGIC: Final = b"\xff\xd8\xff"
PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"


def image_kind(data: bytes) -> str | None:
    """`jpeg` / `png` from the first bytes (never from a name or a Content-Type)."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


def image_key(tenant: str, digest: str, kind: str) -> str:
    """`[tenants/<t>/]images/<sha256 of the re-encoded bytes>.<jpg|png>`: one key per picture."""
    ext = "jpg" if kind == "jpeg" else "png"
    key = f"{IMAGES_DIR}/{digest}.{ext}"
    return key if tenant == DEFAULT_TENANT else f"tenants/{check_token(tenant)}/{key}"


def is_image_key_of(tenant: str, key: str) -> bool:
    """A key `image_key` could have made for this tenant."""
    prefix = "" if tenant == DEFAULT_TENANT else f"tenants/{tenant}/"
    rest = key.removeprefix(prefix) if key.startswith(prefix) else None
    if rest is None or not rest.startswith(f"{IMAGES_DIR}/"):
        return False
    name = rest[len(IMAGES_DIR) + 1 :]
    stem, _, ext = name.partition(".")
    return ext in ("jpg", "png") and len(stem) == 64 and all(c in "0123456789abcdef" for c in stem)

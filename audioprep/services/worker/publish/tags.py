# mypy: disable-error-code="no-untyped-call"
# (mutagen ships py.typed but leaves most of its constructors unannotated)
"""Tags, cover art and chapters written natively into each container (mutagen, plus PyAV for
MP4 chapters). Blocking file I/O: the worker runs `write_publishing` in a thread.

- mp3: ID3v2.4 frames, APIC front cover, CHAP + CTOC chapters.
- aac (.m4a): iTunes atoms (freeform ones for language and publisher), covr; chapters as a
  Nero `chpl` atom and a QuickTime chapter track (FFmpeg's mp4 muxer, through a PyAV remux).
- flac: Vorbis comments, a PICTURE block, CHAPTERxxx comments.
- opus: Vorbis comments, METADATA_BLOCK_PICTURE, CHAPTERxxx comments.
- wav: a RIFF LIST/INFO chunk and an `id3 ` chunk (ID3v2.4 with APIC and CHAP/CTOC).
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
from mutagen.flac import FLAC, Picture
from mutagen.id3 import (
    APIC,
    CHAP,
    COMM,
    CTOC,
    ID3,
    TALB,
    TCON,
    TCOP,
    TDRC,
    TIT2,
    TLAN,
    TPE1,
    TPE2,
    TPUB,
    TRCK,
    WXXX,
    CTOCFlags,
    Encoding,
    ID3NoHeaderError,
    PictureType,
)
from mutagen.id3._tags import save_frame  # one frame's bytes, as ID3.save writes it
from mutagen.mp4 import MP4, MP4Cover, MP4FreeForm
from mutagen.oggopus import OggOpus
from mutagen.wave import WAVE

from audioprep.domain.errors import Permanent
from audioprep.services.worker.publish.cover import Cover
from audioprep.shared.metadata import Metadata, OutputChapter

UTF8 = Encoding.UTF8
ITUNES = "----:com.apple.iTunes:"


def write_publishing(
    path: Path,
    fmt: str,
    metadata: Metadata | None,
    cover: Cover | None,
    chapters: list[OutputChapter],
) -> None:
    """Write everything this format can carry into `path`, in place."""
    writer = _WRITERS.get(fmt)
    if writer is None:
        raise Permanent(f"no tag writer for {fmt}", code="publish_failed")
    try:
        writer(path, metadata or Metadata(), cover, chapters)
    except Permanent:
        raise
    except Exception as exc:
        raise Permanent(f"writing tags failed: {exc}", code="publish_failed") from exc


# ---- ID3 (mp3, wav) --------------------------------------------------------------------------


def _id3_frames(tags: ID3, m: Metadata, cover: Cover | None, chapters: list[OutputChapter]) -> None:
    text = {
        "TIT2": (TIT2, m.title),
        "TPE1": (TPE1, m.artist),
        "TALB": (TALB, m.album),
        "TPE2": (TPE2, m.album_artist),
        "TRCK": (TRCK, str(m.track) if m.track is not None else None),
        "TDRC": (TDRC, m.date_text),
        "TCON": (TCON, m.genre),
        "TLAN": (TLAN, m.language),
        "TPUB": (TPUB, m.publisher),
        "TCOP": (TCOP, m.copyright),
    }
    for frame_id, (frame, value) in text.items():
        if value is not None:
            tags.setall(frame_id, [frame(encoding=UTF8, text=[value])])
    if m.comment is not None:
        tags.delall("COMM")
        tags.add(COMM(encoding=UTF8, lang=m.language or "und", desc="", text=[m.comment]))
    if cover is not None:
        tags.delall("APIC")
        tags.add(
            APIC(
                encoding=UTF8,
                mime=cover.mime,
                type=PictureType.COVER_FRONT,
                desc="cover",
                data=cover.data,
            )
        )
    if chapters:
        tags.delall("CHAP")
        tags.delall("CTOC")
        ids = [f"chp{i}" for i in range(len(chapters))]
        for element_id, chapter in zip(ids, chapters, strict=True):
            sub: list[Any] = [TIT2(encoding=UTF8, text=[chapter.title])]
            if chapter.url:
                sub.append(WXXX(encoding=UTF8, desc="", url=chapter.url))
            tags.add(
                CHAP(
                    element_id=element_id,
                    start_time=chapter.start_ms,
                    end_time=chapter.end_ms,
                    start_offset=0xFFFFFFFF,
                    end_offset=0xFFFFFFFF,
                    sub_frames=sub,
                )
            )
        tags.add(
            CTOC(
                element_id="toc",
                flags=CTOCFlags.TOP_LEVEL | CTOCFlags.ORDERED,
                child_element_ids=ids,
                sub_frames=[TIT2(encoding=UTF8, text=["Chapters"])],
            )
        )


def _chapters_last_in_order(tags: ID3) -> None:
    """mutagen orders frames by size; FFmpeg (and players that skip CTOC) list CHAP frames in
    file order. Have this instance write its CHAP frames last, by start time."""
    write = tags._write

    def chronological(config: Any) -> bytearray:
        keys = [k for k, frame in tags.items() if frame.FrameID == "CHAP"]
        chaps = sorted((tags.pop(k) for k in keys), key=lambda frame: frame.start_time)
        try:
            data: bytearray = write(config)
        finally:
            for frame in chaps:
                tags.add(frame)
        for frame in chaps:
            data += save_frame(frame, config=config)
        return data

    tags._write = chronological  # type: ignore[method-assign]


def _mp3(path: Path, m: Metadata, cover: Cover | None, chapters: list[OutputChapter]) -> None:
    try:
        tags = ID3(path)
    except ID3NoHeaderError:
        tags = ID3()
    _id3_frames(tags, m, cover, chapters)
    _chapters_last_in_order(tags)
    tags.save(path, v2_version=4)


def _wav(path: Path, m: Metadata, cover: Cover | None, chapters: list[OutputChapter]) -> None:
    _riff_info(path, m)
    wave = WAVE(path)
    if wave.tags is None:
        wave.add_tags()
    assert isinstance(wave.tags, ID3)
    _id3_frames(wave.tags, m, cover, chapters)
    _chapters_last_in_order(wave.tags)
    wave.save(v2_version=4)


# RIFF INFO ids FFmpeg (and most players) read; album artist and publisher go to ID3 only.
_INFO: tuple[tuple[bytes, Callable[[Metadata], str | None]], ...] = (
    (b"INAM", lambda m: m.title),
    (b"IART", lambda m: m.artist),
    (b"IPRD", lambda m: m.album),
    (b"ITRK", lambda m: str(m.track) if m.track is not None else None),
    (b"ICRD", lambda m: m.date_text),
    (b"IGNR", lambda m: m.genre),
    (b"ICMT", lambda m: m.comment),
    (b"ILNG", lambda m: m.language),
    (b"ICOP", lambda m: m.copyright),
)


def _chunk(cid: bytes, payload: bytes) -> bytes:
    return cid + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def _riff_info(path: Path, m: Metadata) -> None:
    """Replace any LIST/INFO chunk with ours (placed before `data`), copying the audio by
    streaming into a sibling file that then replaces the original."""
    fields = [(cid, get(m)) for cid, get in _INFO]
    items = b"".join(_chunk(cid, value.encode() + b"\0") for cid, value in fields if value)
    if not items:
        return
    info = _chunk(b"LIST", b"INFO" + items)
    size = path.stat().st_size
    tmp = path.with_name(path.name + ".tags")
    with open(path, "rb") as src:
        head = src.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # RF64 or not RIFF: the ID3 chunk alone carries the tags
        with open(tmp, "wb") as out:
            out.write(head)
            written = False
            pos = 12
            while pos + 8 <= size:
                src.seek(pos)
                cid, length = struct.unpack("<4sI", src.read(8))
                end = min(pos + 8 + length + (length % 2), size)
                if cid == b"LIST":
                    kind = src.read(4)
                    if kind == b"INFO":
                        pos = end
                        continue
                if cid == b"data" and not written:
                    out.write(info)
                    written = True
                src.seek(pos)
                _copy(src, out, end - pos)
                pos = end
            if not written:
                out.write(info)
            total = out.tell()
            out.seek(4)
            out.write(struct.pack("<I", total - 8))
    os.replace(tmp, path)


def _copy(src: BinaryIO, out: BinaryIO, count: int) -> None:
    while count > 0:
        block = src.read(min(count, 1 << 20))
        if not block:
            return
        out.write(block)
        count -= len(block)


# ---- Vorbis comments (flac, opus) ------------------------------------------------------------


def _vorbis_fields(m: Metadata) -> dict[str, str | None]:
    return {
        "TITLE": m.title,
        "ARTIST": m.artist,
        "ALBUM": m.album,
        "ALBUMARTIST": m.album_artist,
        "TRACKNUMBER": str(m.track) if m.track is not None else None,
        "DATE": m.date_text,
        "GENRE": m.genre,
        "COMMENT": m.comment,
        "LANGUAGE": m.language,
        "PUBLISHER": m.publisher,
        "ORGANIZATION": m.publisher,
        "COPYRIGHT": m.copyright,
    }


def _timestamp(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _vorbis(tags: Any, m: Metadata, chapters: list[OutputChapter]) -> None:
    for name, value in _vorbis_fields(m).items():
        if value is not None:
            tags[name] = [value]
    if chapters:
        for key in list(tags.keys()):
            if key.upper().startswith("CHAPTER"):
                del tags[key]
        for i, chapter in enumerate(chapters, start=1):
            tags[f"CHAPTER{i:03d}"] = [_timestamp(chapter.start_ms)]
            tags[f"CHAPTER{i:03d}NAME"] = [chapter.title]
            if chapter.url:
                tags[f"CHAPTER{i:03d}URL"] = [chapter.url]


def _picture(cover: Cover) -> Picture:
    pic = Picture()
    pic.type = PictureType.COVER_FRONT
    pic.mime = cover.mime
    pic.desc = "cover"
    pic.width, pic.height, pic.depth = cover.width, cover.height, cover.depth
    pic.data = cover.data
    return pic


def _flac(path: Path, m: Metadata, cover: Cover | None, chapters: list[OutputChapter]) -> None:
    audio = FLAC(path)
    if audio.tags is None:
        audio.add_tags()
    _vorbis(audio.tags, m, chapters)
    if cover is not None:
        audio.clear_pictures()
        audio.add_picture(_picture(cover))
    audio.save()


def _opus(path: Path, m: Metadata, cover: Cover | None, chapters: list[OutputChapter]) -> None:
    audio = OggOpus(path)
    assert audio.tags is not None  # an Opus stream always has its OpusTags packet
    _vorbis(audio.tags, m, chapters)
    if cover is not None:
        audio.tags["METADATA_BLOCK_PICTURE"] = [
            base64.b64encode(_picture(cover).write()).decode("ascii")
        ]
    audio.save()


# ---- MP4 (aac in .m4a) -----------------------------------------------------------------------


def _mp4_chapters(path: Path, chapters: list[OutputChapter]) -> None:
    """Remux (packets copied, nothing re-encoded) with FFmpeg's muxer writing the chapters:
    a Nero `chpl` atom and a QuickTime chapter text track (what Apple's apps read)."""
    tmp = path.with_name(path.name + ".chapters.m4a")
    try:
        with av.open(str(path)) as src, av.open(str(tmp), "w", format="ipod") as out:
            audio = src.streams.audio[0]
            stream = out.add_stream_from_template(audio)
            for key, value in src.metadata.items():
                out.metadata[key] = value
            out.set_chapters(
                [
                    {
                        "id": i + 1,
                        "start": c.start_ms,
                        "end": c.end_ms,
                        "time_base": Fraction(1, 1000),
                        "metadata": {"title": c.title},
                    }
                    for i, c in enumerate(chapters)
                ]
            )
            for packet in src.demux(audio):
                if packet.dts is None:
                    continue
                packet.stream = stream
                out.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _mp4(path: Path, m: Metadata, cover: Cover | None, chapters: list[OutputChapter]) -> None:
    if chapters:
        _mp4_chapters(path, chapters)
    audio = MP4(path)
    if audio.tags is None:
        audio.add_tags()
    tags = audio.tags
    assert tags is not None
    atoms: dict[str, str | None] = {
        "\xa9nam": m.title,
        "\xa9ART": m.artist,
        "\xa9alb": m.album,
        "aART": m.album_artist,
        "\xa9day": m.date_text,
        "\xa9gen": m.genre,
        "\xa9cmt": m.comment,
        "cprt": m.copyright,
    }
    for atom, value in atoms.items():
        if value is not None:
            tags[atom] = [value]
    if m.track is not None:
        tags["trkn"] = [(m.track, 0)]
    for name, value in (("LANGUAGE", m.language), ("PUBLISHER", m.publisher)):
        if value is not None:
            tags[ITUNES + name] = [MP4FreeForm(value.encode())]
    if cover is not None:
        fmt = MP4Cover.FORMAT_PNG if cover.mime == "image/png" else MP4Cover.FORMAT_JPEG
        tags["covr"] = [MP4Cover(cover.data, imageformat=fmt)]
    audio.save()


_WRITERS: dict[str, Callable[[Path, Metadata, Cover | None, list[OutputChapter]], None]] = {
    "mp3": _mp3,
    "wav": _wav,
    "flac": _flac,
    "opus": _opus,
    "aac": _mp4,
}

__all__ = ["write_publishing"]

"""Bad-input corpus: every case gets its documented code, never a 500, never a stuck job, and
leaves storage clean (rejected requests store nothing; failed jobs leave no derived files).

Cases are generated here (PyAV, truncation, hand-built multipart and JSON). Upload and recipe
cases run on the shared session stack; size, duration and URL (SSRF) cases on the locked-down
`secure_stack` (API keys, 2 MiB uploads, 600 s media, no loopback allow-list but `localhost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import av
import httpx
import numpy as np
import pytest

from audioprep.shared import signing
from audioprep.shared.storage import Storage, open_storage
from tests.conftest import Stack
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone, write_video_only
from tests.security.conftest import A

BOUNDARY = "audioprepCorpusBoundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
JSON = {"content-type": "application/json"}
FORBIDDEN = {"forbidden_url"}
REJECTED_URL = {"unsupported_url", "invalid_url", "validation_error"}


# ---- generating inputs ---------------------------------------------------------------------


def multipart(*parts: tuple[str, str | None, str | None, bytes]) -> bytes:
    """Hand-built multipart body: (field name, filename, content type, bytes) per part."""
    out = b""
    for name, filename, ctype, data in parts:
        disp = f'form-data; name="{name}"'
        if filename is not None:
            disp += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def file_part(data: bytes, filename: str = "a.wav", ctype: str = "audio/wav") -> bytes:
    return multipart(("file", filename, ctype, data))


def write_long_silence(path: Path, *, seconds: int, rate: int = 8000) -> Path:
    """Hours of mono silence without holding them in memory: tiny FLAC, streamed frames."""
    with av.open(str(path), "w", format="flac") as out:
        st: Any = out.add_stream("flac", rate=rate, layout="mono")
        st.format = "s16"
        zeros = np.zeros((1, 4608), dtype=np.int16)
        for pts in range(0, seconds * rate, 4608):
            frame = av.AudioFrame.from_ndarray(zeros, format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
            for packet in st.encode(frame):
                out.mux(packet)
        for packet in st.encode(None):
            out.mux(packet)
    return path


def wav_with_rate(src: bytes, rate: int) -> bytes:
    """A WAV whose header claims `rate` (and a matching byte rate) over the same samples."""
    data = bytearray(src)
    channels, bits = struct.unpack_from("<H", data, 22)[0], struct.unpack_from("<H", data, 34)[0]
    struct.pack_into("<I", data, 24, rate)
    struct.pack_into("<I", data, 28, min(rate * channels * bits // 8, 0xFFFFFFFF))
    return bytes(data)


@dataclass
class Media:
    wav: bytes
    mp3: bytes
    flac: bytes
    video_only: bytes
    long_silence: bytes


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    d = tmp_path_factory.mktemp("corpus")
    wav = write_tone(d / "t.wav", seconds=1.0)
    mp3 = write_tone(d / "t.mp3", seconds=1.0)
    flac = write_tone(d / "t.flac", seconds=1.0)
    return Media(
        wav=wav.read_bytes(),
        mp3=mp3.read_bytes(),
        flac=flac.read_bytes(),
        video_only=write_video_only(d / "v.mp4", seconds=1.0).read_bytes(),
        long_silence=write_long_silence(d / "hour.flac", seconds=3600).read_bytes(),
    )


# ---- running cases -------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
    status: int | set[int]  # the documented HTTP answer(s)
    codes: set[str] = field(default_factory=set)  # problem code (4xx) or job error code
    job: str | None = None  # terminal job status expected after a 202
    check: Callable[[dict[str, Any]], None] | None = None  # more checks on the final view


@dataclass
class Tally:
    tried: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def post_body(path: str, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> Any:
    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(
            path, content=body, headers={"content-type": ctype, **(headers or {})}
        )

    return send


def upload(body: bytes, headers: dict[str, str] | None = None) -> Any:
    return post_body("/api/audio/ingest", body, MULTIPART, headers)


def post_json(path: str, doc: Any, headers: dict[str, str] | None = None) -> Any:
    import json

    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return post_body(path, raw, "application/json", headers)


def get(path: str, headers: dict[str, Any] | None = None) -> Any:
    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(path, headers=headers)

    return send


async def storage_keys(storage: Storage, prefix: str) -> set[str]:
    return set(await storage.list(prefix))


async def run_cases(
    stack: Stack, storage: Storage, cases: list[Case], tally: Tally, headers: dict[str, str]
) -> None:
    """Send each case; rejected ones must store nothing; accepted ones are awaited together."""
    accepted: list[tuple[Case, str]] = []
    for case in cases:
        uploads_before = await storage_keys(storage, _prefix(headers) + "uploads/")
        resp = await case.send(stack.client)
        tally.tried += 1
        tally.by_status[resp.status_code] = tally.by_status.get(resp.status_code, 0) + 1
        if resp.status_code >= 500:
            tally.server_errors.append(f"{case.name}: {resp.status_code} {resp.text[:200]}")
            continue
        allowed = case.status if isinstance(case.status, set) else {case.status}
        if resp.status_code not in allowed:
            tally.failures.append(
                f"{case.name}: HTTP {resp.status_code}, expected {case.status}: {resp.text[:300]}"
            )
            continue
        if resp.status_code == 202:
            accepted.append((case, resp.json()["jobId"]))
            continue
        if resp.status_code >= 400:
            if not resp.headers.get("content-type", "").startswith("application/problem+json"):
                tally.failures.append(f"{case.name}: not problem+json")
            elif case.codes and resp.json().get("code") not in case.codes:
                tally.failures.append(
                    f"{case.name}: code {resp.json().get('code')}, expected {case.codes}"
                )
        new = await storage_keys(storage, _prefix(headers) + "uploads/") - uploads_before
        if new:
            tally.failures.append(f"{case.name}: rejected request left {sorted(new)}")
    results = await asyncio.gather(
        *(_finish(stack, storage, case, job_id, headers) for case, job_id in accepted)
    )
    tally.failures.extend(r for r in results if r)


def _prefix(headers: dict[str, str]) -> str:
    return "tenants/tenantA/" if headers else ""


async def _finish(
    stack: Stack, storage: Storage, case: Case, job_id: str, headers: dict[str, str]
) -> str | None:
    try:
        view = await wait_for_job(stack.client, job_id, timeout=45, headers=headers or None)
    except AssertionError as exc:
        return f"{case.name}: stuck: {exc}"
    if view["status"] != case.job:
        return f"{case.name}: job {view['status']} ({view.get('error')}), expected {case.job}"
    if case.job == "failed":
        code = view["error"]["code"]
        if case.codes and code not in case.codes:
            return f"{case.name}: job error {code}, expected {case.codes}"
        if view["error"]["retryable"]:
            return f"{case.name}: a bad input must not be retryable"
        prefix = _prefix(headers)
        leftovers = await storage_keys(storage, f"{prefix}sources/{job_id}/")
        if await storage.head(f"{prefix}peaks/{job_id}.json") is not None:
            leftovers.add("peaks")
        if leftovers:
            return f"{case.name}: failed job left {sorted(leftovers)}"
    if case.check is not None:
        try:
            case.check(view)
        except AssertionError as exc:
            return f"{case.name}: {exc}"
    return None


def report(tally: Tally, label: str) -> None:
    print(
        f"\n{label}: cases tried {tally.tried}, server errors (5xx) {len(tally.server_errors)}, "
        f"by status {dict(sorted(tally.by_status.items()))}"
    )
    for line in tally.server_errors + tally.failures:
        print("  PROBLEM", line[:300])
    assert tally.server_errors == []
    assert tally.failures == []


# ---- the corpus ----------------------------------------------------------------------------


def _source_name(view: dict[str, Any]) -> str:
    return str(view["result"]["sourceKey"]).rsplit("/", 1)[-1]


def _key_is_tame(view: dict[str, Any]) -> None:
    key = str(view["result"]["sourceKey"])
    name = _source_name(view)
    assert key == f"sources/{view['jobId']}/{name}", key
    assert name.isascii() and ".." not in key and len(name) <= 120, key
    assert all(ch.isalnum() or ch in "._-" for ch in name), key


def upload_cases(m: Media) -> list[Case]:
    def failed(name: str, data: bytes, codes: set[str], filename: str = "a.wav") -> Case:
        return Case(name, upload(file_part(data, filename)), 202, codes, job="failed")

    mid_wav = m.wav[: 44 + (len(m.wav) - 44) * 6 // 10]

    def sixty_percent(view: dict[str, Any]) -> None:
        assert abs(view["result"]["durationMs"] - 600) <= 20, view["result"]

    return [
        # refused at the API
        Case("empty file", upload(file_part(b"")), 422, {"empty_file"}),
        Case("zero-length multipart", upload(b""), 400, {"empty_body"}),
        Case(
            "only the closing boundary",
            upload(f"--{BOUNDARY}--\r\n".encode()),
            422,
            {"missing_file"},
        ),
        Case("no file part", upload(multipart(("note", None, None, b"hi"))), 422, {"missing_file"}),
        Case(
            "file part without filename",
            upload(multipart(("file", None, None, b""))),
            422,
            {"empty_file"},
        ),
        Case(
            "garbage after boundary",
            upload(f"--{BOUNDARY}\r\nxx".encode()),
            400,
            {"malformed_multipart"},
        ),
        Case(
            "multipart without boundary",
            post_body("/api/audio/ingest", m.wav, "multipart/form-data"),
            415,
            {"unsupported_media_type"},
        ),
        Case(
            "raw audio body",
            post_body("/api/audio/ingest", m.wav, "audio/wav"),
            415,
            {"unsupported_media_type"},
        ),
        Case(
            "text/plain body",
            post_body("/api/audio/ingest", b"hello", "text/plain"),
            415,
            {"unsupported_media_type"},
        ),
        Case(
            "no content type",
            post_body("/api/audio/ingest", m.wav, ""),
            415,
            {"unsupported_media_type"},
        ),
        Case(
            "too many parts",
            upload(multipart(*[("x", None, None, b"1")] * 40)),
            400,
            {"malformed_multipart"},
        ),
        Case(
            "bad idempotency key",
            upload(file_part(m.wav), {"Idempotency-Key": "k" * 300}),
            400,
            {"invalid_idempotency_key"},
        ),
        # accepted, then failed by the worker with a stable code
        failed("text named .mp3", b"this is not audio\n" * 200, {"unsupported_media"}, "song.mp3"),
        failed(
            "random bytes named .wav",
            np.random.default_rng(7).bytes(32 * 1024),
            {"unsupported_media"},
        ),
        failed(
            "truncated mp3 header",
            m.mp3[:100],
            {"unsupported_media", "corrupt_media", "empty_file"},
            "a.mp3",
        ),
        failed(
            "truncated flac header",
            m.flac[:40],
            {"unsupported_media", "corrupt_media", "empty_file"},
            "a.flac",
        ),
        failed(
            "truncated wav header", m.wav[:30], {"unsupported_media", "corrupt_media", "empty_file"}
        ),
        failed("wav header only", m.wav[:44], {"unsupported_media", "corrupt_media", "empty_file"}),
        failed("video without audio", m.video_only, {"no_audio_stream"}, "clip.mp4"),
        failed(
            "wav claiming 4 GHz",
            wav_with_rate(m.wav, 0xFFFFFFFF),
            {"unsupported_media", "corrupt_media"},
        ),
        failed(
            "wav claiming 0 Hz", wav_with_rate(m.wav, 0), {"unsupported_media", "corrupt_media"}
        ),
        # accepted and fine: names are sanitised, content types are not trusted
        Case(
            "wav cut at 60 %", upload(file_part(mid_wav)), 202, job="completed", check=sixty_percent
        ),
        Case(
            "long filename (2000 chars)",
            upload(file_part(m.wav, "n" * 2000 + ".wav")),
            202,
            job="completed",
            check=_key_is_tame,
        ),
        Case(
            "giant filename (20000 chars, part header too long)",
            upload(file_part(m.wav, "n" * 20000 + ".wav")),
            400,
            {"malformed_multipart"},
        ),
        Case(
            "unicode filename",
            upload(file_part(m.wav, "Ünïcødé 音楽 🎵.wav")),
            202,
            job="completed",
            check=_key_is_tame,
        ),
        Case(
            "path traversal filename",
            upload(file_part(m.wav, "../../../../etc/passwd.wav")),
            202,
            job="completed",
            check=_key_is_tame,
        ),
        Case(
            "backslash traversal filename",
            upload(file_part(m.wav, "..\\..\\win.ini.wav")),
            202,
            job="completed",
            check=_key_is_tame,
        ),
        Case(
            "dot-dot filename",
            upload(file_part(m.wav, "..")),
            202,
            job="completed",
            check=_key_is_tame,
        ),
        Case(
            "control chars in filename",
            upload(file_part(m.wav, "a\tb\x01c.wav")),
            202,
            job="completed",
            check=_key_is_tame,
        ),
        Case(
            "wav sent as image/png",
            upload(file_part(m.wav, "a.wav", "image/png")),
            202,
            job="completed",
            check=_key_is_tame,
        ),
    ]


def json_cases(source_key: str) -> list[Case]:
    ing, prev, save = "/api/audio/ingest", "/api/audio/edit/preview", "/api/audio/edit/save"
    url = "https://example.com/a.mp3"

    def recipe(r: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {"sourceKey": source_key, "recipe": r, **more}

    invalid = {"validation_error", "invalid_recipe"}
    return [
        Case(
            "malformed JSON", post_json(ing, b'{"source": "url", "url": '), 400, {"malformed_json"}
        ),
        Case("JSON array", post_json(ing, [1, 2]), 422, {"validation_error"}),
        Case("JSON null", post_json(ing, b"null"), 422, {"validation_error"}),
        Case(
            "unknown field",
            post_json(ing, {"source": "url", "url": url, "x": 1}),
            422,
            {"validation_error"},
        ),
        Case("missing url", post_json(ing, {"source": "url"}), 422, {"validation_error"}),
        Case(
            "unknown source",
            post_json(ing, {"source": "ftp", "url": url}),
            422,
            {"validation_error"},
        ),
        Case(
            "url of 5000 chars",
            post_json(ing, {"source": "url", "url": url + "a" * 5000}),
            422,
            {"validation_error"},
        ),
        Case(
            "JSON body of 100 KB",
            post_json(ing, {"source": "url", "url": url, "pad": "x" * 100_000}),
            413,
            {"too_large"},
        ),
        Case(
            "file: URL",
            post_json(ing, {"source": "url", "url": "file:///etc/passwd"}),
            422,
            REJECTED_URL,
        ),
        Case(
            "ftp: URL",
            post_json(ing, {"source": "url", "url": "ftp://example.com/a.mp3"}),
            422,
            REJECTED_URL,
        ),
        Case(
            "javascript: URL",
            post_json(ing, {"source": "url", "url": "javascript:alert(1)"}),
            422,
            REJECTED_URL,
        ),
        Case(
            "gopher: URL",
            post_json(ing, {"source": "url", "url": "gopher://127.0.0.1:25/x"}),
            422,
            REJECTED_URL,
        ),
        Case(
            "data: URL",
            post_json(ing, {"source": "youtube", "url": "data:audio/wav;base64,AAAA"}),
            422,
            REJECTED_URL,
        ),
        Case(
            "URL without host",
            post_json(ing, {"source": "url", "url": "http:///a.mp3"}),
            422,
            REJECTED_URL,
        ),
        Case(
            "URL with bad port",
            post_json(ing, {"source": "url", "url": "http://example.com:99999/"}),
            422,
            REJECTED_URL,
        ),
        Case("preview: malformed JSON", post_json(prev, b"{nope"), 400, {"malformed_json"}),
        Case("preview: unknown recipe field", post_json(prev, recipe({"bogus": 1})), 422, invalid),
        Case("preview: speed 5", post_json(prev, recipe({"speed": 5.0})), 422, invalid),
        Case("preview: speed as text", post_json(prev, recipe({"speed": "fast"})), 422, invalid),
        Case(
            "preview: mp3 preview format", post_json(prev, recipe({}, format="mp3")), 422, invalid
        ),
        Case(
            "save: gain 1000 dB",
            post_json(save, recipe({"gainDb": 1000}, format="wav")),
            422,
            invalid,
        ),
        Case(
            "save: negative fade",
            post_json(save, recipe({"fadeInMs": -5}, format="wav")),
            422,
            invalid,
        ),
        Case(
            "save: trim end before start",
            post_json(save, recipe({"trim": {"startMs": 500, "endMs": 100}}, format="wav")),
            422,
            invalid,
        ),
        Case(
            "save: sample rate 1",
            post_json(save, recipe({"sampleRate": 1}, format="wav")),
            422,
            invalid,
        ),
        Case("save: format exe", post_json(save, recipe({}, format="exe")), 422, invalid),
        Case(
            "save: bitrate 99999",
            post_json(save, recipe({}, format="mp3", options={"bitrate": 99999})),
            422,
            invalid,
        ),
        Case(
            "save: NaN gain",
            post_json(
                save,
                b'{"sourceKey": "%s", "recipe": {"gainDb": NaN}, "format": "wav"}'
                % source_key.encode(),
            ),
            400,
            {"malformed_json"},
        ),
        Case(
            "save: filename of 300 chars",
            post_json(save, recipe({}, format="wav", filename="f" * 300)),
            422,
            invalid,
        ),
        Case(
            "preview: traversal source key",
            post_json(prev, {"sourceKey": "../../etc/passwd", "recipe": {}}),
            422,
            {"invalid_source_key"},
        ),
        Case(
            "preview: absolute source key",
            post_json(prev, {"sourceKey": "/etc/passwd", "recipe": {}}),
            422,
            {"invalid_source_key"},
        ),
        Case(
            "preview: encoded traversal key",
            post_json(prev, {"sourceKey": "sources/%2e%2e/x", "recipe": {}}),
            404,
            {"source_not_found"},
        ),
        Case(
            "preview: other tenant's key",
            post_json(prev, {"sourceKey": "tenants/evil/sources/J/a.wav", "recipe": {}}),
            404,
            {"source_not_found"},
        ),
        Case(
            "preview: missing source",
            post_json(prev, {"sourceKey": "sources/nope/a.wav", "recipe": {}}),
            404,
            {"source_not_found"},
        ),
        Case(
            "JSON body over 1 MiB",
            post_json(save, recipe({}, format="wav", pad="x" * (1100 * 1024))),
            413,
            {"too_large"},
        ),
        Case(
            "download: traversal key",
            get("/api/storage/download?key=../../etc/passwd&expires=9999999999&sig=x"),
            403,
            {"invalid_signature"},
        ),
        Case(
            "download: no signature",
            get("/api/storage/download?key=sources/a/b.wav"),
            403,
            {"invalid_signature"},
        ),
        Case("poll: traversal job id", get("/api/audio/jobs/..%2F..%2Fetc"), 404),
        Case("poll: giant job id", get("/api/audio/jobs/" + "A" * 3000), 404),
        Case(
            "cancel: unknown job",
            post_json("/api/audio/jobs/01ZZZZZZZZZZZZZZZZZZZZZZZZ/cancel", {}),
            404,
            {"job_not_found"},
        ),
        Case(
            "save: traversal filename",
            post_json(save, recipe({}, format="wav", filename="../../../etc/cron.d/x")),
            202,
            job="completed",
            check=_prepared_is_tame,
        ),
    ]


def _prepared_is_tame(view: dict[str, Any]) -> None:
    key = str(view["result"]["preparedKey"])
    assert key.startswith(f"prepared/{view['jobId']}/") and ".." not in key, key
    assert key.rsplit("/", 1)[-1] == "x.wav", key


async def test_upload_corpus(stack: Stack, media: Media) -> None:
    storage = open_storage(stack.settings.storage)
    tally = Tally()
    await run_cases(stack, storage, upload_cases(media), tally, {})
    report(tally, "upload corpus")


async def test_json_and_recipe_corpus(stack: Stack, media: Media) -> None:
    storage = open_storage(stack.settings.storage)
    resp = await stack.client.post(
        "/api/audio/ingest", files={"file": ("src.wav", media.wav, "audio/wav")}
    )
    view = await wait_for_job(stack.client, resp.json()["jobId"])
    assert view["status"] == "completed", view
    tally = Tally()
    await run_cases(stack, storage, json_cases(view["result"]["sourceKey"]), tally, {})
    report(tally, "JSON and recipe corpus")


def header_cases(job_id: str, link: dict[str, str], wav: bytes) -> list[Case]:
    """Numbers in headers and query strings: Unicode digits and absurd lengths."""
    events = f"/api/audio/jobs/{job_id}/events"
    download = signing.DOWNLOAD_PATH

    def dl(headers: dict[str, Any] | None = None, **params: str) -> Any:
        return get(f"{download}?{urlencode({**link, **params})}", headers)

    bad_id = {"invalid_last_event_id"}
    return [
        Case(
            "SSE Last-Event-ID superscript two",
            get(events, {"Last-Event-ID": "²".encode()}),
            400,
            bad_id,
        ),
        Case(
            "SSE Last-Event-ID 5000 digits", get(events, {"Last-Event-ID": "9" * 5000}), 400, bad_id
        ),
        Case("SSE Last-Event-ID negative", get(events, {"Last-Event-ID": "-1"}), 400, bad_id),
        Case("SSE lastEventId text", get(f"{events}?lastEventId=abc"), 400, bad_id),
        Case("SSE resumed after the end", get(events, {"Last-Event-ID": "999999999"}), 200),
        Case("download: expires superscript", dl(expires="²"), 403, {"invalid_signature"}),
        Case("download: expires Arabic digits", dl(expires="٣٣٣"), 403, {"invalid_signature"}),
        Case("download: expires 5000 digits", dl(expires="9" * 5000), 403, {"invalid_signature"}),
        Case("download: genuine", dl(), 200),
        Case(
            "download: range of 5000 digits", dl({"Range": "bytes=" + "9" * 5000 + "-"}), {200, 416}
        ),
        Case(
            "download: suffix range of 5000 digits",
            dl({"Range": "bytes=-" + "9" * 5000}),
            {200, 206},
        ),
        Case(
            "download: range with Unicode digits", dl({"Range": "bytes=٣-٤".encode()}), {200, 206}
        ),
        Case(
            "download: range past the end",
            dl({"Range": "bytes=999999999-"}),
            416,
            {"range_not_satisfiable"},
        ),
        Case("download: several ranges", dl({"Range": "bytes=0-1,5-9"}), 200),
        Case(
            "Idempotency-Key of spaces",
            upload(file_part(wav), {"Idempotency-Key": "   "}),
            400,
            {"invalid_idempotency_key"},
        ),
        Case(
            "Idempotency-Key in UTF-8",
            upload(file_part(wav), {"Idempotency-Key": "clé-€".encode()}),
            202,
            job="completed",
        ),
        Case(
            "traceparent garbage",
            upload(file_part(wav), {"traceparent": "00-zz-" + "x" * 500}),
            202,
            job="completed",
        ),
        Case(
            "Authorization garbage in open mode",
            get(f"/api/audio/jobs/{job_id}", {"Authorization": "Bearer \xff".encode("latin-1")}),
            200,
        ),
    ]


async def test_header_and_query_number_corpus(stack: Stack, media: Media) -> None:
    resp = await stack.client.post(
        "/api/audio/ingest", files={"file": ("src.wav", media.wav, "audio/wav")}
    )
    view = await wait_for_job(stack.client, resp.json()["jobId"])
    assert view["status"] == "completed", view
    signed = signing.sign(stack.settings.signing_secret, view["result"]["sourceKey"])
    link = {"key": signed.key, "expires": str(signed.expires), "sig": signed.sig}
    tally = Tally()
    storage = open_storage(stack.settings.storage)
    await run_cases(stack, storage, header_cases(view["jobId"], link, media.wav), tally, {})
    report(tally, "header and query corpus")


# ---- limits and SSRF on the locked-down stack ----------------------------------------------


class _Redirector(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def redirect_server(target: str) -> Iterator[int]:
    handler = type("Redirect", (_Redirector,), {"target": target})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def url_case(name: str, url: str, source: str = "url") -> Case:
    """Private targets: a 422 at the API when decidable there, else a failed job."""
    body = {"source": source, "url": url}
    return Case(name, post_json("/api/audio/ingest", body, A), {422, 202}, FORBIDDEN, job="failed")


async def _lying_content_length(client: httpx.AsyncClient) -> httpx.Response:
    """3 MiB body declared as 1 KiB: the limit must hold while streaming, not only up front.

    (The in-process test client hands the body over in one piece; tests/security/
    test_schema_fuzz.py sends a real chunked upload to a live server.)
    """
    body = file_part(b"\0" * (3 * 1024 * 1024), "big.wav")
    headers = {"content-type": MULTIPART, "content-length": "1024", **A}
    return await client.post("/api/audio/ingest", content=body, headers=headers)


async def test_limits_and_private_urls(
    secure_stack: Stack, secure_storage: Storage, media: Media
) -> None:
    hostname = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(hostname, 80)}
    with redirect_server("http://127.0.0.1:9/a.wav") as port:
        private_via_dns = Case(
            f"hostname {hostname} resolving to {sorted(addresses)}",
            post_json(
                "/api/audio/ingest", {"source": "url", "url": f"http://{hostname}:9/a.wav"}, A
            ),
            202,
            FORBIDDEN,
            job="failed",
        )
        cases = [
            Case("upload of 3 MiB, Content-Length lies", _lying_content_length, 413, {"too_large"}),
            Case(
                "upload of 3 MiB declared",
                upload(file_part(b"\0" * (3 * 1024 * 1024)), A),
                413,
                {"too_large"},
            ),
            Case(
                "1-hour silence (limit 600 s)",
                upload(file_part(media.long_silence, "hour.flac"), A),
                202,
                {"too_long"},
                job="failed",
            ),
            url_case("loopback IPv4", "http://127.0.0.1:9/a.mp3"),
            url_case("loopback IPv6", "http://[::1]:9/a.mp3"),
            url_case("loopback as one number", "http://2130706433/a.mp3"),
            url_case("loopback in hex", "http://0x7f.1/a.mp3"),
            url_case("IPv4-mapped loopback", "http://[::ffff:127.0.0.1]/a.mp3"),
            url_case("unspecified address", "http://0.0.0.0/a.mp3"),
            url_case("cloud metadata (link-local)", "http://169.254.169.254/latest/meta-data/"),
            url_case("private 10/8", "https://10.1.2.3/a.mp3"),
            url_case("private 192.168/16", "http://192.168.0.1/a.mp3"),
            url_case("multicast", "http://224.0.0.1/a.mp3"),
            url_case("localhost.localdomain", "http://localhost.localdomain/a.mp3"),
            url_case("youtube source on loopback", "http://127.0.0.1/watch?v=x", "youtube"),
            Case(
                "redirect to loopback",
                post_json(
                    "/api/audio/ingest", {"source": "url", "url": f"http://localhost:{port}/r"}, A
                ),
                202,
                FORBIDDEN,
                job="failed",
            ),
        ]
        if not any(_is_public(a) for a in addresses):  # a DNS answer the guard must refuse
            cases.append(private_via_dns)
        tally = Tally()
        await run_cases(secure_stack, secure_storage, cases, tally, A)
    report(tally, "limits and SSRF corpus")


def _is_public(address: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(address).is_global

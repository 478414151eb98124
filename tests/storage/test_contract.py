"""One storage contract, run against LocalStore and against S3 (moto server)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from audioprep.domain.errors import Retryable
from audioprep.shared.storage import (
    PART_SIZE,
    Storage,
    StorageNotFound,
    StorageRangeError,
    open_storage,
)
from tests.storage.conftest import Moto

MIB = 1024 * 1024
BIG = 20 * MIB + 12345  # three multipart parts on S3 (8 MiB each), last one short


def _blob(size: int, seed: int = 7) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


async def _chunks(data: bytes, size: int = MIB) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _sha_of_stream(stream: AsyncIterator[bytes]) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    async for chunk in stream:
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


async def test_streamed_round_trip_of_a_multi_megabyte_file(storage: Storage) -> None:
    data = _blob(BIG)
    assert await storage.put_stream("rt/big.bin", _chunks(data)) == BIG
    info = await storage.head("rt/big.bin")
    assert info is not None and info.size == BIG and info.modified is not None
    if not storage.is_local:  # really multipart: S3 ETags of multipart objects end in -<parts>
        assert info.etag is not None and info.etag.strip('"').endswith(f"-{-(-BIG // PART_SIZE)}")
    digest, n = await _sha_of_stream(await storage.get_stream("rt/big.bin"))
    assert (digest, n) == (hashlib.sha256(data).hexdigest(), BIG)


async def test_put_file_and_download_to(storage: Storage, tmp_path: Path) -> None:
    data = _blob(9 * MIB, seed=3)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    assert await storage.put_file("files/in.bin", src) == len(data)
    dst = tmp_path / "out.bin"
    assert await storage.download_to("files/in.bin", dst) == len(data)
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert await storage.read_bytes("files/in.bin") == data


async def test_ranges(storage: Storage) -> None:
    data = _blob(3 * MIB + 17, seed=5)
    await storage.put_bytes("r/obj", data)

    async def ranged(**kw: int) -> bytes:
        return b"".join([c async for c in await storage.get_stream("r/obj", **kw)])

    assert await ranged(start=10, end=20) == data[10:20]
    assert await ranged(start=MIB - 3, end=2 * MIB + 5) == data[MIB - 3 : 2 * MIB + 5]
    assert await ranged(start=len(data) - 5) == data[-5:]
    assert await ranged(end=7) == data[:7]
    assert await ranged(start=100, end=len(data) + 1000) == data[100:]  # end is clamped
    assert await ranged(start=50, end=50) == b""
    with pytest.raises(StorageRangeError) as err:
        await storage.get_stream("r/obj", start=len(data))
    assert err.value.code == "range_not_satisfiable"
    with pytest.raises(StorageNotFound):
        await storage.get_stream("r/missing", start=0, end=10)


async def test_missing_keys(storage: Storage, tmp_path: Path) -> None:
    assert await storage.head("nope/x") is None
    with pytest.raises(StorageNotFound) as err:
        await storage.get_stream("nope/x")
    assert err.value.code == "not_found" and not err.value.retryable
    with pytest.raises(StorageNotFound):
        await storage.read_bytes("nope/x")
    target = tmp_path / "partial.bin"
    with pytest.raises(StorageNotFound):
        await storage.download_to("nope/x", target)
    assert not target.exists()
    with pytest.raises(StorageNotFound):
        await storage.copy("nope/x", "nope/y")


async def test_delete_is_idempotent(storage: Storage) -> None:
    await storage.put_bytes("d/one", b"1")
    await storage.delete("d/one")
    await storage.delete("d/one")
    await storage.delete("d/never-existed")
    assert await storage.head("d/one") is None


async def test_list_by_prefix_and_delete_prefix(storage: Storage) -> None:
    for key in ("lp/abc/1.wav", "lp/abc/2.wav", "lp/abc/sub/3.wav", "lp/abcdef/4.wav", "lp/x"):
        await storage.put_bytes(key, key.encode())
    assert sorted(await storage.list("lp/abc")) == [
        "lp/abc/1.wav",
        "lp/abc/2.wav",
        "lp/abc/sub/3.wav",
    ]
    infos = {i.key: i for i in await storage.list_info("lp")}
    assert len(infos) == 5 and infos["lp/x"].size == 4
    assert all(i.modified is not None for i in infos.values())
    assert await storage.list("lp/none") == []
    assert await storage.delete_prefix("lp/abc") == 3
    assert sorted(await storage.list("lp")) == ["lp/abcdef/4.wav", "lp/x"]
    assert await storage.delete_many(["lp/abcdef/4.wav", "lp/x", "lp/gone"]) == 3
    assert await storage.list("lp") == []


async def test_copy(storage: Storage) -> None:
    data = _blob(MIB + 1, seed=9)
    await storage.put_bytes("c/src.bin", data)
    await storage.copy("c/src.bin", "c/dst.bin")
    assert await storage.read_bytes("c/dst.bin") == data
    assert await storage.read_bytes("c/src.bin") == data


async def test_failed_stream_leaves_nothing(storage: Storage, moto_server: Moto) -> None:
    class Interrupted(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        yield _blob(PART_SIZE + MIB)
        raise Interrupted

    with pytest.raises(Interrupted):
        await storage.put_stream("f/partial.bin", broken())
    assert await storage.head("f/partial.bin") is None
    if not storage.is_local:  # the multipart upload was aborted, not left to bill
        bucket = storage.url.removeprefix("s3://").split("/", 1)[0]
        uploads = moto_server.client().list_multipart_uploads(Bucket=bucket)  # type: ignore[attr-defined]
        prefix = storage.url.removeprefix(f"s3://{bucket}/")
        assert [u for u in uploads.get("Uploads", []) if u["Key"].startswith(prefix)] == []


async def test_presigned_get(storage: Storage) -> None:
    data = _blob(2 * MIB, seed=11)
    await storage.put_bytes("s/audio.opus", data)
    url = await storage.sign_get("s/audio.opus", timedelta(minutes=5))
    if storage.is_local:
        assert url is None  # the API signs local downloads itself
        return
    assert url is not None and url.startswith("http://127.0.0.1:") and "X-Amz-Signature=" in url
    async with httpx.AsyncClient() as client:
        resp = await client.get(url)
        assert resp.status_code == 200
        assert resp.content == data
        partial = await client.get(url, headers={"Range": "bytes=0-99"})
        assert partial.status_code == 206 and partial.content == data[:100]
    # moto does not verify SigV4 signatures, so tampering is not tested here.


async def test_ping(storage: Storage) -> None:
    await storage.ping()


async def test_ping_fails_for_a_missing_bucket(aws_env: dict[str, str]) -> None:
    with pytest.raises(Retryable) as err:
        await open_storage("s3://no-such-bucket-audioprep/x").ping()
    assert err.value.code == "storage_unavailable"


async def test_url_options_override_the_environment(
    bucket: str, moto_server: Moto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    store = open_storage(
        f"s3://{bucket}/opts?endpoint={moto_server.endpoint}&region=us-east-1&allow_http=true"
    )
    await store.put_bytes("k", b"via url options")
    assert await store.read_bytes("k") == b"via url options"
    assert store.describe() == f"s3://{bucket}/opts"


def test_bad_urls() -> None:
    with pytest.raises(ValueError, match="unknown s3:// URL option"):
        open_storage("s3://b/p?secret_access_key=oops")
    with pytest.raises(ValueError, match="names no bucket"):
        open_storage("s3:///p")
    with pytest.raises(ValueError, match="unsupported storage URL"):
        open_storage("gs://b/p")


def test_local_storage_paths(tmp_path: Path) -> None:
    store = open_storage((tmp_path / "s").as_uri())
    assert store.is_local and store.local_path("a/b") == tmp_path / "s" / "a" / "b"
    assert os.path.isdir(tmp_path / "s")


async def test_ping_fails_fast_for_a_dead_endpoint(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(Retryable) as err:
        await open_storage("s3://any-bucket/x").ping()
    assert err.value.code == "storage_unavailable"


def test_plain_http_endpoint_needs_allow_http(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(ValueError, match="AWS_ALLOW_HTTP=true"):
        open_storage("s3://bucket/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://acct.r2.cloudflarestorage.com")
    assert not open_storage("s3://bucket/x").is_local

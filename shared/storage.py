"""One small storage interface over obstore: local disk by default, S3/R2 by URL."""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import LocalStore, S3Store

from shared.errors import Permanent, Retryable

CHUNK = 1024 * 1024


class StorageNotFound(Permanent):
    """The key does not exist in storage."""

    default_code = "not_found"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int


class Storage:
    """put/get/head/delete/list/sign on one bucket or directory; streaming both ways."""

    def __init__(self, store: Any, *, local_root: Path | None, url: str) -> None:
        self.store = store
        self.local_root = local_root
        self.url = url

    @property
    def is_local(self) -> bool:
        return self.local_root is not None

    def local_path(self, key: str) -> Path | None:
        """Where a key lives on disk for local storage (lets workers skip a copy)."""
        return self.local_root / key if self.local_root is not None else None

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Stream chunks into `key` (multipart on S3); returns the byte count."""
        total = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal total
            async for chunk in chunks:
                total += len(chunk)
                yield chunk

        try:
            await obstore.put_async(self.store, key, counted(), chunk_size=8 * CHUNK)
        except OSError as exc:
            raise Retryable(f"storage write failed: {exc}", code="storage_unavailable") from exc
        return total

    async def put_file(self, key: str, path: str | os.PathLike[str]) -> int:
        """Upload a local file (multipart for large files)."""
        size = os.path.getsize(path)
        try:
            await obstore.put_async(self.store, key, Path(path), chunk_size=8 * CHUNK)
        except OSError as exc:
            raise Retryable(f"storage write failed: {exc}", code="storage_unavailable") from exc
        return size

    async def put_bytes(self, key: str, data: bytes) -> None:
        await obstore.put_async(self.store, key, data)

    async def get_stream(
        self, key: str, *, start: int | None = None, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream `key` (optionally the byte range [start, end)) in chunks."""
        options: dict[str, Any] = {}
        if start is not None or end is not None:
            options["range"] = (start or 0, end) if end is not None else {"offset": start or 0}
        try:
            result = await obstore.get_async(self.store, key, options=options or None)  # type: ignore[arg-type]
        except NotFoundError as exc:
            raise StorageNotFound(f"no object at {key}") from exc
        return _chunks(result.stream(min_chunk_size=CHUNK))

    async def read_bytes(self, key: str) -> bytes:
        try:
            result = await obstore.get_async(self.store, key)
        except NotFoundError as exc:
            raise StorageNotFound(f"no object at {key}") from exc
        return bytes(await result.bytes_async())

    async def download_to(self, key: str, path: str | os.PathLike[str]) -> int:
        """Copy an object to a local file without holding it in memory."""
        total = 0
        with open(path, "wb") as out:
            async for chunk in await self.get_stream(key):
                out.write(chunk)
                total += len(chunk)
        return total

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            meta = await obstore.head_async(self.store, key)
        except (NotFoundError, FileNotFoundError):
            return None
        return ObjectInfo(key=key, size=int(meta["size"]))

    async def delete(self, key: str) -> None:
        """Delete a key; a missing key is fine (deletes are idempotent)."""
        try:
            await obstore.delete_async(self.store, key)
        except (NotFoundError, FileNotFoundError):
            return

    async def delete_prefix(self, prefix: str) -> int:
        keys = await self.list(prefix)
        for key in keys:
            await self.delete(key)
        return len(keys)

    async def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            async for batch in obstore.list(self.store, prefix):
                keys.extend(item["path"] for item in batch)
        except (NotFoundError, FileNotFoundError):
            return keys
        return keys

    async def copy(self, src: str, dst: str) -> None:
        try:
            await obstore.copy_async(self.store, src, dst)
        except NotFoundError as exc:
            raise StorageNotFound(f"no object at {src}") from exc

    async def sign_get(self, key: str, expires_in: timedelta) -> str | None:
        """A presigned GET URL for S3/R2; None for local storage (the API signs those)."""
        if self.is_local:
            return None
        return await obstore.sign_async(self.store, "GET", key, expires_in)

    async def ping(self) -> None:
        """Raise if the backend can't be reached (for /readyz)."""
        await self.head("__readyz__")


async def _chunks(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield bytes(chunk)


def open_storage(url: str) -> Storage:
    """Build storage from `file:///dir` or `s3://bucket/prefix` (AWS_* env for S3/R2)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        root = Path(parsed.path)
        root.mkdir(parents=True, exist_ok=True)
        return Storage(LocalStore(root, mkdir=True), local_root=root, url=url)
    if parsed.scheme == "s3":
        prefix = parsed.path.strip("/") or None
        store = S3Store(parsed.netloc, prefix=prefix, client_options=_client_options())
        return Storage(store, local_root=None, url=url)
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket/prefix")


def _client_options() -> Any:
    allow_http = os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true", "yes")
    return {"allow_http": True} if allow_http else None

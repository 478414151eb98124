"""Storage keys (docs/storage.md), tenant-scoped, and filename sanitising."""

from __future__ import annotations

import re
import unicodedata

from audioprep.shared.ids import is_job_id
from audioprep.shared.names import check_token

DEFAULT_TENANT = "default"
MAX_NAME_CHARS = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None, fallback: str = "audio") -> str:
    """A storage-safe base name: no directories, no dot-files, ASCII, bounded length."""
    if not name:
        return fallback
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    base = _UNSAFE.sub("_", base).strip("._-")
    if not base:
        return fallback
    if len(base) > MAX_NAME_CHARS:
        stem, dot, ext = base.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            base = stem[: MAX_NAME_CHARS - len(ext) - 1] + "." + ext
        else:
            base = base[:MAX_NAME_CHARS]
    return base


def stem(name: str) -> str:
    """File name without its extension."""
    head, dot, _ = name.rpartition(".")
    return head if dot and head else name


def _scoped(tenant: str, key: str) -> str:
    if tenant == DEFAULT_TENANT:
        return key
    return f"tenants/{check_token(tenant)}/{key}"


def tenant_of_key(key: str) -> str:
    """Which tenant a storage key belongs to (for download authorisation)."""
    if key.startswith("tenants/"):
        parts = key.split("/", 2)
        if len(parts) == 3:
            return parts[1]
    return DEFAULT_TENANT


def upload_key(tenant: str, job_id: str, name: str) -> str:
    return _scoped(tenant, f"uploads/{check_token(job_id)}/{safe_filename(name)}")


def sources_prefix(tenant: str, job_id: str) -> str:
    """Where a job's stored original lives (`sources/<jobId>`), for listing or deleting."""
    return _scoped(tenant, f"sources/{check_token(job_id)}")


def source_key(tenant: str, job_id: str, name: str) -> str:
    return f"{sources_prefix(tenant, job_id)}/{safe_filename(name)}"


def ingest_job_of(key: str) -> str | None:
    """The ingest job that stored a source key (`[tenants/<t>/]sources/<jobId>/<name>`)."""
    parts = key.split("/")
    if parts[0] == "tenants":
        parts = parts[2:]
    if len(parts) == 3 and parts[0] == "sources" and is_job_id(parts[1]):
        return parts[1]
    return None


def peaks_key(tenant: str, job_id: str) -> str:
    return _scoped(tenant, f"peaks/{check_token(job_id)}.json")


def preview_key(tenant: str, cache_key: str, ext: str) -> str:
    return _scoped(tenant, f"previews/{check_token(cache_key)}.{ext}")


def prepared_key(tenant: str, job_id: str, name: str, ext: str) -> str:
    return _scoped(tenant, f"prepared/{check_token(job_id)}/{safe_filename(stem(name))}.{ext}")


_CONTROL_CHAR = re.compile("[\x00-\x1f]")


def is_safe_key(key: str) -> bool:
    """Reject keys that could escape storage (absolute, `..`, empty segments, control chars)."""
    if not key or key.startswith("/") or len(key) > 1024:
        return False
    if _CONTROL_CHAR.search(key):
        return False
    return all(part not in ("", ".", "..") for part in key.split("/"))

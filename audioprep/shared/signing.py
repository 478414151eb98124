"""HMAC-signed, expiring download links for local storage (S3/R2 sign their own)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from audioprep.shared.keys import is_safe_key, tenant_of_key

DOWNLOAD_PATH = "/api/storage/download"
DEFAULT_TTL_S = 3600
# Expiry is rounded up to this step so polling a job returns the same URL for a while
# (browsers can cache it); a link therefore lives between TTL and TTL + step.
EXPIRY_STEP_S = 300
MAX_SIG_CHARS = 64
_EXPIRES_RE = re.compile(r"^[0-9]{1,12}$")  # ASCII digits only: int() takes "٣"


class SignatureError(Exception):
    """A link that must not be served; `code` is the problem code shown to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class SignedLink:
    key: str
    expires: int
    sig: str

    def query(self) -> str:
        return urlencode({"key": self.key, "expires": str(self.expires), "sig": self.sig})


def _mac(secret: str, key: str, expires: int, tenant: str) -> str:
    if not secret:
        raise ValueError("no signing secret configured")
    message = f"{key}\n{expires}\n{tenant}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(
    secret: str, key: str, *, ttl_s: int = DEFAULT_TTL_S, now: float | None = None
) -> SignedLink:
    """Sign `key` for its owner tenant (read from the key) until about now + ttl."""
    if not is_safe_key(key):
        raise ValueError(f"refusing to sign unsafe key {key!r}")
    now = time.time() if now is None else now
    expires = int(math.ceil((now + ttl_s) / EXPIRY_STEP_S) * EXPIRY_STEP_S)
    return SignedLink(key=key, expires=expires, sig=_mac(secret, key, expires, tenant_of_key(key)))


def download_url(
    base_url: str, secret: str, key: str, *, ttl_s: int = DEFAULT_TTL_S, now: float | None = None
) -> str:
    """Absolute URL of the download route for `key`."""
    link = sign(secret, key, ttl_s=ttl_s, now=now)
    return f"{base_url.rstrip('/')}{DOWNLOAD_PATH}?{link.query()}"


def verify(
    secret: str,
    key: str | None,
    expires: str | None,
    sig: str | None,
    *,
    now: float | None = None,
) -> str:
    """Return the key when the link is genuine and unexpired; raise SignatureError otherwise.

    The MAC is compared in constant time before the expiry is looked at, so a forged link
    can't learn anything from which check failed first.
    """
    if not key or not expires or not sig or len(sig) > MAX_SIG_CHARS:
        raise SignatureError("invalid_signature", "the link is incomplete or malformed")
    if not _EXPIRES_RE.match(expires) or not is_safe_key(key):
        raise SignatureError("invalid_signature", "the link is malformed")
    expected = _mac(secret, key, int(expires), tenant_of_key(key))
    if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
        raise SignatureError("invalid_signature", "the link signature does not match")
    now = time.time() if now is None else now
    if int(expires) < now:
        raise SignatureError("link_expired", "the link has expired; poll the job for a new one")
    return key

"""Webhook secrets: making them, signing with them (Standard Webhooks), keeping them at rest.

Signing follows the Standard Webhooks specification, exactly as the PyPI `standardwebhooks`
library verifies it: the secret is `whsec_` + base64 of the key bytes; the signature is
`v1,` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")); several
signatures (a rotated secret still in its grace period) are separated by spaces.

At rest the secrets are **encrypted** (AES-256-GCM, the endpoint's KV key as associated data),
not hashed: the notifier needs the secret itself to sign. The key comes from
AUDIOPREP_WEBHOOK_SECRET_KEY (required outside dev mode); in dev mode without it, from a
key file made once in the data dir (`webhook-secret.key`, mode 0600).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from audioprep.shared.settings import MIN_SECRET_CHARS, Settings

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
_BOX_VERSION = "v1"
DEV_KEY_FILE = "webhook-secret.key"


def new_secret() -> str:
    """A fresh signing secret as receivers configure it: `whsec_<base64 of 32 bytes>`."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret (as standardwebhooks decodes it)."""
    raw = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(raw + "==")


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per valid secret, space-separated."""
    return " ".join(signature(s, msg_id, timestamp, body) for s in secrets_)


class SecretBoxError(Exception):
    """A stored secret can't be decrypted (another key, or tampered)."""


class SecretBox:
    """AES-256-GCM with a random 96-bit nonce; `aad` binds a ciphertext to its endpoint."""

    def __init__(self, key_material: bytes) -> None:
        self._aead = AESGCM(
            hashlib.sha256(b"audioprep-webhook-secrets\x00" + key_material).digest()
        )

    def encrypt(self, plaintext: str, aad: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), aad.encode())
        return f"{_BOX_VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, aad: str) -> str:
        version, _, body = token.partition(".")
        if version != _BOX_VERSION or not body:
            raise SecretBoxError("unknown secret format")
        try:
            raw = base64.urlsafe_b64decode(body)
            return self._aead.decrypt(raw[:12], raw[12:], aad.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise SecretBoxError(
                "stored webhook secret cannot be decrypted: is AUDIOPREP_WEBHOOK_SECRET_KEY the "
                "one it was stored with?"
            ) from exc


def _dev_key(data_dir: Path) -> bytes:
    """Read the dev key file, or make it (atomically: write a temp file, hard-link it)."""
    path = data_dir / DEV_KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{DEV_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_urlsafe(48).encode())
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process made it first: then theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


def secret_box(settings: Settings) -> SecretBox:
    """The box for this deployment's key; outside dev mode a real key is required."""
    key = settings.webhook_secret_key
    if key:
        if len(key) < MIN_SECRET_CHARS:
            raise ValueError(
                f"AUDIOPREP_WEBHOOK_SECRET_KEY must be at least {MIN_SECRET_CHARS} characters"
            )
        return SecretBox(key.encode())
    if not settings.dev_mode:
        raise ValueError(
            f"AUDIOPREP_WEBHOOK_SECRET_KEY (at least {MIN_SECRET_CHARS} characters) is required "
            "when AUDIOPREP_DEV_MODE=0: it encrypts webhook signing secrets at rest, and the API "
            "and every notifier need the same one"
        )
    return SecretBox(_dev_key(settings.data_dir))

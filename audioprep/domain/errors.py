"""Typed errors: every failure has a stable code and says whether a retry can help."""

from __future__ import annotations

from typing import ClassVar


class AudioprepError(Exception):
    """Base of all audioprep errors; `code` is stable and shown to users."""

    retryable: ClassVar[bool] = False
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message


class Retryable(AudioprepError):
    """A transient failure (network hiccup, storage timeout): try again later."""

    retryable = True
    default_code = "transient_error"


class Permanent(AudioprepError):
    """A failure no retry can fix (bad media, 404 URL, unsupported site)."""

    retryable = False
    default_code = "permanent_error"


class Cancelled(AudioprepError):
    """The job was cancelled by a user while it ran."""

    default_code = "cancelled"


class Superseded(AudioprepError):
    """Another attempt ended the job while this one ran (its worker was frozen or cut off
    past ack_wait, and the job was redelivered): store nothing, record nothing, so the
    winner's outputs stay the ones its terminal event describes."""

    default_code = "superseded"


# Stable error codes, in one place so API, worker and docs agree.
UNSUPPORTED_MEDIA = "unsupported_media"
NO_AUDIO_STREAM = "no_audio_stream"
EMPTY_FILE = "empty_file"
CORRUPT_MEDIA = "corrupt_media"
TOO_LONG = "too_long"
TOO_LARGE = "too_large"
UNSUPPORTED_URL = "unsupported_url"
SOURCE_NOT_FOUND = "source_not_found"
DOWNLOAD_FAILED = "download_failed"
FORBIDDEN_URL = "forbidden_url"
INVALID_RECIPE = "invalid_recipe"
RENDER_FAILED = "render_failed"
STORAGE_UNAVAILABLE = "storage_unavailable"
MAX_DELIVERIES = "max_deliveries"
# The media child died from a signal (SIGSEGV in FFmpeg, SIGXCPU/SIGKILL past its limits):
# retried once; the same job crashing it again fails as UNSUPPORTED_MEDIA.
MEDIA_CRASH = "media_crash"
# Anything else that ended a media child without an answer (a Python error in it).
WORKER_CRASH = "worker_crash"
# The storage volume (or the event store's disk) is full: retried with backoff.
STORAGE_FULL = "storage_full"
INTERNAL_ERROR = "internal_error"

"""What the API can decide about a URL before any worker fetches it."""

from __future__ import annotations

from urllib.parse import urlsplit

from services.api.problems import ProblemError
from shared.settings import Settings


def check_url(url: str, source: str, settings: Settings) -> None:
    """Only absolute http(s) URLs with a host; anything else is a 422 naming `url`."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ProblemError(422, "invalid_url", f"not a URL: {exc}", field="url") from exc
    if parts.scheme not in ("http", "https"):
        raise ProblemError(422, "unsupported_url", "only http and https URLs", field="url")
    if not parts.hostname:
        raise ProblemError(422, "invalid_url", "the URL has no host", field="url")

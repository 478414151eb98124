"""What the API can decide about a URL before any worker fetches it.

No DNS here (the request must answer fast and the event loop must not block): scheme, host,
IP literals and local names are refused with a 422; a host *name* that resolves to a private
address is refused by the worker (job `failed`, code `forbidden_url`), which checks again
after resolution and on every redirect.
"""

from __future__ import annotations

from audioprep.domain.errors import AudioprepError
from audioprep.services.api.problems import ProblemError
from audioprep.shared.settings import Settings
from audioprep.shared.url_guard import check_literal, normalize_host

YOUTUBE_HOSTS = frozenset(
    {
        "youtube.com",
        "www.youtube.com",
        "m.youtube.com",
        "music.youtube.com",
        "youtu.be",
        "www.youtube-nocookie.com",
        "youtube-nocookie.com",
    }
)


def check_url(url: str, source: str, settings: Settings) -> None:
    """422 naming `url` for anything a worker would refuse anyway."""
    if url != url.strip() or any(ord(ch) < 32 or ch == " " for ch in url):
        raise ProblemError(
            422, "invalid_url", "the URL contains spaces or control characters", field="url"
        )
    try:
        parts = check_literal(url, settings.url_allow_hosts)
    except AudioprepError as exc:
        raise ProblemError(422, exc.code, exc.message, field="url") from None
    host = normalize_host(parts.hostname or "")
    if source == "youtube" and host not in YOUTUBE_HOSTS:
        raise ProblemError(
            422,
            "unsupported_url",
            "source `youtube` needs a youtube.com or youtu.be URL",
            field="url",
        )

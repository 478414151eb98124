"""Job kinds, event names and statuses: the vocabulary every other module spells the same."""

from __future__ import annotations

from typing import Final, Literal, get_args

Kind = Literal["ingest", "preview", "save"]
EventName = Literal[
    "requested",
    "started",
    "progressed",
    "retrying",
    "completed",
    "failed",
    "cancel_requested",
    "cancelled",
]
Status = Literal["pending", "running", "completed", "failed", "cancelled"]

KINDS: Final[tuple[Kind, ...]] = get_args(Kind)
EVENT_NAMES: Final[tuple[EventName, ...]] = get_args(EventName)
STATUSES: Final[tuple[Status, ...]] = get_args(Status)
# A job ends with exactly one of these events (end-once, audioprep.shared.event_store)
TERMINAL_EVENT_NAMES: Final[tuple[EventName, ...]] = ("completed", "failed", "cancelled")
# ... and its view then has the status of the same name.
TERMINAL_STATUSES: Final[frozenset[Status]] = frozenset({"completed", "failed", "cancelled"})

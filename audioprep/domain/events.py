"""Job events: one frozen msgspec Struct each, a tagged union, one encoder and decoder."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import msgspec

from audioprep.domain.kinds import EventName, Kind

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    """Event timestamps are always UTC."""
    return datetime.now(UTC)


class _Data(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """Payload pieces: camelCase JSON, unset optionals left out so natscli output stays short."""


class ErrorInfo(_Data, frozen=True, kw_only=True, omit_defaults=False):
    code: str
    message: str
    retryable: bool = False


class LoudnessInfo(_Data, frozen=True, kw_only=True):
    integrated_lufs: float | None = None
    true_peak_db: float | None = None
    lra: float | None = None
    short_term_max_lufs: float | None = None


class LevelsInfo(_Data, frozen=True, kw_only=True):
    """Measured levels of one side of a render (dB values omitted for digital silence)."""

    integrated_lufs: float | None = None
    true_peak_db: float | None = None
    lra: float | None = None
    short_term_max_lufs: float | None = None
    rms_db: float | None = None
    sample_peak_db: float | None = None
    noise_floor_db: float | None = None


class LoudnessTargetInfo(_Data, frozen=True, kw_only=True):
    """What normalize aimed at: integrated loudness, or RMS for the ACX preset."""

    preset: str | None = None
    integrated_lufs: float | None = None
    rms_db: float | None = None
    true_peak_db: float


class AcxCheck(_Data, frozen=True, kw_only=True, omit_defaults=False):
    """ACX's three audiobook checks on the rendered file."""

    rms_db: float | None
    rms_pass: bool
    peak_db: float | None
    peak_pass: bool
    noise_floor_db: float | None
    noise_floor_pass: bool
    passed: bool


class ReportWarning(_Data, frozen=True, kw_only=True, omit_defaults=False):
    code: str
    message: str


class LoudnessReport(_Data, frozen=True, kw_only=True, omit_defaults=False):
    """Before/after levels of a render and what was done to get there."""

    before: LevelsInfo | None = None
    after: LevelsInfo
    target: LoudnessTargetInfo | None = None
    gain_db: float = 0.0
    limiter_ceiling_db: float | None = None
    limiter_max_reduction_db: float = 0.0
    measuring_passes: int = 0
    encode_passes: int = 1
    warnings: list[ReportWarning] = msgspec.field(default_factory=list)
    acx: AcxCheck | None = None


class HumInfo(_Data, frozen=True, kw_only=True, omit_defaults=False):
    frequency_hz: float
    level_db: float


class VoiceAnalysisInfo(_Data, frozen=True, kw_only=True):
    """What a recording is like (ingest's `analysis`, and before/after of a voice chain)."""

    noise_floor_db: float | None = None  # None: the pauses are digital silence
    speech_level_db: float | None = None
    snr_db: float | None = None
    hum: HumInfo | None = None
    clipped_samples: int = 0
    speech_ratio: float = 0.0


class VoiceSteps(_Data, frozen=True, kw_only=True):
    """What each step of the voice chain did."""

    highpass_hz: int | None = None
    dehum_hz: float | None = None
    notched_hz: list[float] = msgspec.field(default_factory=list)
    denoise_db: float | None = None
    leveler_max_gain_db: float | None = None
    leveler_min_gain_db: float | None = None
    deess: float | None = None
    trimmed_ms: list[int] | None = None  # [startMs, endMs] kept of the source
    cuts_ms: list[list[int]] = msgspec.field(default_factory=list)  # source [startMs, endMs)
    cut_total_ms: int = 0


class VoiceReport(_Data, frozen=True, kw_only=True):
    before: VoiceAnalysisInfo | None = None
    after: VoiceAnalysisInfo | None = None
    steps: VoiceSteps


class OutputResult(_Data, frozen=True, kw_only=True):
    """One file of a save with several `outputs` (docs/publishing.md)."""

    format: str
    prepared_key: str
    size_bytes: int
    duration_ms: int
    sample_rate: int
    channels: int
    codec: str
    loudness_report: LoudnessReport | None = None
    download_url: str | None = None  # added by the API (and notifier) when answering


class PartResult(_Data, frozen=True, kw_only=True):
    """An intro, the episode or an outro as it went into the output."""

    part: Literal["intro", "episode", "outro"]
    source_key: str
    start_ms: int  # in the output
    duration_ms: int
    crossfade_ms: int = 0  # overlap with the part before
    gain_db: float | None = None  # the loudness-matching gain (intro/outro)
    integrated_lufs: float | None = None  # after matching, before final normalisation


class JobResult(_Data, frozen=True, kw_only=True):
    """What a finished job produced; fields depend on the kind (ingest vs render)."""

    source_key: str | None = None
    duration_ms: int | None = None
    sample_rate: int | None = None
    channels: int | None = None
    codec: str | None = None
    container: str | None = None
    bit_rate: int | None = None
    loudness: LoudnessInfo | None = None
    peaks_key: str | None = None
    title: str | None = None
    preview_key: str | None = None
    prepared_key: str | None = None
    format: str | None = None
    size_bytes: int | None = None
    from_cache: bool = False
    loudness_report: LoudnessReport | None = None
    analysis: VoiceAnalysisInfo | None = None  # ingest
    voice_report: VoiceReport | None = None  # renders with a voice chain
    chapters_key: str | None = None  # save with chapters: Podcasting 2.0 JSON chapters file
    outputs: list[OutputResult] | None = None  # a save with `outputs`: every file
    parts: list[PartResult] | None = None  # a render with intro/outro: where each part landed


class JobUsage(_Data, frozen=True, kw_only=True):
    """What one attempt of a job used (docs/fairness.md, "Usage"): summed per tenant per day.

    Carried by the events that end an attempt (retrying, completed, failed, cancelled); events
    written before metering have none, which counts as zero."""

    processing_ms: int = 0  # wall time the worker spent on the attempt
    input_audio_ms: int = 0  # duration of the source the job read
    output_audio_ms: int = 0  # duration of the audio it wrote
    bytes_stored: int = 0  # bytes of the objects it left in storage


class _Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    rename="camel",
    omit_defaults=True,
    tag_field="type",
):
    """Common envelope: which job, which kind, when, which schema."""

    name: ClassVar[EventName]
    terminal: ClassVar[bool] = False

    job_id: str
    kind: Kind
    at: datetime = msgspec.field(default_factory=utcnow)
    v: int = SCHEMA_VERSION
    tenant: str = "default"


class JobRequested(_Event, tag="JobRequested", frozen=True, kw_only=True):
    """A client asked for work. Ingest: `source` + `upload_key` or `url`; render: the rest."""

    name = "requested"
    source: Literal["upload", "url", "youtube"] | None = None
    upload_key: str | None = None
    url: str | None = None
    filename: str | None = None
    source_key: str | None = None
    recipe: dict[str, Any] | None = None
    format: str | None = None
    options: dict[str, Any] | None = None
    cache_key: str | None = None
    attempt_base: int = 0
    retry_of: str | None = None
    # Preview answered from the render cache: the API appends JobCompleted right after this
    # event, so workers must not start it (they wait for that event and ack).
    from_cache: bool = False
    # sha256 of (route, canonical body) of a request with an Idempotency-Key: a replay of the
    # key with another body or on another route is refused instead of answered with this job.
    request_fingerprint: str | None = None
    # Save publishing fields (docs/publishing.md): tags and source-time chapter marks, and the
    # saved preset they were resolved from (recipe/metadata here are already merged).
    metadata: dict[str, Any] | None = None
    chapters: list[dict[str, Any]] | None = None
    preset: str | None = None
    preset_revision: int | None = None
    # A save with several outputs: [{"format", "options"?, "filename"?}]; `format` is then
    # the first one's (docs/publishing.md).
    outputs: list[dict[str, Any]] | None = None
    # Bytes the API received for an upload ingest (the per-day upload quota counts them).
    upload_bytes: int | None = None


class JobReleased(_Event, tag="JobReleased", frozen=True, kw_only=True):
    """The dispatcher let a waiting job go to the workers (fair dispatch, docs/fairness.md).

    Written once per job (expected last sequence = the request's), on
    `jobs.<kind>.<id>.released`, the subject the workers' consumers take; `request_seq` is
    where the JobRequested is, so a worker reads it with one direct get. `attempt_base` is
    the request's: a worker appends its JobStarted while that read is in flight. None in a
    release written without it (older dispatchers, a held render-cache hit): the worker reads
    the request first."""

    name = "released"
    request_seq: int
    attempt_base: int | None = None


class JobStarted(_Event, tag="JobStarted", frozen=True, kw_only=True):
    name = "started"
    attempt: int = 1
    worker: str = ""


class JobProgressed(_Event, tag="JobProgressed", frozen=True, kw_only=True):
    name = "progressed"
    progress: int = 0
    stage: str = ""
    attempt: int = 1


class JobRetrying(_Event, tag="JobRetrying", frozen=True, kw_only=True):
    name = "retrying"
    attempt: int
    error: ErrorInfo
    delay_ms: int = 0
    usage: JobUsage | None = None


class JobCompleted(_Event, tag="JobCompleted", frozen=True, kw_only=True):
    name = "completed"
    terminal = True
    result: JobResult
    attempt: int = 1
    usage: JobUsage | None = None


class JobFailed(_Event, tag="JobFailed", frozen=True, kw_only=True):
    name = "failed"
    terminal = True
    error: ErrorInfo
    attempt: int = 1
    usage: JobUsage | None = None


class JobCancelRequested(_Event, tag="JobCancelRequested", frozen=True, kw_only=True):
    name = "cancel_requested"
    reason: str = ""


class JobCancelled(_Event, tag="JobCancelled", frozen=True, kw_only=True):
    name = "cancelled"
    terminal = True
    attempt: int = 0
    usage: JobUsage | None = None


Event = (
    JobRequested
    | JobReleased
    | JobStarted
    | JobProgressed
    | JobRetrying
    | JobCompleted
    | JobFailed
    | JobCancelRequested
    | JobCancelled
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)
_result_decoder = msgspec.json.Decoder(JobResult)


def encode_event(event: Event) -> bytes:
    """Compact JSON, readable with `nats stream view`."""
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    """Decode any event; raises msgspec.DecodeError on garbage."""
    event: Event = _decoder.decode(data)
    return event


def is_terminal(event: Event) -> bool:
    """Completed, failed and cancelled end a job."""
    return event.terminal

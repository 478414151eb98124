"""Pure parts: signatures checked by the standardwebhooks library, secrets at rest, the retry
schedule, the delivery fold."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import standardwebhooks

from audioprep.services.notifier.deliver import DueTimes, retry_delay
from audioprep.shared.settings import Settings
from audioprep.shared.webhook_crypto import (
    SecretBox,
    SecretBoxError,
    new_secret,
    secret_box,
    signature,
    signature_header,
)
from audioprep.shared.webhook_events import (
    DeliveryAttempted,
    DeliveryCreated,
    DeliveryView,
    decode_webhook_event,
    delivery_id_for,
    encode_webhook_event,
    fold_deliveries,
    new_delivery_id,
)
from audioprep.shared.webhook_store import is_delivery_id


def test_our_signature_is_the_librarys() -> None:
    secret = new_secret()
    body = b'{"type":"job.completed","data":{"title":"caf\xc3\xa9"}}'
    now = datetime.now(UTC)
    stamp = int(now.timestamp())
    ours = signature(secret, "msg_1", stamp, body)
    assert ours == standardwebhooks.Webhook(secret).sign("msg_1", now, body.decode())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(stamp), "webhook-signature": ours}
    assert standardwebhooks.Webhook(secret).verify(body, headers)["data"]["title"] == "café"


def test_two_secrets_sign_twice_and_either_verifies() -> None:
    old, new = new_secret(), new_secret()
    body = b"{}"
    stamp = int(datetime.now(UTC).timestamp())
    header = signature_header([new, old], "msg_2", stamp, body)
    assert header.count("v1,") == 2
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(stamp), "webhook-signature": header}
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(body, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(body, headers)


def test_secrets_are_32_random_bytes() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(len(base64.b64decode(s.removeprefix("whsec_"))) == 32 for s in secrets)


def test_secret_box_binds_ciphertext_to_key_and_endpoint() -> None:
    box = SecretBox(b"k" * 32)
    sealed = box.encrypt("whsec_abc", "tenant.ep_1")
    assert "whsec_abc" not in sealed and box.decrypt(sealed, "tenant.ep_1") == "whsec_abc"
    assert box.encrypt("whsec_abc", "tenant.ep_1") != sealed  # random nonce
    with pytest.raises(SecretBoxError):
        box.decrypt(sealed, "tenant.ep_2")  # moved to another endpoint
    with pytest.raises(SecretBoxError):
        SecretBox(b"other-key" * 4).decrypt(sealed, "tenant.ep_1")
    with pytest.raises(SecretBoxError):
        box.decrypt(sealed[:-4] + "AAAA", "tenant.ep_1")


def test_secret_box_key_rules(tmp_path: Path) -> None:
    dev = Settings(data_dir=tmp_path, dev_mode=True)
    sealed = secret_box(dev).encrypt("s", "a")
    assert (tmp_path / "webhook-secret.key").stat().st_mode & 0o777 == 0o600
    assert secret_box(dev).decrypt(sealed, "a") == "s"  # the same key file next time
    with pytest.raises(ValueError, match="AUDIOPREP_WEBHOOK_SECRET_KEY"):
        secret_box(Settings(data_dir=tmp_path, dev_mode=False))
    with pytest.raises(ValueError, match="at least 32"):
        secret_box(Settings(data_dir=tmp_path, webhook_secret_key="short"))
    explicit = Settings(data_dir=tmp_path, dev_mode=False, webhook_secret_key="x" * 32)
    assert secret_box(explicit).decrypt(secret_box(explicit).encrypt("s", "a"), "a") == "s"


def test_retry_schedule_with_jitter_and_the_last_step_repeating() -> None:
    settings = Settings()
    assert settings.webhook_retry_schedule_s == (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
    rng = random.Random(7)
    for attempt, base in enumerate([5, 30, 120, 600, 1800, 3600, 3600, 3600], start=1):
        delays = [retry_delay(settings, attempt, rng) for _ in range(200)]
        assert base * 0.8 <= min(delays) and max(delays) <= base * 1.2
        assert max(delays) - min(delays) > base * 0.2  # jittered
    # the default schedule keeps trying for at least 24 hours: 5 s … 1 h, then hourly
    total, attempt = 0.0, 0
    while total < settings.webhook_retry_for_s:
        attempt += 1
        total += retry_delay(settings, attempt, rng)
    assert 28 <= attempt <= 32


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "AUDIOPREP_WEBHOOK_RETRY_SCHEDULE_S": "1,2.5",
            "AUDIOPREP_WEBHOOK_RETRY_FOR_S": "7200",
            "AUDIOPREP_WEBHOOK_TIMEOUT_S": "3",
            "AUDIOPREP_WEBHOOK_SECRET_KEY": "k" * 40,
        }
    )
    assert settings.webhook_retry_schedule_s == (1.0, 2.5)
    assert settings.webhook_retry_for_s == 7200 and settings.webhook_timeout_s == 3
    assert settings.webhook_secret_key == "k" * 40


def test_delivery_ids() -> None:
    first = delivery_id_for("ep_1", "JOB", "job.completed")
    assert first == delivery_id_for("ep_1", "JOB", "job.completed")  # same inputs, same id
    assert first != delivery_id_for("ep_2", "JOB", "job.completed")
    assert first != delivery_id_for("ep_1", "JOB", "job.failed")
    assert is_delivery_id(first) and is_delivery_id(new_delivery_id())


def test_fold_ends_at_the_first_final_outcome() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    base = {"delivery_id": "msg_X", "endpoint_id": "ep_1", "tenant": "t"}
    created = DeliveryCreated(
        **base, at=at, event="job.completed", job_id="J", kind="save", occurred_at=at
    )
    retry = DeliveryAttempted(
        **base,
        at=at + timedelta(seconds=1),
        attempt=1,
        outcome="retrying",
        status_code=500,
        error="http_500",
        next_attempt_at=at + timedelta(seconds=6),
    )
    done = DeliveryAttempted(**base, at=at + timedelta(seconds=7), attempt=2, outcome="delivered")
    late = DeliveryAttempted(**base, at=at + timedelta(seconds=9), attempt=3, outcome="failed")
    events = [decode_webhook_event(encode_webhook_event(e)) for e in (created, retry, done, late)]
    view = fold_deliveries(enumerate(events, 1))["msg_X"]
    assert view.status == "delivered" and view.attempts == 2 and view.seq == 3
    assert view.next_attempt_at is None and view.delivered_at == done.at
    assert view.last_status_code is None  # the last attempt's own status (none recorded here)
    midway = fold_deliveries(enumerate(events[:2], 1))["msg_X"]
    assert midway.status == "retrying" and midway.next_attempt_at == retry.next_attempt_at
    assert midway.last_status_code == 500


class Clocks:
    """A monotonic and a wall clock that a test moves by hand (and steps, as NTP does)."""

    def __init__(self, wall: datetime) -> None:
        self.mono = 1000.0
        self.wall = wall

    def advance(self, seconds: float, step: timedelta = timedelta(0)) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds) + step

    def due_times(self) -> DueTimes:
        return DueTimes(monotonic=lambda: self.mono, wall=lambda: self.wall)


def test_retry_waits_do_not_move_with_the_wall_clock() -> None:
    """A retry due in 60 s stays due in 60 s when the wall clock steps (docs/webhooks.md)."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    view = DeliveryView(
        id="msg_A",
        endpoint_id="ep_1",
        event="job.completed",
        job_id="J",
        kind="save",
        status="retrying",
        attempts=1,
        created_at=t0,
        updated_at=t0,  # the attempt
        occurred_at=t0,
        seq=2,
        next_attempt_at=t0 + timedelta(seconds=60),
    )
    clocks = Clocks(t0)
    due = clocks.due_times()
    # scheduled here; the clock steps back 2 h, then forward 4 h: 50 s left either way
    due.scheduled("msg_A", t0 + timedelta(seconds=60), 60.0)
    clocks.advance(10, -timedelta(hours=2))
    assert due.wait_s(view) == pytest.approx(50)
    clocks.advance(0, timedelta(hours=4))
    assert due.wait_s(view) == pytest.approx(50)

    # scheduled by another notifier (or before a restart): the wall says 2 h 50 s, the step
    # that was chosen is 60 s; after waiting that once it is due (not another step, nor 2 h)
    clocks.wall = t0 + timedelta(seconds=10) - timedelta(hours=2)
    fresh = clocks.due_times()
    assert fresh.wait_s(view) == pytest.approx(60)
    clocks.advance(60)
    assert fresh.wait_s(view) == 0
    # without a step the wall clock is believed; past due is 0; no next attempt is 0
    clocks.wall = t0 + timedelta(seconds=20)
    assert clocks.due_times().wait_s(view) == pytest.approx(40)
    clocks.wall = t0 + timedelta(hours=2)
    assert clocks.due_times().wait_s(view) == 0
    due.forget("msg_A")
    ended = DeliveryView(**{**msgspec.structs.asdict(view), "next_attempt_at": None})
    assert due.wait_s(ended) == 0

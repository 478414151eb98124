"""Storage keys: which ingest stored a source."""

from __future__ import annotations

from audioprep.shared import keys
from audioprep.shared.ids import new_job_id


def test_ingest_job_of_reads_the_job_id_back_for_every_tenant() -> None:
    job = new_job_id()
    assert keys.ingest_job_of(keys.source_key("default", job, "a b.wav")) == job
    assert keys.ingest_job_of(keys.source_key("acme", job, "x.mp3")) == job
    assert keys.ingest_job_of(f"sources/{job}/deeper/x.wav") is None
    assert keys.ingest_job_of(f"prepared/{job}/x.wav") is None
    assert keys.ingest_job_of("sources/not-a-job-id/x.wav") is None
    assert keys.ingest_job_of(f"tenants/acme/uploads/{job}/x.wav") is None

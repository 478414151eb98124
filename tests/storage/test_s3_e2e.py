"""End to end on the S3 backend (moto): upload → ingest → save/preview → download, decode.

Runs under the storage suite's own names (tests/storage/conftest.py) so workers of other
suites (local storage) cannot take these jobs.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import msgspec
import pytest
from nats.aio.client import Client

from audioprep.shared.nats_server import NatsServer
from audioprep.shared.settings import Settings
from audioprep.shared.storage import PART_SIZE, Storage, open_storage
from tests.conftest import running_stack
from tests.jobs_helpers import wait_for_job
from tests.media import measure_duration_s, sine_lufs, write_tone
from tests.storage.conftest import Moto, own_settings


@pytest.fixture(scope="module")
def s3_settings(
    nats_server: NatsServer, bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return own_settings(
        nats_server,
        f"s3://{bucket}/e2e-{uuid.uuid4().hex[:8]}",
        tmp_path_factory.mktemp("data-s3"),
    )


async def test_upload_ingest_save_download_on_s3(
    s3_settings: Settings, own_nc: Client, media_dir: Path, moto_server: Moto
) -> None:
    # 50 s of 16-bit stereo is 8.8 MB: the upload streams to S3 in two multipart parts.
    wav = write_tone(media_dir / "tone.wav", seconds=50.0, freq=997.0, amplitude_dbfs=-20.0)
    assert wav.stat().st_size > PART_SIZE
    storage: Storage = open_storage(s3_settings.storage)
    async with running_stack(s3_settings, own_nc) as stack:
        with wav.open("rb") as f:
            resp = await stack.client.post(
                "/api/audio/ingest", files={"file": ("tone.wav", f, "audio/wav")}
            )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["jobId"]
        view = await wait_for_job(stack.client, job_id)
        assert view["status"] == "completed", view
        result = view["result"]
        assert abs(result["durationMs"] - 50000) <= 20
        assert abs(result["loudness"]["integratedLufs"] - sine_lufs(-20.0)) < 0.5

        # Everything landed in the bucket, nothing on local disk.
        source = await storage.head(result["sourceKey"])
        assert source is not None and source.size == wav.stat().st_size
        # the ingest moved its upload into sources/ (issue 15: not kept twice); that uploads
        # stream to S3 in multipart parts is proven by tests/storage/test_contract.py
        assert await storage.list_info(f"uploads/{job_id}") == []
        peaks = msgspec.json.decode(await storage.read_bytes(result["peaksKey"]))
        assert peaks["points"] == len(peaks["min"]) > 100
        assert not (s3_settings.data_dir / "storage").exists()

        resp = await stack.client.post(
            "/api/audio/edit/save",
            json={
                "sourceKey": result["sourceKey"],
                "recipe": {"trim": {"startMs": 500, "endMs": 3000}},
                "format": "flac",
                "filename": "cut",
            },
        )
        assert resp.status_code == 202, resp.text
        save = await wait_for_job(stack.client, resp.json()["jobId"])
        assert save["status"] == "completed", save
        prepared_key = save["result"]["preparedKey"]
        out = media_dir / "prepared.flac"
        size = await storage.download_to(prepared_key, out)
        assert size == save["result"]["sizeBytes"]
        assert abs(measure_duration_s(out) - 2.5) < 0.03

        # The poll's downloadUrl is a presigned S3 URL: fetch it like a browser would.
        url = save["downloadUrl"]
        assert url.startswith(moto_server.endpoint) and "X-Amz-Signature=" in url
        async with httpx.AsyncClient() as client:
            fetched = await client.get(url)
        assert fetched.status_code == 200 and fetched.content == out.read_bytes()

        # A preview: its audio route answers JSON {downloadUrl} on S3, as the original app did.
        resp = await stack.client.post(
            "/api/audio/edit/preview",
            json={"sourceKey": result["sourceKey"], "recipe": {"trim": {"endMs": 2000}}},
        )
        assert resp.status_code == 202, resp.text
        preview_id = resp.json()["jobId"]
        preview = await wait_for_job(stack.client, preview_id)
        assert preview["status"] == "completed", preview
        assert await storage.head(preview["result"]["previewKey"]) is not None
        resp = await stack.client.get(f"/api/audio/edit/preview/{preview_id}/audio")
        assert resp.status_code == 200, resp.text
        link = resp.json()["downloadUrl"]
        async with httpx.AsyncClient() as client:
            fetched = await client.get(link)
        assert fetched.status_code == 200
        played = media_dir / ("preview." + preview["result"]["previewKey"].rsplit(".", 1)[-1])
        played.write_bytes(fetched.content)
        assert abs(measure_duration_s(played) - 2.0) < 0.05

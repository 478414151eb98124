"""The bare baseline for the HTTP rows: a minimal Litestar app on the same uvicorn settings as
the API (uvloop, httptools), one NATS connection, one JetStream publish per POST.

python -m bench.baseline_app --port 8001   (needs AUDIOPREP_NATS_URL)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
from collections.abc import AsyncIterator

import nats
import uvicorn
from litestar import Litestar, Request, get, post
from litestar.status_codes import HTTP_202_ACCEPTED
from nats.js.api import StorageType, StreamConfig

STREAM = "BENCH_BASELINE"
state: dict[str, object] = {}
counter = itertools.count()


@post("/publish", status_code=HTTP_202_ACCEPTED)
async def publish(request: Request) -> dict[str, str]:  # type: ignore[type-arg]
    body = await request.body()
    js = state["js"]
    n = next(counter)
    await js.publish(f"bench.base.{n}", body)  # type: ignore[attr-defined]
    return {"jobId": str(n), "status": "pending"}


@get("/const")
async def const() -> dict[str, str]:
    return {"jobId": "0", "status": "completed"}


@get("/api/audio/jobs/{job_id:str}")
async def const_job(job_id: str) -> dict[str, str]:
    """The poll row's baseline: the same paths as the API's poll (a path parameter), a
    constant answer. (Until 2026-12-01 19:00 the poll's paths went to `/const`'s app, which has
    no such route: the baseline measured Litestar's 404.)"""
    return {"jobId": job_id, "status": "completed"}


@contextlib.asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    nc = await nats.connect(os.environ["AUDIOPREP_NATS_URL"])
    js = nc.jetstream()
    with contextlib.suppress(Exception):
        await js.add_stream(
            StreamConfig(name=STREAM, subjects=["bench.base.>"], storage=StorageType.FILE)
        )
    state["js"] = js
    try:
        yield
    finally:
        await nc.drain()


app = Litestar(
    route_handlers=[publish, const, const_job],
    lifespan=[lifespan],
    debug=False,
    logging_config=None,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()

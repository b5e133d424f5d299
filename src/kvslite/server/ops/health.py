"""`GET /health`, `GET /ready` and `GET /metrics` for load balancers, orchestrators and
Prometheus, outside the KVS paths and without SigV4: liveness (the process answers),
readiness (the node can serve requests: its metadata store answers), and the metrics of
`kvslite.server.metrics` in the Prometheus text format.

Readiness does not depend on the media store (S3): with media unreachable the control
plane still works, so a load balancer must keep the node; media operations then fail
with their own errors (503, PutMedia's ERROR 5001). /ready reports the media store's
state as a field, and names no endpoint, bucket or database: those go to the log.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kvslite.server.archive.fragments import Archive

log = logging.getLogger("kvslite.health")

METADATA_TIMEOUT_S = 2.0  # the metadata store answers within this, or the node is not ready
MEDIA_WAIT_S = 0.5  # /ready waits this long for the media probe (load balancers wait ~1 s)
OK, UNREACHABLE = "ok", "unreachable"


class Health:
    def __init__(self, archive: Archive):
        self.archive = archive
        self._media_probe: asyncio.Future | None = None  # at most one in flight
        self._media_state = OK  # the last probe's answer, to log changes only

    def routes(self) -> list[BaseRoute]:
        return [Route("/health", self.health, methods=["GET", "HEAD"]),
                Route("/ready", self.ready, methods=["GET", "HEAD"]),
                Route("/metrics", self.metrics, methods=["GET", "HEAD"])]

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def ready(self, request: Request) -> JSONResponse:
        media = asyncio.ensure_future(self._media())  # checked alongside the metadata
        try:
            await run_in_threadpool(self.archive.check_ready, METADATA_TIMEOUT_S)
        except Exception as e:  # whatever keeps the metadata store from answering
            log.warning("not ready: the metadata store does not answer: %s", e)
            return JSONResponse({"status": "unavailable", "metadata": UNREACHABLE,
                                 "media": await media}, status_code=503)
        return JSONResponse({"status": "ready", "metadata": OK, "media": await media})

    async def _media(self) -> str:
        """The media store's state. A probe that takes longer than MEDIA_WAIT_S (a hung S3)
        reads as unreachable and goes on alone; the next check waits for it, not a new one."""
        if self._media_probe is None or self._media_probe.done():
            self._media_probe = asyncio.ensure_future(run_in_threadpool(self._probe_media))
        try:
            return await asyncio.wait_for(asyncio.shield(self._media_probe), MEDIA_WAIT_S)
        except asyncio.TimeoutError:
            return UNREACHABLE

    def _probe_media(self) -> str:
        try:
            self.archive.check_media()
            state, detail = OK, ""
        except Exception as e:  # whatever keeps the media store from answering
            state, detail = UNREACHABLE, str(getattr(e, "detail", e))
        if state != self._media_state:
            if state == OK:
                log.warning("the media store answers again")
            else:
                log.warning("the media store is unreachable (the node stays ready; media "
                            "operations fail until it is back): %s", detail)
        self._media_state = state
        return state

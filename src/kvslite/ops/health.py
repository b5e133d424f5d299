"""`GET /health`, `GET /ready` and `GET /metrics` for load balancers, orchestrators and
Prometheus, outside the KVS paths and without SigV4: liveness (the process answers),
readiness (the metadata and media stores both answer), and the metrics of
`kvslite.metrics` in the Prometheus text format."""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kvslite.archive.fragments import Archive

log = logging.getLogger("kvslite.health")


class Health:
    def __init__(self, archive: Archive):
        self.archive = archive

    def routes(self) -> list[BaseRoute]:
        return [Route("/health", self.health, methods=["GET", "HEAD"]),
                Route("/ready", self.ready, methods=["GET", "HEAD"]),
                Route("/metrics", self.metrics, methods=["GET", "HEAD"])]

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def ready(self, request: Request) -> JSONResponse:
        try:
            await run_in_threadpool(self.archive.check_ready)
        except Exception as e:  # whatever keeps a store from answering: not ready
            log.warning("not ready: %s", e)
            return JSONResponse({"status": "unavailable", "reason": str(e)[:200]},
                                status_code=503)
        return JSONResponse({"status": "ready"})

"""`GET /health` and `GET /ready` for load balancers and orchestrators, outside the KVS
paths and without SigV4: liveness (the process answers) and readiness (the metadata and
media stores both answer)."""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from kvslite.archive.fragments import Archive

log = logging.getLogger("kvslite.health")


class Health:
    def __init__(self, archive: Archive):
        self.archive = archive

    def routes(self) -> list[BaseRoute]:
        return [Route("/health", self.health, methods=["GET", "HEAD"]),
                Route("/ready", self.ready, methods=["GET", "HEAD"])]

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> JSONResponse:
        try:
            await run_in_threadpool(self.archive.check_ready)
        except Exception as e:  # whatever keeps a store from answering: not ready
            log.warning("not ready: %s", e)
            return JSONResponse({"status": "unavailable", "reason": str(e)[:200]},
                                status_code=503)
        return JSONResponse({"status": "ready"})

"""The URLs a signed notification names (delivery/sns.py), outside the KVS paths and
without SigV4, as SNS's are: `GET /sns/signing-cert.pem`, the certificate receivers check
the Signature with, and `GET /sns/unsubscribe`, SNS's UnsubscribeURL, which answers how to
stop the notifications (kvslite has no subscriptions to remove: a stream's notification
configuration is what sends them)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kvslite.server.api_errors import NOT_IMPLEMENTED, ApiError
from kvslite.server.delivery.sns import CERT_PATH, UNSUBSCRIBE_PATH, SnsSigner


class SnsEndpoints:
    def __init__(self, signer: SnsSigner):
        self.signer = signer

    def routes(self) -> list[BaseRoute]:
        return [Route(CERT_PATH, self.certificate, methods=["GET", "HEAD"]),
                Route(UNSUBSCRIBE_PATH, self.unsubscribe, methods=["GET"])]

    async def certificate(self, request: Request) -> Response:
        return Response(self.signer.certificate_pem, media_type="application/x-pem-file")

    async def unsubscribe(self, request: Request) -> Response:
        raise ApiError(NOT_IMPLEMENTED, "kvslite does not unsubscribe by URL: turn the "
                       "stream's notifications off with UpdateNotificationConfiguration "
                       "(Status DISABLED)", status=501)

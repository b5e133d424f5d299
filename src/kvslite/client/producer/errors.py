"""What a failed upload raises. Every error is a ProducerError carrying what got through."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .acks import Ack
    from .summary import PutSummary


class ProducerError(Exception):
    """The upload failed. `summary` is what got through before it did (if anything)."""

    summary: PutSummary | None = None


class SourceError(ProducerError):
    """The media cannot be uploaded as it is (unsupported codec, bad timestamps, ...)."""


class FragmentEventError(SourceError, ValueError):
    """A FragmentEvent the AWS producer SDK would refuse; `field` names what is wrong
    ("event", "image_prefix" or "metadata")."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class HttpError(ProducerError):
    """A non-200 answer: an AWS JSON error (`code` from x-amzn-ErrorType, `message`)."""

    def __init__(self, status: int, code: str, message: str, operation: str = "PutMedia"):
        super().__init__(f"{operation} failed: HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.operation = status, code, message, operation


class AckError(ProducerError):
    """The server sent an ERROR ack (and closes the upload)."""

    def __init__(self, ack: Ack):
        where = f" for the fragment at timecode {ack.timecode}" if ack.timecode is not None else ""
        super().__init__(f"PutMedia ERROR ack: ErrorId {ack.error_id} "
                         f"({ack.error_code or 'no ErrorCode'}){where}")
        self.ack = ack
        self.error_id, self.error_code = ack.error_id, ack.error_code


def http_error(status: int, headers: dict[str, str], body: bytes,
               operation: str = "PutMedia") -> HttpError:
    """An AWS JSON error response as an HttpError (code from x-amzn-ErrorType or the body)."""
    code = headers.get("x-amzn-errortype") or headers.get("x-amz-errortype") or ""
    message = ""
    try:
        obj = json.loads(body or b"{}")
        if isinstance(obj, dict):
            message = str(obj.get("message") or obj.get("Message") or "")
            code = code or str(obj.get("__type") or obj.get("code") or "")
    except ValueError:
        message = body.decode("utf-8", "replace")[:500]
    # "ResourceNotFoundException:http://...", "com.amazon...#ResourceNotFoundException"
    code = code.split(":", 1)[0].rsplit("#", 1)[-1] or f"HTTP{status}"
    return HttpError(status, code, message or "(no message)", operation)

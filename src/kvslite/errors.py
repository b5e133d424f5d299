"""The one exception type every layer raises for a client-visible AWS error."""

from __future__ import annotations


class ApiError(Exception):
    """An AWS-style error: `code` becomes `x-amzn-ErrorType`, `message` the body.

    The HTTP status comes from the error shape in botocore's models (see
    `kvslite.edge.model.error_statuses`) unless `status` is given for errors the
    models do not define (e.g. SigV4 failures, unknown operations).
    """

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def not_found(what: str) -> ApiError:
    return ApiError("ResourceNotFoundException", what)


def invalid(message: str) -> ApiError:
    return ApiError("InvalidArgumentException", message)

"""The one exception type every layer raises for a client-visible AWS error, and the
error codes kvslite answers with: each written once, here, and checked against
botocore's models by the test suite."""

from __future__ import annotations

# Codes the botocore models define as error shapes: the HTTP status comes from the model.
ACCESS_DENIED = "AccessDeniedException"
CLIENT_LIMIT_EXCEEDED = "ClientLimitExceededException"
CONNECTION_LIMIT_EXCEEDED = "ConnectionLimitExceededException"
INVALID_ARGUMENT = "InvalidArgumentException"
INVALID_CODEC_PRIVATE_DATA = "InvalidCodecPrivateDataException"
INVALID_MEDIA_FRAME = "InvalidMediaFrameException"
MISSING_CODEC_PRIVATE_DATA = "MissingCodecPrivateDataException"
NO_DATA_RETENTION = "NoDataRetentionException"
NOT_AUTHORIZED = "NotAuthorizedException"
RESOURCE_IN_USE = "ResourceInUseException"
RESOURCE_NOT_FOUND = "ResourceNotFoundException"
TAGS_PER_RESOURCE_EXCEEDED_LIMIT = "TagsPerResourceExceededLimitException"
UNSUPPORTED_STREAM_MEDIA_TYPE = "UnsupportedStreamMediaTypeException"
VERSION_MISMATCH = "VersionMismatchException"

MODELED = frozenset({
    ACCESS_DENIED, CLIENT_LIMIT_EXCEEDED, CONNECTION_LIMIT_EXCEEDED, INVALID_ARGUMENT,
    INVALID_CODEC_PRIVATE_DATA, INVALID_MEDIA_FRAME, MISSING_CODEC_PRIVATE_DATA,
    NO_DATA_RETENTION, NOT_AUTHORIZED, RESOURCE_IN_USE, RESOURCE_NOT_FOUND,
    TAGS_PER_RESOURCE_EXCEEDED_LIMIT, UNSUPPORTED_STREAM_MEDIA_TYPE, VERSION_MISMATCH,
})

# Codes outside the models: AWS's common errors for the protocol and for SigV4, which
# botocore recognises by name; each is raised with an explicit HTTP status.
SERIALIZATION = "SerializationException"
UNKNOWN_OPERATION = "UnknownOperationException"
METHOD_NOT_ALLOWED = "MethodNotAllowedException"
REQUEST_ENTITY_TOO_LARGE = "RequestEntityTooLargeException"
NOT_IMPLEMENTED = "NotImplementedException"
INTERNAL_FAILURE = "InternalFailure"
MISSING_PARAMETER = "MissingParameter"
MISSING_AUTHENTICATION_TOKEN = "MissingAuthenticationTokenException"
INCOMPLETE_SIGNATURE = "IncompleteSignatureException"
UNRECOGNIZED_CLIENT = "UnrecognizedClientException"
INVALID_SIGNATURE = "InvalidSignatureException"
EXPIRED_TOKEN = "ExpiredTokenException"  # a session token past its expiry
INSUFFICIENT_STORAGE = "InsufficientStorageException"
SERVICE_UNAVAILABLE = "ServiceUnavailableException"

# IAM and STS (the query protocol, edge/query_protocol.py): codes of botocore's `iam`
# model, or AWS's common query errors; each raised with its status from that model.
NO_SUCH_ENTITY = "NoSuchEntity"
ENTITY_ALREADY_EXISTS = "EntityAlreadyExists"
DELETE_CONFLICT = "DeleteConflict"
LIMIT_EXCEEDED = "LimitExceeded"
MALFORMED_POLICY_DOCUMENT = "MalformedPolicyDocument"
IAM_ACCESS_DENIED = "AccessDenied"  # the IAM API's code for a refusal by policy
VALIDATION_ERROR = "ValidationError"
INVALID_ACTION = "InvalidAction"
MALFORMED_QUERY_STRING = "MalformedQueryString"
# The signing errors as the query-protocol services (IAM, STS) name them.
INVALID_CLIENT_TOKEN_ID = "InvalidClientTokenId"
SIGNATURE_DOES_NOT_MATCH = "SignatureDoesNotMatch"
QUERY_MISSING_AUTHENTICATION_TOKEN = "MissingAuthenticationToken"
QUERY_INCOMPLETE_SIGNATURE = "IncompleteSignature"
QUERY_EXPIRED_TOKEN = "ExpiredToken"
QUERY_SIGNING_ERRORS = {
    UNRECOGNIZED_CLIENT: INVALID_CLIENT_TOKEN_ID,
    INVALID_SIGNATURE: SIGNATURE_DOES_NOT_MATCH,
    MISSING_AUTHENTICATION_TOKEN: QUERY_MISSING_AUTHENTICATION_TOKEN,
    INCOMPLETE_SIGNATURE: QUERY_INCOMPLETE_SIGNATURE,
    EXPIRED_TOKEN: QUERY_EXPIRED_TOKEN,
}

# the codes above that no KVS shape models (tests/test_architecture.py checks both ways)
UNMODELED = frozenset({
    SERIALIZATION, UNKNOWN_OPERATION, METHOD_NOT_ALLOWED, REQUEST_ENTITY_TOO_LARGE,
    NOT_IMPLEMENTED, INTERNAL_FAILURE, MISSING_PARAMETER, MISSING_AUTHENTICATION_TOKEN,
    INCOMPLETE_SIGNATURE, UNRECOGNIZED_CLIENT, INVALID_SIGNATURE, EXPIRED_TOKEN,
    INSUFFICIENT_STORAGE, SERVICE_UNAVAILABLE,
    # IAM and STS
    NO_SUCH_ENTITY, ENTITY_ALREADY_EXISTS, DELETE_CONFLICT, LIMIT_EXCEEDED,
    MALFORMED_POLICY_DOCUMENT, IAM_ACCESS_DENIED, VALIDATION_ERROR, INVALID_ACTION,
    MALFORMED_QUERY_STRING, *QUERY_SIGNING_ERRORS.values(),
})


class ApiError(Exception):
    """An AWS-style error: `code` becomes `x-amzn-ErrorType`, `message` the body.

    The HTTP status comes from the error shape in botocore's models (see
    `kvslite.server.edge.model.error_statuses`) unless `status` is given for errors the
    models do not define (e.g. SigV4 failures, unknown operations).
    """

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def not_found(what: str) -> ApiError:
    return ApiError(RESOURCE_NOT_FOUND, what)


def invalid(message: str) -> ApiError:
    return ApiError(INVALID_ARGUMENT, message)


class OutOfSpace(ApiError):
    """The disk holding the archive is full: 507, which a client can act on (free space,
    retry later); PutMedia answers it with ERROR 5001 ARCHIVAL_ERROR."""

    def __init__(self, detail: str):
        super().__init__(INSUFFICIENT_STORAGE,
                         f"kvslite is out of disk space; free some and retry ({detail})",
                         status=507)


class MediaUnavailable(ApiError):
    """The media store (S3) cannot be reached or failed: 503, which a client can retry;
    PutMedia answers it with ERROR 5001 ARCHIVAL_ERROR. The message names no endpoint,
    bucket or prefix: those are the server's to log, not the client's to see."""

    def __init__(self, detail: str):
        super().__init__(SERVICE_UNAVAILABLE, "the media store is unavailable; retry later",
                         status=503)
        self.detail = detail  # what failed, for the server's log

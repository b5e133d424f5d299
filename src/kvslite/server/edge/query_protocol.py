"""AWS's query protocol, as IAM and STS serve it: a form-encoded `POST /` whose `Action`
names the operation, answered in XML shaped by botocore's model of the service.

A response is `<{Op}Response xmlns=...><{Op}Result>...</{Op}Result><ResponseMetadata>
<RequestId>...</RequestId></ResponseMetadata></{Op}Response>`, the result's members
serialized from the operation's output shape; an error is `<ErrorResponse><Error><Type>
<Code><Message></Error><RequestId></ErrorResponse>`.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape

from kvslite.server.api_errors import ApiError

INVALID_ACTION = "InvalidAction"
MALFORMED_QUERY_STRING = "MalformedQueryString"


@cache
def service_model(name: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(name)


def parse_form(body: bytes) -> dict[str, str]:
    """The form's parameters (a repeated name keeps its first value)."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                          max_num_fields=1000)
    except ValueError as e:
        raise ApiError(MALFORMED_QUERY_STRING, f"The request body is not a valid form: "
                       f"{str(e)[:200]}", status=400) from None
    params: dict[str, str] = {}
    for name, value in pairs:
        params.setdefault(name, value)
    return params


def operation(service: ServiceModel, params: dict[str, str]) -> OperationModel:
    action = params.get("Action", "")
    if action not in service.operation_names:
        raise ApiError(INVALID_ACTION, f"Could not find operation {action[:100]} for version "
                       f"{params.get('Version', '')[:20]}", status=400)
    return service.operation_model(action)


def input_params(op: OperationModel, params: dict[str, str]) -> dict[str, object]:
    """The top-level scalar members of the input shape that the form carries, typed."""
    found: dict[str, object] = {}
    shape = op.input_shape
    for name, member in (shape.members.items() if shape is not None else ()):
        if name not in params:
            continue
        value = params[name]
        if member.type_name == "integer":
            if not value.lstrip("-").isdigit():
                raise ApiError("ValidationError", f"{name} must be an integer", status=400)
            found[name] = int(value)
        elif member.type_name == "boolean":
            found[name] = value.lower() == "true"
        else:
            found[name] = value
    return found


def response(op: OperationModel, result: dict | None, request_id: str) -> str:
    namespace = op.service_model.metadata["xmlNamespace"]
    inner = ""
    if op.output_shape is not None:
        wrapper = op.output_shape.serialization.get("resultWrapper", f"{op.name}Result")
        inner = f"<{wrapper}>{_members(op.output_shape, result or {})}</{wrapper}>"
    return (f'<{op.name}Response xmlns="{namespace}">{inner}<ResponseMetadata><RequestId>'
            f"{request_id}</RequestId></ResponseMetadata></{op.name}Response>")


def error(service: ServiceModel, error: ApiError, request_id: str) -> str:
    kind = "Receiver" if (error.status or 400) >= 500 else "Sender"
    return (f'<ErrorResponse xmlns="{service.metadata["xmlNamespace"]}"><Error><Type>{kind}'
            f"</Type><Code>{escape(error.code)}</Code><Message>{escape(error.message)}"
            f"</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>")


def _members(shape: Shape, value: dict) -> str:
    parts = []
    for name, member in shape.members.items():
        if value.get(name) is None:
            continue
        tag = member.serialization.get("name", name)
        parts.append(f"<{tag}>{_value(member, value[name])}</{tag}>")
    return "".join(parts)


def _value(shape: Shape, value: object) -> str:
    if shape.type_name == "structure":
        assert isinstance(value, dict)
        return _members(shape, value)
    if shape.type_name == "list":
        assert isinstance(value, list)
        item = shape.member  # type: ignore[attr-defined]
        tag = item.serialization.get("name", "member")
        return "".join(f"<{tag}>{_value(item, v)}</{tag}>" for v in value)
    if shape.type_name == "timestamp":
        assert isinstance(value, (int, float))
        return dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if shape.type_name == "boolean":
        return "true" if value else "false"
    return escape(str(value))

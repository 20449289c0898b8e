"""Request bodies to validated models, and pydantic errors to OpenAI's 400s.

`ignored_params_headers` names what was accepted but not acted on, in a
header that client-chosen field names can never break or bloat.
`parse_json_body` parses with orjson and validates; the first validation
error becomes an `InvalidRequest` with OpenAI's code (`missing_required_parameter`,
`invalid_type`, `invalid_value`, `decimal_above_max_value`, ...) and the
offending parameter as a path like `messages[0].content`. Union member and
discriminator names never leak into the path: it is rebuilt by walking the
client's own JSON.
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from bridge.errors import InvalidRequest

T = TypeVar("T", bound=BaseModel)

_JSON_HINT: Final = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
)
_TYPE_NAMES: Final = {
    "bool": "a boolean",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "list": "an array",
    "dict": "an object",
    "NoneType": "null",
}
_EXPECTED: Final = {
    "bool_type": "a boolean",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


IGNORED_PARAMS_HEADER: Final = "x-codex-bridge-ignored-params"
# Field names come from the client: only these characters reach a header
# (no CR/LF, no separators), each name bounded...
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9_.:\[\]-]{1,64}")
# ...and the header bounded too, so 5000 unknown fields stay one small header.
IGNORED_PARAMS_MAX_NAMES: Final = 20
IGNORED_PARAMS_MAX_BYTES: Final = 1024
# The ignored-params header of the request, for its error answers too.
IGNORED_HEADERS: Final = web.RequestKey("ignored_params_headers", dict[str, str])


def ignored_params_headers(names: list[str], request: web.Request | None = None) -> dict[str, str]:
    """The response header naming what was accepted but not acted on (never silently claimed).

    Names that are not plain parameter names, and any past the count or byte
    cap, are summed up in a trailing `+N more` marker instead of being named.
    Given the request, the header is kept on it too (`IGNORED_HEADERS`), so
    an error answer of that request (admission, a stream's header hold)
    carries it like any other answer (`bridge.api.errors`).
    """
    unique = list(dict.fromkeys(names))
    shown: list[str] = []
    size = 0
    for name in unique:
        if len(shown) == IGNORED_PARAMS_MAX_NAMES:
            break
        if not _SAFE_NAME.fullmatch(name):
            continue
        if size + len(name) + 1 > IGNORED_PARAMS_MAX_BYTES:
            break
        shown.append(name)
        size += len(name) + 1
    hidden = len(unique) - len(shown)
    if hidden:
        shown.append(f"+{hidden} more")
    headers = {IGNORED_PARAMS_HEADER: ",".join(shown)} if shown else {}
    if request is not None:
        request[IGNORED_HEADERS] = headers
    return headers


def parse_json_body(raw: bytes, model: type[T]) -> T:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(_JSON_HINT) from None
    if not isinstance(data, dict):
        raise InvalidRequest(_JSON_HINT + " The body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise to_invalid_request(exc, data) from None


def _path(loc: tuple[int | str, ...], data: Any) -> tuple[str, Any]:
    """The client-facing path of `loc` in `data`, skipping union member and tag segments."""
    path = ""
    node = data
    for index, part in enumerate(loc):
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            path += f"[{part}]"
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            path += f".{part}" if path else part
            node = node[part]
        elif index == len(loc) - 1 and isinstance(part, str) and isinstance(node, dict):
            # A missing field: the last segment names it.
            return (f"{path}.{part}" if path else part), None
    return path, node


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value).__name__, "a value of another type")


def _fmt(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def to_invalid_request(exc: ValidationError, data: Any) -> InvalidRequest:
    errors = exc.errors()
    # A union reports one error per member; the most specific one (deepest in
    # the client's JSON, and not a mere type mismatch) is the one that helps.
    error = max(
        errors,
        key=lambda e: (len(_path(tuple(e["loc"]), data)[0]), e["type"] not in _EXPECTED),
    )
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "missing":
        param, _ = _path(tuple(error["loc"]), data)
        return InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        discriminator = str(ctx.get("discriminator", "'type'")).strip("'")
        base, _ = _path(tuple(error["loc"]), data)
        param = f"{base}.{discriminator}" if base else discriminator
        if kind == "union_tag_not_found":
            return InvalidRequest(
                f"Missing required parameter: '{param}'.",
                param=param,
                code="missing_required_parameter",
            )
        tag = ctx.get("tag")
        return InvalidRequest(
            f"Invalid value: '{tag}'. Supported values are: {ctx.get('expected_tags')}.",
            param=param,
            code="invalid_value",
        )
    param, _ = _path(tuple(error["loc"]), data)
    if kind in _EXPECTED:
        return InvalidRequest(
            f"Invalid type for '{param}': expected {_EXPECTED[kind]}, but got "
            f"{_type_name(value)} instead.",
            param=param,
            code="invalid_type",
        )
    if kind == "string_pattern_mismatch":
        return InvalidRequest(
            f"Invalid '{param}': string does not match pattern. Expected a string that "
            f"matches the pattern '{ctx.get('pattern')}'.",
            param=param,
            code="invalid_value",
        )
    if kind in ("literal_error", "enum"):
        supported = f" Supported values are: {ctx['expected']}." if "expected" in ctx else ""
        return InvalidRequest(
            f"Invalid value: '{value}'.{supported}", param=param, code="invalid_value"
        )
    if kind in ("less_than_equal", "less_than", "greater_than_equal", "greater_than"):
        above = kind.startswith("less")
        limit = ctx.get("le", ctx.get("lt", ctx.get("ge", ctx.get("gt"))))
        number = "integer" if isinstance(value, int) and isinstance(limit, int) else "decimal"
        direction = "above_max" if above else "below_min"
        op = (
            ("<=" if kind == "less_than_equal" else "<")
            if above
            else (">=" if kind == "greater_than_equal" else ">")
        )
        return InvalidRequest(
            f"Invalid '{param}': {number} {'above maximum' if above else 'below minimum'} value. "
            f"Expected a value {op} {_fmt(limit)}, but got {_fmt(value)} instead.",
            param=param,
            code=f"{number}_{direction}_value",
        )
    if kind == "too_long":
        return InvalidRequest(
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{ctx.get('max_length')}, but got an array with length {ctx.get('actual_length')} instead.",
            param=param,
            code="array_above_max_length",
        )
    if kind == "too_short":
        if isinstance(value, list) and not value:
            return InvalidRequest(
                f"Invalid '{param}': empty array. Expected an array with minimum length "
                f"{ctx.get('min_length')}, but got an empty array instead.",
                param=param,
                code="empty_array",
            )
        return InvalidRequest(
            f"Invalid '{param}': value too short.", param=param, code="invalid_value"
        )
    if kind == "string_too_short":
        return InvalidRequest(
            f"Invalid '{param}': empty string.", param=param, code="invalid_value"
        )
    return InvalidRequest(f"Invalid '{param}'.", param=param, code="invalid_value")

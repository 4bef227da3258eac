"""Checks on what clients send, made at the edge so bad input is a 400 naming the field.

Every client string is bounded here or by the request size limit, and must be valid Unicode
text: JSON can carry a lone surrogate ("\\ud800"), which no tokenizer or encoder accepts.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from engine.sampling_params import InvalidRequestError

T = TypeVar("T", bound=BaseModel)

MAX_REQUEST_ID_CHARS = 128
MAX_NAME_CHARS = 256        # model, user, cache_salt
MAX_ROLE_CHARS = 64
MAX_MESSAGES = 10_000
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 256
REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")


def new_request_id(prefix: str) -> str:
    """A router-made id, unique among all requests: what the backend sees."""
    return f"{prefix}-{uuid.uuid4().hex}"


def check_request_id(value: str, field: str = "request_id") -> str:
    """A client's request id: 1-128 visible ASCII characters (echoed back, never sent to the backend)."""
    if not REQUEST_ID.fullmatch(value):
        raise InvalidRequestError(f"{field} must be 1-{MAX_REQUEST_ID_CHARS} printable ASCII characters "
                                  "without spaces or control characters")
    return value


def is_text(value: str) -> bool:
    """False for strings with lone surrogates (they cannot be encoded as UTF-8)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: str, field: str, max_chars: int | None = None) -> None:
    if not is_text(value):
        raise InvalidRequestError(f"{field}: contains a lone surrogate; strings must be valid Unicode text")
    if max_chars is not None and len(value) > max_chars:
        raise InvalidRequestError(f"{field}: at most {max_chars} characters, got {len(value)}")


def bad_text_path(data: Any) -> str | None:
    """The path ("messages[0].role") of the first string or key in parsed JSON that is not text."""
    stack = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not is_text(value):
                return path or "body"
        elif isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else key
                if not is_text(key):
                    return f"{path or 'body'}: a key"
                stack.append((item, where))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value) if isinstance(item, str | dict | list))
    return None


def parse_body(raw: bytes, model: type[T]) -> T:
    """Decode, parse and validate a JSON request body; InvalidRequestError says what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequestError(f"request body is not valid UTF-8 (byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRequestError(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidRequestError("request body is not valid JSON: nested too deeply") from None
    where = bad_text_path(data)
    if where is not None:
        raise InvalidRequestError(f"{where}: contains a lone surrogate; strings must be valid Unicode text")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidRequestError(validation_message(e.errors(include_url=False, include_input=False))) from None


def validation_message(problems: Sequence[Mapping[str, Any]]) -> str:
    """'field: problem' for the first few problems pydantic found in a body."""
    parts = []
    for problem in problems[:3]:
        if problem.get("type") == "json_invalid":
            return f"request body is not valid JSON: {problem.get('ctx', {}).get('error', problem['msg'])}"
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
        parts.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(parts) or "invalid request body"

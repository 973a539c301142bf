"""Limits and validation of everything the Dabble demo stores.

The commands call these before they mutate anything, so a rejected command leaves the state as
it was. `clean_fields` also returns a deep copy made of exact plain types (dict with str keys,
list, str, int, float, bool, None), so the state never shares an object with a request's JSON
or with the journaled arguments, and always packs with plain msgpack.

Limits: table names `[A-Za-z0-9_-]{1,64}`; at most 256 fields a record, field names of 1 to 128
characters; values nested at most 32 deep; integers within msgpack's 64-bit range; finite
floats only (JSON has no NaN); strings must be valid Unicode (no lone surrogates).
"""

from __future__ import annotations

import math
import re
from typing import Any

from tenant import CommandRejected, NotFound

TABLE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_FIELDS = 256
MAX_FIELD_NAME_CHARS = 128
MAX_VALUE_DEPTH = 32
MAX_USER_CHARS = 128
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1


def check_table_name(table: object) -> str:
    if not isinstance(table, str) or TABLE_NAME_RE.fullmatch(table) is None:
        raise CommandRejected(f"bad table name {table!r}: use 1 to 64 letters, digits, '_' or '-'")
    return table


def check_record_id(record_id: object) -> int:
    if type(record_id) is not int:
        raise NotFound(f"no record {record_id!r}: record ids are integers")
    return record_id


def check_user(user: object) -> str:
    if not isinstance(user, str) or not user.strip():
        raise CommandRejected("user must be a non-empty string")
    if len(user) > MAX_USER_CHARS:
        raise CommandRejected(f"user must be at most {MAX_USER_CHARS} characters")
    _check_unicode(user, "user")
    return str(user)


def check_session_id(session_id: object) -> str:
    if not isinstance(session_id, str) or SESSION_ID_RE.fullmatch(session_id) is None:
        raise CommandRejected("session_id must be 16 to 128 URL-safe characters")
    return str(session_id)


def clean_fields(fields: object, *, allow_null: bool = True) -> dict[str, Any]:
    """Validate a record's fields and return a deep copy of them."""
    if not isinstance(fields, dict):
        raise CommandRejected(f"fields must be a JSON object, not {_json_type(fields)}")
    if len(fields) > MAX_FIELDS:
        raise CommandRejected(f"a record has at most {MAX_FIELDS} fields, got {len(fields)}")
    cleaned: dict[str, Any] = {}
    for key, value in fields.items():
        check_field_name(key)
        if value is None and not allow_null:
            raise CommandRejected(f"field {key!r} must not be null")
        cleaned[str(key)] = _clean_value(value, key, 1)
    return cleaned


def check_field_name(key: object) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_FIELD_NAME_CHARS:
        raise CommandRejected(
            f"bad field name {key!r}: field names are strings of 1 to "
            f"{MAX_FIELD_NAME_CHARS} characters"
        )
    _check_unicode(key, "field name")
    return key


def _clean_value(value: object, field: str, depth: int) -> Any:
    if value is None or type(value) is bool:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT_MIN <= value <= INT_MAX:
            raise CommandRejected(f"field {field!r}: integer out of the 64-bit range")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CommandRejected(f"field {field!r}: numbers must be finite")
        return float(value)
    if isinstance(value, str):
        _check_unicode(value, f"field {field!r}")
        return str(value)
    if isinstance(value, list | dict) and depth >= MAX_VALUE_DEPTH:
        raise CommandRejected(f"field {field!r}: values nest at most {MAX_VALUE_DEPTH} deep")
    if isinstance(value, list):
        return [_clean_value(item, field, depth + 1) for item in value]
    if isinstance(value, dict):
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CommandRejected(f"field {field!r}: object keys must be strings")
            _check_unicode(key, f"field {field!r}")
            cleaned[str(key)] = _clean_value(item, field, depth + 1)
        return cleaned
    raise CommandRejected(f"field {field!r}: {_json_type(value)} is not a JSON value")


def _check_unicode(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CommandRejected(f"{what} is not valid Unicode (lone surrogate)") from exc


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return names.get(type(value), type(value).__name__)

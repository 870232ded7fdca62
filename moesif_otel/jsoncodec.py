"""JSON for the export path: orjson when installed, the standard library otherwise.

Serialising events and parsing captured JSON bodies is most of the exporter's CPU, and that CPU
is taken from the application's process (and its GIL). orjson does both about ten times faster
(measured on the benchmark's events: dumps 9.6 -> 0.6 us, a small body's loads 4.3 -> 0.5 us).
Where orjson refuses or reads differently what the standard library accepts (integers beyond 64
bits, deep nesting, lone surrogates), the standard library takes over, so results never depend
on which one ran.
"""

from __future__ import annotations

import json
from typing import Any, final

try:
    import orjson
except ImportError:  # pragma: no cover - exercised by the fallback test through monkeypatching
    orjson = None  # type: ignore[assignment]

_DUMP_OPTIONS = orjson.OPT_NON_STR_KEYS if orjson is not None else 0


@final
class RawJson:
    """JSON text known to be valid, which ``dumps`` writes as it is: a body that nothing reads
    before it is sent is not parsed into Python values only to be written back (a tenth of
    converting the benchmark's POST event, which carries two small JSON bodies)."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text


def raw_json(data: bytes) -> RawJson | None:
    """``data`` as RawJson when orjson parses it (the parse is the check, its values are not
    kept); None otherwise (not JSON, or JSON only the standard library reads: parse that)."""
    if orjson is None:
        return None
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return RawJson(data)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (RawJson as its text); raises TypeError/ValueError for what JSON cannot
    represent."""
    if orjson is not None:
        try:
            return orjson.dumps(value, default=_fragment, option=_DUMP_OPTIONS)
        except TypeError:
            pass  # retried below: the standard library accepts a little more
    # ensure_ascii: a lone surrogate (legal in a parsed JSON body) still gives valid JSON
    return json.dumps(value, separators=(",", ":"), allow_nan=False, default=_raw_value).encode("ascii")


def _fragment(value: Any) -> Any:
    if type(value) is RawJson:
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _raw_value(value: Any) -> Any:
    if type(value) is RawJson:
        return loads(value.text)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def loads(data: bytes | bytearray | str) -> Any:
    """Parse JSON text; raises ValueError (NaN and Infinity are not JSON and are refused)."""
    if orjson is not None and not _has_long_digit_run(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # e.g. a BOM or a huge integer: the standard library decides
    if isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8-sig")
    return json.loads(data, parse_constant=_refuse_constant)


# orjson reads integers beyond 64 bits as floats, silently losing digits (a 20-digit id would
# change); text with that many digits in a row goes to the standard library instead. Found by
# mapping every digit to "1" and everything else to "0" (C speed; a regex took most of the time
# of parsing a small body), once the text holds 19 digits at all: counting them (deleting the
# rest) is twice as fast, and most bodies hold fewer.
_DIGIT_MAP = bytes(0x31 if 0x30 <= i <= 0x39 else 0x30 for i in range(256))
_NOT_DIGITS = bytes(i for i in range(256) if not 0x30 <= i <= 0x39)
_LONG_RUN = b"1" * 19


def _has_long_digit_run(data: bytes | bytearray | str) -> bool:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data.translate(None, _NOT_DIGITS)) < len(_LONG_RUN):
        return False
    return _LONG_RUN in data.translate(_DIGIT_MAP)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")

"""The export path's JSON: the same answers with orjson and with the standard-library fallback."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moesif_otel import jsoncodec


@pytest.fixture(params=["orjson", "stdlib"])
def codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    if request.param == "orjson":
        assert jsoncodec.orjson is not None  # a declared dependency: must be importable here
    else:
        monkeypatch.setattr(jsoncodec, "orjson", None)
    return jsoncodec


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1.5, None, True], "c": {"d": "é ☃"}},
        {"big": 2**70, "neg": -(2**65)},  # beyond orjson's 64 bits
        {"lone": "\ud800x"},  # a lone surrogate, as json.loads('"\\ud800x"') gives
        {1: "int key", "s": "str key"},
        [],
        "text",
    ],
)
def test_dumps_is_valid_json_with_the_same_meaning(codec: Any, value: Any) -> None:
    data = codec.dumps(value)
    assert isinstance(data, bytes)
    expected = json.loads(json.dumps(value))  # int keys become strings, as JSON requires
    assert json.loads(data) == expected


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": float("inf")}, {"x": object()}])
def test_dumps_refuses_what_json_cannot_say(codec: Any, bad: Any) -> None:
    if codec.orjson is not None and isinstance(bad["x"], float):
        assert codec.dumps(bad) == b'{"x":null}'  # orjson writes null, never invalid JSON
        return
    with pytest.raises((TypeError, ValueError)):
        codec.dumps(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'{"a": [1, 2]}', {"a": [1, 2]}),
        (b"\xef\xbb\xbf[1]", [1]),  # a UTF-8 BOM
        (b'{"n": 123456789012345678901234567890}', {"n": 123456789012345678901234567890}),
        ('{"n": 123456789012345678901234567890}', {"n": 123456789012345678901234567890}),
        (b"[-9223372036854775809, 18446744073709551616]", [-9223372036854775809, 18446744073709551616]),
        (bytearray(b"[18446744073709551616]"), [18446744073709551616]),
        # digits enough for a long run, none in a row; then a long run among short numbers
        (b"[1.5, 22, 333, 4444, 55555, 666666, 7.0]", [1.5, 22, 333, 4444, 55555, 666666, 7.0]),
        (b"[1, 2, 3, 36893488147419103232, 4]", [1, 2, 3, 36893488147419103232, 4]),
        ('{"n": 9223372036854775807, "s": "\u00e9"}', {"n": 9223372036854775807, "s": "é"}),
        (bytearray(b'"x"'), "x"),
        ('{"s": "\\ud800"}', {"s": "\ud800"}),
    ],
)
def test_loads(codec: Any, text: Any, expected: Any) -> None:
    assert codec.loads(text) == expected


@pytest.mark.parametrize("text", [b"NaN", b'{"x": Infinity}', b"{broken", b"\xff\xfe"])
def test_loads_refuses_what_is_not_json(codec: Any, text: bytes) -> None:
    with pytest.raises(ValueError):
        codec.loads(text)

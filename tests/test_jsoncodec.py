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


def test_raw_json_is_written_as_its_text_with_orjson() -> None:
    text = b'{"id": 123456789012345678901234567890, "tags": ["a", "b"], "s": "\\u00e9"}'
    raw = jsoncodec.raw_json(text)
    assert isinstance(raw, jsoncodec.RawJson)
    out = jsoncodec.dumps({"body": raw, "n": 1})
    assert out == b'{"body":' + text + b',"n":1}'  # not parsed and written back: digits kept
    assert json.loads(out)["body"]["id"] == 123456789012345678901234567890


def test_raw_json_without_orjson_is_written_as_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = jsoncodec.RawJson(b'{"id": 123456789012345678901234567890, "x": [1, 2]}')
    monkeypatch.setattr(jsoncodec, "orjson", None)
    assert jsoncodec.raw_json(b"[1]") is None  # nothing is checked without orjson: callers parse
    assert json.loads(jsoncodec.dumps({"body": raw})) == {
        "body": {"id": 123456789012345678901234567890, "x": [1, 2]}
    }


def test_raw_json_survives_the_standard_library_retry() -> None:
    # an integer beyond 64 bits elsewhere in the event makes orjson refuse it: the retry writes both
    raw = jsoncodec.raw_json(b'{"a": [1, 2]}')
    out = jsoncodec.dumps({"body": raw, "big": 2**70})
    assert json.loads(out) == {"body": {"a": [1, 2]}, "big": 2**70}


@pytest.mark.parametrize("text", [b"{broken", b"\xef\xbb\xbf[1]", b'{"x": NaN}', b'"\\ud800"', b""])
def test_raw_json_only_for_what_orjson_reads(text: bytes) -> None:
    assert jsoncodec.raw_json(text) is None  # the caller parses these as before (or not at all)


def test_other_unknown_types_still_fail() -> None:
    with pytest.raises(TypeError):
        jsoncodec.dumps({"when": object()})

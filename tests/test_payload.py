"""payload.py: the one JSON-array payload builder behind event and profile batches."""

from __future__ import annotations

import gzip
import json
import sys
import zlib
from typing import Any

import pytest

from moesif_otel import payload
from moesif_otel.payload import JsonArray, json_arrays


def items(n: int, size: int) -> list[bytes]:
    return [json.dumps({"i": i, "pad": "x" * size}).encode() for i in range(n)]


def test_arrays_hold_every_item_in_order_within_the_byte_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload, "MAX_PAYLOAD_BYTES", 200)
    data = items(12, 30)
    arrays = list(json_arrays(data))
    assert len(arrays) > 2 and all(len(body) <= 200 for body, _ in arrays)
    decoded = [json.loads(body) for body, _ in arrays]
    assert [len(d) for d in decoded] == [count for _, count in arrays]
    assert [item for d in decoded for item in d] == [json.loads(item) for item in data]


def test_an_item_over_the_limit_still_goes_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload, "MAX_PAYLOAD_BYTES", 50)
    big, small = items(1, 100)[0], items(1, 1)[0]
    assert [count for _, count in json_arrays([small, big, small])] == [1, 1, 1]
    assert list(json_arrays([])) == []


def test_gzip_and_a_count_limit() -> None:
    array = JsonArray(gzip=True)
    data = items(5, 200_000)  # past the compression chunk: compressed while built
    for item in data:
        assert array.has_room(item, max_count=5)
        array.add(item)
    assert not array.has_room(data[0], max_count=5)
    assert json.loads(gzip.decompress(array.finish())) == [json.loads(item) for item in data]


class CountingZlib:
    """zlib with its calls counted: each one lets go of the GIL, which the app's loop pays for."""

    DEFLATED = zlib.DEFLATED

    def __init__(self) -> None:
        self.calls = 0

    def compress(self, *args: Any, **kwargs: Any) -> bytes:
        self.calls += 1
        return zlib.compress(*args, **kwargs)

    def compressobj(self, *args: Any) -> Any:
        real, outer = zlib.compressobj(*args), self

        class Counted:
            def compress(self, data: bytes) -> bytes:
                outer.calls += 1
                return real.compress(data)

            def flush(self) -> bytes:
                outer.calls += 1
                return real.flush()

        return Counted()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="zlib.compress takes wbits from Python 3.11")
def test_a_batch_under_the_chunk_size_is_compressed_in_one_zlib_call(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingZlib()
    monkeypatch.setattr(payload, "zlib", counting)
    array = JsonArray(gzip=True)
    data = items(100, 500)
    for item in data:
        array.add(item)
    assert json.loads(gzip.decompress(array.finish())) == [json.loads(item) for item in data]
    assert counting.calls == 1


def test_compressed_in_chunks_past_the_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingZlib()
    monkeypatch.setattr(payload, "zlib", counting)
    array = JsonArray(gzip=True)
    data = items(3, 200_000)  # two chunks, then the rest and the end of the stream
    for item in data:
        array.add(item)
    assert json.loads(gzip.decompress(array.finish())) == [json.loads(item) for item in data]
    assert counting.calls == 3

"""MoesifSpanProcessor on its own: spans end on any thread, and every one is counted and exported."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind

from moesif_otel import MoesifSpanProcessor
from moesif_otel import attributes as A
from moesif_otel.event import CapturedRecord
from moesif_otel.exporter import HEADER_PAIR_OVERHEAD, SPAN_OVERHEAD, span_weight


class Counting(SpanExporter):
    """Records what it is given; force_flush is the SDK base class's (it returns None)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.batches: list[int] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        self.batches.append(len(spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


_RESOURCE = Resource.get_empty()


def server_span(i: int) -> ReadableSpan:
    return ReadableSpan(
        name="GET",
        context=SpanContext(trace_id=i + 1, span_id=i + 1, is_remote=False),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "url.path": f"/{i}"},
        resource=_RESOURCE,  # without one, each ReadableSpan runs the resource detectors
    )


def test_spans_ending_on_many_threads_are_all_counted_and_exported() -> None:
    exporter = Counting()
    processor = MoesifSpanProcessor(exporter, max_queue_size=100_000, max_batch_size=100)
    threads, per_thread = 8, 2_000
    spans = [server_span(i) for i in range(threads * per_thread)]
    start = threading.Barrier(threads)

    def end(chunk: list[ReadableSpan]) -> None:
        start.wait()
        for span in chunk:
            processor.on_end(span)

    chunks = [spans[t * per_thread : (t + 1) * per_thread] for t in range(threads)]
    workers = [threading.Thread(target=end, args=(chunk,)) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert processor.force_flush(10_000)
    processor.shutdown()

    stats = processor.stats()
    assert (stats["spans_queued"], stats["dropped_queue_full"], stats["pending"]) == (
        threads * per_thread,
        0,
        0,
    )
    assert len(exporter.spans) == threads * per_thread
    assert {id(s) for s in exporter.spans} == {id(s) for s in spans}
    assert max(exporter.batches) <= 100


def test_drops_at_the_queue_bound_are_counted_exactly() -> None:
    exporter = Counting()
    processor = MoesifSpanProcessor(exporter, max_queue_size=50, max_batch_size=1_000, schedule_delay=60)
    for i in range(80):  # the worker waits for a full batch or its timer: nothing leaves meanwhile
        processor.on_end(server_span(i))
    stats = processor.stats()
    assert (stats["spans_queued"], stats["dropped_queue_full"], stats["captured"]) == (50, 30, 80)
    processor.shutdown()
    assert len(exporter.spans) == 50


def test_queued_records_are_charged_for_their_bodies_and_headers() -> None:
    """EVENT_QUEUE_BYTES charges capture's header pairs by their bytes plus what each pair holds,
    and text headers (outgoing calls) by their length."""
    cookie = b"c" * 10_000
    attrs = {
        A.MOESIF_CAPTURED: True,
        A.MOESIF_REQUEST_HEADERS: ((b"cookie", cookie), (b"host", b"h")),
        A.MOESIF_RESPONSE_HEADERS: [(b"set-cookie", cookie)],
        A.HTTP_REQUEST_BODY_CONTENT: b"abc",
        A.HTTP_RESPONSE_BODY_CONTENT: b"z" * 500,
    }
    context = SpanContext(trace_id=1, span_id=1, is_remote=False)
    record = CapturedRecord(attrs, context, SpanKind.SERVER, 1, 2)
    headers = 6 + 10_000 + 4 + 1 + 10 + 10_000 + 3 * HEADER_PAIR_OVERHEAD
    assert span_weight(record) == SPAN_OVERHEAD + 3 + 500 + headers
    attrs[A.MOESIF_REQUEST_HEADERS] = "cookie:" + cookie.decode()
    attrs[A.MOESIF_RESPONSE_HEADERS] = "set-cookie:" + cookie.decode()
    as_text = CapturedRecord(attrs, context, SpanKind.CLIENT, 1, 2)
    assert span_weight(as_text) == SPAN_OVERHEAD + 3 + 500 + 7 + 11 + 20_000


def test_a_record_is_given_back_exactly_what_it_was_charged() -> None:
    """The weight is computed once, on the request path: the exporter's thread gives back that
    number even if the record's attributes changed in between (and does not compute it again)."""
    attrs = {A.MOESIF_CAPTURED: True, A.HTTP_REQUEST_BODY_CONTENT: b"x" * 100}
    record = CapturedRecord(attrs, SpanContext(trace_id=1, span_id=1, is_remote=False), SpanKind.SERVER, 1, 2)
    charged = span_weight(record)
    assert charged == SPAN_OVERHEAD + 100
    attrs[A.HTTP_REQUEST_BODY_CONTENT] = b"x" * 5000
    assert span_weight(record) == charged

"""MoesifSpanProcessor: the only pipeline work done on the request path is a filter and an append.

Unlike the SDK's BatchSpanProcessor it keeps non-HTTP spans out of the queue, sends a batch as soon
as it is full, counts what it drops, and survives ``fork()``: the child gets a fresh queue and
thread, the parent keeps delivering what it had.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter

from moesif_otel.event import is_api_call

if TYPE_CHECKING:
    from moesif_otel.exporter import MoesifSpanExporter

logger = logging.getLogger("moesif_otel")


class MoesifSpanProcessor(SpanProcessor):
    """Queues finished API-call spans and hands them to the exporter in batches, off the request path."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int = 10_000,
        max_batch_size: int = 100,
        schedule_delay: float = 1.0,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.exporter = exporter
        self.max_queue_size = max_queue_size
        self.max_batch_size = max_batch_size
        self.schedule_delay = schedule_delay
        self.shutdown_timeout = shutdown_timeout
        self._shutdown = False
        self._init_state()
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._init_state)
            os.register_at_fork(after_in_child=lambda: (m := ref()) and m())

    @classmethod
    def for_exporter(cls, exporter: MoesifSpanExporter) -> MoesifSpanProcessor:
        """Queue, batch and timing bounds from the exporter's settings, as MoesifMiddleware uses them."""
        settings = exporter.settings
        return cls(
            exporter,
            max_queue_size=settings.event_queue_size,
            max_batch_size=settings.batch_size,
            schedule_delay=settings.event_batch_timeout,
            shutdown_timeout=settings.shutdown_timeout,
        )

    def _init_state(self) -> None:
        """Fresh queue, lock, worker and counters: at construction and in a forked child, whose stats
        then describe its own events, like its delivery's (the parent counts the parent's)."""
        self._taken = 0  # spans handed to the exporter so far
        self.dropped_queue_full = 0
        self._queue: deque[ReadableSpan] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._exporting = 0
        self._worker: threading.Thread | None = None
        self._idle = False  # the worker is (about to be) waiting for a full batch or its timer

    # -- request path -----------------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if self._shutdown or not is_api_call(span):
            return
        if len(self._queue) >= self.max_queue_size:
            with self._cond:  # spans end on any thread; a bare += could lose a drop
                self.dropped_queue_full += 1
                dropped = self.dropped_queue_full
            if dropped == 1 or dropped % 1000 == 0:
                logger.warning(
                    "moesif_otel: event queue full (EVENT_QUEUE_SIZE=%d); %d events dropped so far",
                    self.max_queue_size,
                    dropped,
                )
            return
        self._queue.append(span)  # thread-safe; what was queued is counted from it (``queued``)
        if self._worker is None:
            self._start_worker()
        if self._idle and len(self._queue) >= self.max_batch_size:
            # Only a waiting worker needs waking: taking the lock for every span while it
            # exports made threads that end spans queue up on it (and on the GIL).
            with self._cond:
                self._cond.notify()

    def _start_worker(self) -> None:
        with self._cond:
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="moesif-otel-processor", daemon=True)
                self._worker.start()

    # -- worker -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                # idle is set before the queue is looked at: a span appended after the look sees
                # it and notifies; one appended before it is seen by the look
                self._idle = True
                if not self._shutdown and len(self._queue) < self.max_batch_size:
                    self._cond.wait(self.schedule_delay)
                self._idle = False
                if self._shutdown and not self._queue:
                    return
                # Woken by a full batch: send full batches only, and leave the stragglers for the
                # next one (or for the timer). Draining them too made a busy app send every
                # full batch followed by a small one, twice the uploads for the same events.
                full_only = not self._shutdown and len(self._queue) >= self.max_batch_size
            self._drain(full_only=full_only)

    def _take(self) -> list[ReadableSpan]:
        """Up to a batch from the queue; the caller holds ``_cond``."""
        batch: list[ReadableSpan] = []
        queue = self._queue
        while queue and len(batch) < self.max_batch_size:
            batch.append(queue.popleft())
        self._taken += len(batch)
        return batch

    def _drain(self, deadline: float | None = None, *, full_only: bool = False) -> bool:
        """Export everything queued (or only full batches), until the deadline. True when the
        queue was emptied."""
        while True:
            with self._cond:
                if full_only and len(self._queue) < self.max_batch_size:
                    return not self._queue
                batch = self._take()
                if not batch:
                    return True
                self._exporting += 1
            try:
                self.exporter.export(batch)
            except Exception:
                logger.exception("moesif_otel: exporting %d events failed", len(batch))
            finally:
                with self._cond:
                    self._exporting -= 1
                    self._cond.notify_all()
            if deadline is not None and time.monotonic() >= deadline:
                return not self._queue

    # -- lifecycle --------------------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        emptied = self._drain(deadline)
        with self._cond:  # wait for a batch the worker is exporting right now
            while self._exporting and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
        # the SDK's base SpanExporter.force_flush returns None: only False means not delivered
        delivered = self.exporter.force_flush(remaining_ms) is not False
        return emptied and delivered and not self._exporting

    def shutdown(self) -> None:
        """Deliver what is queued and stop, within SHUTDOWN_TIMEOUT in all (not once per stage)."""
        if self._shutdown:
            return
        deadline = time.monotonic() + self.shutdown_timeout
        self.force_flush(int(self.shutdown_timeout * 1000))
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if "timeout_millis" in inspect.signature(self.exporter.shutdown).parameters:
            self.exporter.shutdown(timeout_millis=remaining_ms)
        else:
            self.exporter.shutdown()

    @property
    def queued(self) -> int:
        """Spans accepted into the queue so far (exported or still waiting)."""
        with self._cond:
            return self._taken + len(self._queue)

    def stats(self) -> dict[str, int]:
        return {"spans_queued": self.queued, "dropped_queue_full": self.dropped_queue_full}

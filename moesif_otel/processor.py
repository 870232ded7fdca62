"""MoesifSpanProcessor: the only pipeline work done on the request path is a filter and an append.

Unlike the SDK's BatchSpanProcessor it keeps non-HTTP spans out of the queue, sends a batch as soon
as it is full, bounds its queue in events and in bytes (EVENT_QUEUE_BYTES, shared with the delivery
backlog), counts what it drops, and survives ``fork()``: the child gets a fresh queue and thread,
the parent keeps delivering what it had. Its worker sleeps while the queue is empty (the batch
timer starts with the first span) and exits after an idle period; flush and shutdown wake it and
wait, bounded by the pipeline's shutdown clock, instead of converting on the caller's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter

from moesif_otel.delivery import ByteBudget, ShutdownClock
from moesif_otel.event import is_api_call
from moesif_otel.exporter import MoesifSpanExporter, log_shutdown_summary, span_weight
from moesif_otel.forks import reinit_after_fork

logger = logging.getLogger("moesif_otel")


class MoesifSpanProcessor(SpanProcessor):
    """Queues finished API-call spans and hands them to the exporter in batches, off the request path."""

    # Seconds an idle worker waits for a span before it exits: an app built per test leaves no
    # thread behind for long, and restarting one costs ~0.1 ms at most once per idle period.
    idle_exit = 2.0

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int = 10_000,
        max_batch_size: int = 100,
        schedule_delay: float = 1.0,
        shutdown_timeout: float = 5.0,
        budget: ByteBudget | None = None,
        clock: ShutdownClock | None = None,
    ) -> None:
        self.exporter = exporter
        self.max_queue_size = max_queue_size
        self.max_batch_size = max_batch_size
        self.schedule_delay = schedule_delay
        self.shutdown_timeout = shutdown_timeout
        moesif = exporter if isinstance(exporter, MoesifSpanExporter) else None
        # EVENT_QUEUE_BYTES: this queue's bytes count against the budget of a Moesif exporter's
        # delivery, so that queue and backlog are bounded together
        self.budget = budget if budget is not None else (moesif.uplink.budget if moesif else None)
        self._charged = moesif is not None and self.budget is not None
        self.clock = clock or (moesif.clock if moesif else ShutdownClock(shutdown_timeout))
        self._shutdown = False
        self._init_state()
        reinit_after_fork(self._init_state)

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
        self._added = 0  # bytes of spans queued so far (EVENT_QUEUE_BYTES)
        self._released = 0  # of those, bytes given back (converted, or dropped at shutdown)
        self._done = 0  # of those, spans whose export returned
        self.dropped_queue_full = 0
        self.dropped_shutdown = 0  # still queued at the shutdown deadline
        self._queue: deque[ReadableSpan] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._exporting = 0
        self._flushing = 0  # flush/shutdown calls waiting: the worker drains everything, now
        self._worker: threading.Thread | None = None
        self._idle = False  # the worker is (about to be) waiting for a full batch or its timer
        self._sleeping = False  # the worker is waiting for a first span (no timer runs)
        self.wakeups = 0  # times the worker woke from a wait (an idle pipeline must not wake)

    # -- request path -----------------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if self._shutdown or not is_api_call(span):
            return
        if len(self._queue) >= self.max_queue_size:
            self._drop(f"EVENT_QUEUE_SIZE={self.max_queue_size} events")
            return
        budget = self.budget
        if budget is not None:
            # No lock (one costs more than the rest of on_end): _added is written here only, on
            # the threads that end spans (the event loop's, for server spans), _released by the
            # worker only; the delivery's share (budget.used) is read as it stands.
            weight = span_weight(span)
            if self._added - self._released + budget.used + weight > budget.capacity:
                self._drop(f"EVENT_QUEUE_BYTES={budget.limit} bytes, queued events and pending uploads")
                return
            self._added += weight
        self._queue.append(span)  # thread-safe; what was queued is counted from it (``queued``)
        if self._worker is None:
            self._start_worker()
        elif self._sleeping or (self._idle and len(self._queue) >= self.max_batch_size):
            # Only a waiting worker needs waking: taking the lock for every span while it
            # exports made threads that end spans queue up on it (and on the GIL).
            with self._cond:
                self._cond.notify()

    def _drop(self, bound: str) -> None:
        with self._cond:  # spans end on any thread; a bare += could lose a drop
            self.dropped_queue_full += 1
            dropped = self.dropped_queue_full
        if dropped == 1 or dropped % 1000 == 0:
            logger.warning(
                "moesif_otel: event queue full (%s); %d events dropped so far (dropped_queue_full)",
                bound,
                dropped,
            )

    def _start_worker(self) -> bool:
        """Start the worker unless it runs; False when no thread can be started (interpreter exit)."""
        with self._cond:
            if self._worker is None:
                worker = threading.Thread(target=self._run, name="moesif-otel-processor", daemon=True)
                try:
                    worker.start()
                except RuntimeError:  # Python 3.12+ at exit: no new threads
                    return False
                self._worker = worker
            return True

    # -- worker -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                # idle is set before the queue is looked at: a span appended after the look sees
                # it and notifies; one appended before it is seen by the look
                self._idle = True
                if not self._queue and not self._shutdown and not self._flushing:
                    self._sleeping = True  # no timer while empty: it starts with the first span
                    woken = self._cond.wait(self.idle_exit)
                    self._sleeping = False
                    self.wakeups += 1
                    if not woken and not self._queue and not self._shutdown and not self._flushing:
                        self._idle = False
                        self._worker = None  # idle: exit; the next span starts a worker again
                        break
                if not self._shutdown and not self._flushing and 0 < len(self._queue) < self.max_batch_size:
                    self._cond.wait(self.schedule_delay)
                    self.wakeups += 1
                self._idle = False
                if self._shutdown and not self._queue:
                    return
                # Woken by a full batch: send full batches only, and leave the stragglers for the
                # next one (or for the timer). Draining them too made a busy app send every
                # full batch followed by a small one, twice the uploads for the same events.
                full_only = (
                    not self._shutdown and not self._flushing and len(self._queue) >= self.max_batch_size
                )
            self._drain(full_only=full_only)
        if self._queue and not self._shutdown:  # a span appended while this worker was leaving
            self._start_worker()

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
                count = len(batch)
                self._exporting += 1
            try:
                if self._charged:
                    self.exporter.export(batch, release=self._release)  # type: ignore[call-arg]
                else:
                    self.exporter.export(batch)
            except Exception:
                logger.exception("moesif_otel: exporting %d events failed", count)
            finally:
                with self._cond:
                    self._exporting -= 1
                    self._done += count
                    self._cond.notify_all()
            if deadline is not None and time.monotonic() >= deadline:
                return not self._queue

    # -- lifecycle --------------------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wake the worker to export everything queued and wait for it, within the timeout. Only
        where no worker can run (interpreter exit) does the caller's thread convert, bounded by
        the deadline between batches (and by the shutdown clock between events)."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._cond:
            target = self._taken + len(self._queue)
            self._flushing += 1
            self._cond.notify_all()
        try:
            if self._queue and not self._start_worker():
                self._drain(deadline)
            with self._cond:
                while self._done < target and (remaining := deadline - time.monotonic()) > 0:
                    self._cond.wait(remaining)
                emptied = self._done >= target
        finally:
            with self._cond:
                self._flushing -= 1
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
        # the SDK's base SpanExporter.force_flush returns None: only False means not delivered
        delivered = self.exporter.force_flush(remaining_ms) is not False
        return emptied and delivered

    def shutdown(self) -> None:
        """Deliver what is queued and stop, within what is left of the shutdown clock (SHUTDOWN_TIMEOUT
        from the first shutdown stage, not once per stage). What is still queued or converting at
        the deadline is counted as dropped_shutdown, and the loss summarised in one WARNING."""
        if self._shutdown:
            return
        self.clock.start()
        if isinstance(self.exporter, MoesifSpanExporter):
            self.exporter.begin_shutdown()
        self.force_flush(int(self.clock.remaining() * 1000))
        with self._cond:
            self._shutdown = True
            leftover = list(self._queue)
            self._queue.clear()
            self.dropped_shutdown += len(leftover)
            exporting = self._exporting
            self._cond.notify_all()
        if leftover:
            if self._charged:
                self._release(sum(span_weight(span) for span in leftover))
            logger.warning(
                "moesif_otel: %d events still queued at the shutdown deadline (SHUTDOWN_TIMEOUT=%s); "
                "counted as dropped_shutdown",
                len(leftover),
                self.shutdown_timeout,
            )
        exporter = self.exporter
        remaining_ms = int(self.clock.remaining() * 1000)
        if isinstance(exporter, MoesifSpanExporter):
            if exporting:
                exporter.abandon_conversions()
            exporter.shutdown(timeout_millis=remaining_ms, summary=False)
            log_shutdown_summary(merge_stats(self, exporter.stats()))
        else:
            exporter.shutdown()

    def _release(self, size: int) -> None:
        self._released += size

    @property
    def queue_bytes(self) -> int:
        """Bytes held by queued spans and, with a Moesif exporter, its pending uploads."""
        if self.budget is None:
            return 0
        return self._added - self._released + self.budget.used

    @property
    def queued(self) -> int:
        """Spans accepted into the queue so far (exported, dropped at shutdown or still waiting)."""
        with self._cond:
            return self._taken + len(self._queue) + self.dropped_shutdown

    def stats(self) -> dict[str, int]:
        with self._cond:
            queued = self._taken + len(self._queue) + self.dropped_shutdown
            pending = len(self._queue) + self._taken - self._done
            return {
                "spans_queued": queued,
                "dropped_queue_full": self.dropped_queue_full,
                "dropped_shutdown": self.dropped_shutdown,
                "captured": queued + self.dropped_queue_full,
                "pending": pending,
                "queue_bytes": self.queue_bytes,
            }


def merge_stats(processor: MoesifSpanProcessor, exporter_stats: dict[str, int]) -> dict[str, int]:
    """One pipeline's counters: ``captured == sent + sum(dropped_*) + sampled_out_outgoing + pending``.

    Both the span queue and the delivery backlog drop when full or at shutdown: an event dropped by
    either is one lost event, so those counts add up. Spans the exporter received are its own to
    count (``captured`` there); the processor's pending is what it has not handed over yet.
    """
    with processor._cond:
        queued_spans = len(processor._queue)
        handed_not_received = max(0, processor._taken - exporter_stats.get("captured", 0))
    processor_stats = processor.stats()
    merged = {**processor_stats, **exporter_stats}
    for key in ("dropped_queue_full", "dropped_shutdown"):
        merged[key] = processor_stats.get(key, 0) + exporter_stats.get(key, 0)
    merged["captured"] = processor_stats["captured"]
    merged["pending"] = queued_spans + handed_not_received + exporter_stats.get("pending", 0)
    merged["queue_bytes"] = processor_stats["queue_bytes"]
    return merged

"""Bounded background delivery of payloads to the collector, with retries.

The exporter hands over ready-to-send payloads and must never wait for the network: ``submit``
only appends to a bounded backlog. Worker threads (each with its own kept-alive connection, so
uploads overlap when the collector is slow) send them, retry transient failures with jittered
exponential backoff (``Retry-After`` wins, and pauses every worker since it describes the server,
not the batch), and count every event that a bound forces us to drop, by cause.

A batch waiting for its backoff sits in a heap, not in a worker, so a retry never ties up a
thread. Threads start on the first submit, sleep (no timer) while there is nothing to send, exit
after IDLE_EXIT of that, and are re-created after ``os.fork()`` in the child, which starts with an
empty backlog (the parent keeps delivering its own).

One Delivery serves every exporter of a process with the same collector and delivery settings
(:func:`shared_delivery`); each submitter's counts are kept in its own :data:`Tally`. Payloads count
against a :class:`ByteBudget` (EVENT_QUEUE_BYTES) that the span queue shares.
"""

from __future__ import annotations

import contextlib
import email.utils
import heapq
import itertools
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import timezone
from typing import Literal

from moesif_otel.forks import reinit_after_fork
from moesif_otel.logonce import LogOnce
from moesif_otel.transport import HttpTransport, Response, TransportError
from moesif_otel.types import PayloadOutcome

__all__ = [
    "ByteBudget",
    "Delivery",
    "OnDone",
    "ShutdownClock",
    "Tally",
    "new_tally",
    "parse_retry_after",
    "shared_delivery",
]

_log = logging.getLogger("moesif_otel.delivery")

_STATS_LOG_INTERVAL = 60.0  # seconds between DEBUG stats lines
IDLE_EXIT = 30.0  # seconds a worker with nothing to send waits before it exits (and closes its socket)
_BODY_IN_LOG = 300  # characters of a collector's error answer worth showing

_COUNTERS = (
    "queued",
    "sent",
    "batches_sent",
    "retried",
    "in_flight",
    "dropped_queue_full",
    "dropped_rejected",
    "dropped_retry_exhausted",
    "dropped_shutdown",
)

Tally = dict[str, int]
"""Per-submitter counters (the keys of ``Delivery.stats()`` minus ``pending_batches``): a delivery
shared by several exporters updates each submitter's own tally next to its totals."""


def new_tally() -> Tally:
    return dict.fromkeys(_COUNTERS, 0)


class ByteBudget:
    """Bytes held by events waiting for conversion or upload (EVENT_QUEUE_BYTES), one budget shared
    by the span queue and the delivery backlog, so that memory is bounded in bytes, not only in
    events: a 120 KB body weighs 1,000 small ones."""

    # What is counted is what the events' Python objects hold. Under a collector outage the process
    # grew by half as much again (the allocator keeps freed bodies' memory in pieces it cannot hand
    # back or reuse for the payloads that replace them): a quarter of the limit is kept for that, so
    # that peak RSS growth stays within EVENT_QUEUE_BYTES + 32 MiB (64 MiB: +80-84 MiB, was +92-114).
    ALLOCATOR_SHARE = 0.25

    def __init__(self, limit: int) -> None:
        self.limit = limit  # EVENT_QUEUE_BYTES, as the user set it (and as logs name it)
        self.capacity = int(limit * (1 - self.ALLOCATOR_SHARE))  # what counted bytes may reach
        self._reset()
        reinit_after_fork(self._reset)

    def _reset(self) -> None:
        self.used = 0  # a forked child holds none of the parent's queues
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when that would exceed the limit."""
        with self._lock:
            if self.used + size > self.capacity:
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.used -= size


class ShutdownClock:
    """One shutdown deadline per pipeline, shared by every stage that runs at shutdown.

    The lifespan flush, atexit, the provider's shutdown and the SIGTERM hook each used to allow a
    full SHUTDOWN_TIMEOUT, so a process with a hung collector took twice (or more) that long to
    exit. The first stage starts the clock; later ones get only what is left. A new lifespan
    startup (a TestClient entered again) resets it.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline: float | None = None

    def start(self) -> float:
        """The deadline, starting the clock if no stage has yet."""
        if self.deadline is None:
            self.deadline = time.monotonic() + max(0.0, self.timeout)
        return self.deadline

    def remaining(self) -> float:
        return max(0.0, self.start() - time.monotonic())

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def reset(self) -> None:
        self.deadline = None


OnDone = Callable[[PayloadOutcome, Response | None], None]
"""``on_done(outcome, response)``: called once per submit with the final outcome, one of "sent",
"rejected", "retry_exhausted", "queue_full", "shutdown" (or "error"), and the collector's last
answer (None when there was none). Runs on a worker thread (on the submitting thread when the
payload is refused at the door), so it must be quick and must not block."""

_REJECT_REASONS = {
    400: "the collector rejected the batch",
    401: "the application id is wrong",
    402: "the Moesif subscription is inactive",
    403: "the application id is not allowed to send events",
    404: "the collector URL (BASE_URI) is wrong",
    413: "the payload is too large",
}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait according to a ``Retry-After`` value (delay-seconds or HTTP-date).

    ``now`` is a wall-clock timestamp (defaults to ``time.time()``), used for HTTP-dates.
    None when absent or unparsable; a date in the past means 0.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _retryable(status: int) -> bool:
    return status in (408, 429) or 500 <= status <= 599


def _body_excerpt(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    if len(text) > _BODY_IN_LOG:
        return f"{text[:_BODY_IN_LOG]}... ({len(body)} bytes)"
    return text or "(empty body)"


@dataclass(eq=False)
class _Batch:
    path: str
    payload: bytes
    count: int
    headers: dict[str, str] | None
    first_attempt: float | None = None
    attempts: int = 0
    abandoned: bool = False  # counted as dropped by shutdown while a worker still held it
    on_done: OnDone | None = None
    done: bool = False  # on_done already called (guarded by Delivery._lock)
    tally: Tally | None = None  # the submitter's own counters
    weight: int = 0  # bytes reserved in the budget until the batch's final outcome


class Delivery:
    """Sends submitted payloads from background threads; bounded in memory and in time."""

    def __init__(
        self,
        transport_factory: Callable[[], HttpTransport],
        *,
        max_pending: int = 1000,
        workers: int = 2,
        max_retry_seconds: float = 300.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        on_response: Callable[[Response], None] | None = None,
        name: str = "moesif",
        budget: ByteBudget | None = None,
        idle_exit: float = IDLE_EXIT,
    ) -> None:
        if max_pending < 1 or workers < 1:
            raise ValueError("max_pending and workers must be at least 1")
        self._factory = transport_factory
        self._max_pending = max_pending
        self._workers = workers
        self._max_retry_seconds = max_retry_seconds
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._on_response = on_response
        self._name = name
        self.budget = budget
        self._idle_exit = idle_exit
        self._users = 0  # exporters sharing it (shared_delivery); the last one shuts it down
        self._key: tuple[Hashable, ...] | None = None
        self._closed = False  # no more submits
        self._stopped = False  # workers exit; nothing left to deliver
        self._reset_state()
        reinit_after_fork(self._reset_state)

    def _reset_state(self) -> None:
        """Fresh locks, backlog, counters and no threads: at init and in a forked child, whose copies
        of the parent's locks may be held by threads that don't exist there."""
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # workers wait here for something to send
        self._idle = threading.Condition(self._lock)  # flush waits here for the backlog to drain
        self._ready: deque[_Batch] = deque()
        self._waiting: list[tuple[float, int, _Batch]] = []  # (not_before, seq, batch) heap
        self._in_flight: set[_Batch] = set()
        self._seq = itertools.count()
        self._gate_until = 0.0  # Retry-After: nobody sends before this (monotonic)
        self._threads: list[threading.Thread] = []
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._untallied = dict.fromkeys(_COUNTERS, 0)  # what was submitted without a tally
        self._warnings = LogOnce(_log)
        self._last_stats_log = time.monotonic()
        self._claimed_on_drop: list[_Batch] = []

    # -- public API ----------------------------------------------------------------------------

    def submit(
        self,
        path: str,
        payload: bytes,
        *,
        count: int,
        headers: Mapping[str, str] | None = None,
        on_done: OnDone | None = None,
        tally: Tally | None = None,
    ) -> bool:
        """Queue one payload of ``count`` events; never blocks, never raises. False when dropped.

        ``on_done`` (see :data:`OnDone`) lets a caller learn the outcome of this one payload; it is
        called exactly once, also when the payload is refused (before ``submit`` returns False).
        ``tally`` (see :func:`new_tally`) gets this payload's counts next to the delivery's totals.
        """
        cause: PayloadOutcome | Literal["bytes_full", ""] = "error"
        budget = self.budget
        try:
            batch = _Batch(
                path, payload, count, dict(headers) if headers else None, on_done=on_done, tally=tally
            )
            start_error: BaseException | None = None
            with self._lock:
                if self._closed:
                    cause = "shutdown"
                elif self._pending() >= self._max_pending:
                    cause = "queue_full"
                elif budget is not None and not budget.take(len(payload)):
                    cause = "bytes_full"
                else:
                    batch.weight = len(payload) if budget is not None else 0
                    self._ready.append(batch)
                    self._count(tally, "queued", count)
                    self._count(tally, "in_flight", count)
                    start_error = self._ensure_started()
                    self._work.notify()
                    cause = ""
                if cause:
                    self._count(
                        tally, "dropped_shutdown" if cause == "shutdown" else "dropped_queue_full", count
                    )
        except Exception as exc:
            self._warnings.warning("submit", "Moesif delivery could not queue a payload: %r", exc)
            self._call_on_done(on_done, "queue_full" if cause == "bytes_full" else cause or "error", None)
            return False
        if cause:
            self._call_on_done(on_done, "queue_full" if cause == "bytes_full" else cause, None)
        if start_error is not None:
            self._warnings.warning("start", "Moesif delivery could not start its threads: %r", start_error)
        if cause == "queue_full":
            self._warnings.warning(
                cause,
                "Moesif delivery backlog is full (%d batches pending); new events are dropped "
                "(counted as dropped_queue_full)",
                self._max_pending,
            )
        elif cause == "bytes_full":
            assert budget is not None
            self._warnings.warning(
                cause,
                "Moesif event queue is full (EVENT_QUEUE_BYTES=%d bytes held by queued events and "
                "pending uploads); new events are dropped (counted as dropped_queue_full)",
                budget.limit,
            )
        elif cause == "shutdown":
            self._warnings.warning(
                "submit_after_shutdown",
                "Moesif delivery is shut down; events submitted now are dropped "
                "(counted as dropped_shutdown)",
            )
        return not cause

    def flush(self, timeout: float, tally: Tally | None = None) -> bool:
        """Wait until every submitted payload (or every one counted in ``tally``) is sent or dropped;
        False if ``timeout`` ran out first.

        Don't call it from ``on_response``: the batch being answered is still pending.
        """
        deadline = time.monotonic() + max(0.0, timeout)

        def pending() -> int:
            # a submitter's own payloads, and those nobody tallies (profile updates on a shared delivery)
            return tally["in_flight"] + self._untallied["in_flight"] if tally is not None else self._pending()

        with self._lock:
            if self._pending() and not self._stopped:
                self._ensure_started()  # idle workers exit; a retry due later needs one back
            no_workers = not any(thread.is_alive() for thread in self._threads)
        if no_workers:
            self._deliver_here(deadline)
        with self._lock:
            while pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True

    def _deliver_here(self, deadline: float) -> None:
        """Deliver on the calling thread, until the deadline: no worker could be started.

        At interpreter exit Python 3.12+ refuses new threads, so events queued since the last
        upload (a long EVENT_BATCH_TIMEOUT) would otherwise wait for workers that never come.
        """
        transport: HttpTransport | None = None
        try:
            while True:
                with self._lock:
                    now = time.monotonic()
                    if self._stopped or now >= deadline or not self._pending():
                        return
                    batch: _Batch | None = None
                    if now >= self._gate_until:
                        if self._waiting and self._waiting[0][0] <= now:
                            batch = heapq.heappop(self._waiting)[2]
                        elif self._ready:
                            batch = self._ready.popleft()
                    if batch is None:
                        due = self._waiting[0][0] if self._waiting else now + 0.05
                        self._work.wait(max(0.0, min(max(due, self._gate_until), deadline) - now))
                        continue
                    self._in_flight.add(batch)
                transport = self._deliver(batch, transport)
        finally:
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.close()

    def shutdown(self, timeout: float) -> bool:
        """Flush within ``timeout``, then stop the workers. What is still pending at the deadline
        (queued, waiting for a retry, or stuck in a request) is counted as dropped ("shutdown").
        Idempotent; safe from any thread and from atexit. True when nothing had to be dropped."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            self._closed = True
        self.flush(deadline - time.monotonic())
        with self._lock:
            if not self._stopped:
                self._stopped = True
                dropped = self._drop_pending(None)
                self._work.notify_all()
            else:
                dropped = 0
            current = threading.current_thread()
            threads = [t for t in self._threads if t is not current]
        self._report_dropped(dropped)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        _log.debug("Moesif delivery stopped: %s", self.stats())
        return dropped == 0

    def release(self, timeout: float, tally: Tally | None = None) -> None:
        """A user of a :func:`shared_delivery` is done: the last one shuts it down (within
        ``timeout``); an earlier one waits for its own payloads (``tally``) and drops the rest."""
        with _shared_lock:
            self._users -= 1
            last = self._users <= 0
            if last and self._key is not None and _shared.get(self._key) is self:
                del _shared[self._key]
        if last:
            self.shutdown(timeout)
        elif tally is not None:
            self.flush(timeout, tally)
            self.abandon(tally)

    def abandon(self, tally: Tally) -> int:
        """Count what ``tally``'s submitter still has pending as dropped ("shutdown") and forget it:
        that submitter is shutting down while others keep using this delivery. Returns the events."""
        with self._lock:
            dropped = self._drop_pending(tally)
        self._report_dropped(dropped)
        return dropped

    def _drop_pending(self, tally: Tally | None) -> int:
        """Drop pending batches (all, or ``tally``'s), counted as "shutdown" (lock held)."""
        mine: Callable[[_Batch], bool] = (lambda b: True) if tally is None else (lambda b: b.tally is tally)
        ready = [b for b in self._ready if mine(b)]
        waiting = [entry for entry in self._waiting if mine(entry[2])]
        held = [b for b in self._in_flight if mine(b)]
        if tally is None:
            self._ready.clear()
            self._waiting.clear()
        else:
            self._ready = deque(b for b in self._ready if not mine(b))
            self._waiting = [entry for entry in self._waiting if not mine(entry[2])]
            heapq.heapify(self._waiting)
        dropped = 0
        claimed: list[_Batch] = []
        for batch in [*ready, *(entry[2] for entry in waiting), *held]:
            batch.abandoned = True
            dropped += batch.count
            self._count(batch.tally, "dropped_shutdown", batch.count)
            self._count(batch.tally, "in_flight", -batch.count)
            if batch not in self._in_flight:
                self._give(batch)  # a worker still holds the others: given back when it lets go
            if self._claim(batch):
                claimed.append(batch)
        self._in_flight.difference_update(held)
        self._idle.notify_all()
        self._claimed_on_drop = claimed
        return dropped

    def _report_dropped(self, dropped: int) -> None:
        with self._lock:
            claimed, self._claimed_on_drop = self._claimed_on_drop, []
        for batch in claimed:
            self._call_on_done(batch.on_done, "shutdown", None)
        if dropped:
            self._warnings.warning(
                "shutdown",
                "Moesif delivery: %d events could not be delivered before the shutdown timeout "
                "(counted as dropped_shutdown)",
                dropped,
            )

    def _count(self, tally: Tally | None, key: str, n: int) -> None:
        """Totals and the submitter's own tally (lock held)."""
        self._counters[key] += n
        (self._untallied if tally is None else tally)[key] += n

    def _give(self, batch: _Batch) -> None:
        if batch.weight and self.budget is not None:
            self.budget.give(batch.weight)
        batch.weight = 0

    def stats(self, tally: Tally | None = None) -> dict[str, int]:
        """Counters in events (``pending_batches`` in batches), in all or ``tally``'s own. Events
        refused at the door (``dropped_queue_full``, submits after shutdown) are not part of ``queued``."""
        with self._lock:
            if tally is None:
                out = dict(self._counters)
                out["pending_batches"] = self._pending()
            else:
                out = dict(tally)
                batches = [*self._ready, *(entry[2] for entry in self._waiting), *self._in_flight]
                out["pending_batches"] = sum(1 for batch in batches if batch.tally is tally)
        return out

    # -- worker side ---------------------------------------------------------------------------

    def _pending(self) -> int:
        return len(self._ready) + len(self._waiting) + len(self._in_flight)

    def _ensure_started(self) -> BaseException | None:
        """Start the workers on first use, and again after idle ones exited (called with the lock held)."""
        if len(self._threads) >= self._workers:
            return None
        running = {thread.name for thread in self._threads}
        for index in range(self._workers):
            if f"{self._name}-delivery-{index}" in running:
                continue
            thread = threading.Thread(target=self._run, name=f"{self._name}-delivery-{index}", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # e.g. interpreter shutting down
                return exc
            self._threads.append(thread)
        return None

    def _run(self) -> None:
        transport: HttpTransport | None = None
        try:
            while (batch := self._next_batch()) is not None:
                transport = self._deliver(batch, transport)
        finally:
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.close()

    def _next_batch(self) -> _Batch | None:
        with self._lock:
            while not self._stopped:
                now = time.monotonic()
                if now < self._gate_until:
                    timeout: float | None = self._gate_until - now
                else:
                    batch: _Batch | None = None
                    if self._waiting and self._waiting[0][0] <= now:
                        batch = heapq.heappop(self._waiting)[2]  # due retries first: they are older
                    elif self._ready:
                        batch = self._ready.popleft()
                    if batch is not None:
                        self._in_flight.add(batch)
                        return batch
                    timeout = self._waiting[0][0] - now if self._waiting else None
                if timeout is None:
                    # Nothing to send: sleep until a submit (no periodic wake); after IDLE_EXIT
                    # of that, exit and close the connection (a submit starts a worker again).
                    if not self._work.wait(self._idle_exit) and not self._ready and not self._waiting:
                        self._threads.remove(threading.current_thread())
                        return None
                    continue
                self._work.wait(timeout)
            return None

    def _deliver(self, batch: _Batch, transport: HttpTransport | None) -> HttpTransport | None:
        """One attempt; returns the transport to use next time (None to build a new one)."""
        if batch.first_attempt is None:
            batch.first_attempt = time.monotonic()
        batch.attempts += 1
        response: Response | None = None
        failure = ""
        try:
            if transport is None:
                transport = self._factory()
            response = transport.request("POST", batch.path, batch.payload, batch.headers)
        except TransportError as exc:
            failure = exc.cause
            self._warnings.warning(
                f"transport:{exc.cause}",
                "Cannot reach the Moesif collector (%s: %s); retrying with backoff",
                exc.cause,
                exc,
            )
        except Exception as exc:
            failure = "error"  # not a network problem: retrying would fail the same way
            self._warnings.warning(
                "unexpected",
                "Moesif delivery could not send a batch: %r; such batches are dropped "
                "(counted as dropped_rejected)",
                exc,
            )
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.close()
            transport = None
        if response is not None and self._on_response is not None:
            try:
                self._on_response(response)
            except Exception as exc:
                self._warnings.warning("on_response", "Moesif on_response callback raised %r (ignored)", exc)
        self._resolve(batch, response, failure)
        return transport

    def _resolve(self, batch: _Batch, response: Response | None, failure: str) -> None:
        status = response.status if response is not None else 0
        retry_after = None
        now = delay = 0.0
        outcome: Literal["sent", "rejected", "retry", "exhausted"]
        if response is not None and 200 <= status <= 299:
            outcome = "sent"
        elif failure == "error":
            outcome = "rejected"
        elif response is None or _retryable(status):
            outcome = "retry"
            if response is not None:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            now = time.monotonic()
            if retry_after is not None:
                delay = min(retry_after, self._max_retry_seconds)
            else:
                delay = self._backoff(batch.attempts)
            assert batch.first_attempt is not None
            if now + delay > batch.first_attempt + self._max_retry_seconds:
                outcome = "exhausted"
        else:
            outcome = "rejected"
        # Log before the outcome becomes visible: a process that exits right after flush() must
        # still get the one warning that says why its events were dropped.
        self._log_outcome(batch, outcome, status, failure, response)
        self._maybe_log_stats()
        if outcome != "retry" and batch.on_done is not None:
            # Before the batch stops being pending, so that flush() returning implies on_done ran.
            with self._lock:
                claimed = self._claim(batch)
            if claimed:
                final = "retry_exhausted" if outcome == "exhausted" else outcome
                self._call_on_done(batch.on_done, final, response)
        count, tally = batch.count, batch.tally
        with self._lock:
            self._in_flight.discard(batch)
            if retry_after is not None:
                self._gate_until = max(self._gate_until, now + delay)
            if batch.abandoned:
                self._give(batch)
                # Already counted as dropped by shutdown; a late success is still a success.
                if outcome == "sent":
                    self._count(tally, "dropped_shutdown", -count)
                    self._count(tally, "sent", count)
                    self._count(tally, "batches_sent", 1)
                return
            if outcome == "retry":
                heapq.heappush(self._waiting, (now + delay, next(self._seq), batch))
                self._count(tally, "retried", count)
                self._work.notify_all()
                return
            self._give(batch)
            if outcome == "sent":
                self._count(tally, "sent", count)
                self._count(tally, "batches_sent", 1)
            elif outcome == "rejected":
                self._count(tally, "dropped_rejected", count)
            else:
                self._count(tally, "dropped_retry_exhausted", count)
            self._count(tally, "in_flight", -count)
            self._idle.notify_all()

    def _claim(self, batch: _Batch) -> bool:
        """True once per batch with an ``on_done`` (called with the lock held)."""
        if batch.on_done is None or batch.done:
            return False
        batch.done = True
        return True

    def _call_on_done(
        self, on_done: OnDone | None, outcome: PayloadOutcome, response: Response | None
    ) -> None:
        if on_done is None:
            return
        try:
            on_done(outcome, response)
        except Exception as exc:
            self._warnings.warning("on_done", "Moesif on_done callback raised %r (ignored)", exc)

    def _backoff(self, attempts: int) -> float:
        """Exponential with "equal jitter": spreads workers and processes, keeps a floor."""
        base = min(self._backoff_max, self._backoff_initial * 2.0 ** min(attempts - 1, 62))
        return random.uniform(base / 2, base)

    # -- logging -------------------------------------------------------------------------------

    def _log_outcome(
        self, batch: _Batch, outcome: str, status: int, failure: str, response: Response | None
    ) -> None:
        what = f"HTTP {status}" if status else failure
        _log.debug(
            "Moesif batch of %d events (%d bytes) to %s, attempt %d: %s -> %s",
            batch.count,
            len(batch.payload),
            batch.path,
            batch.attempts,
            what,
            outcome,
        )
        if outcome == "retry" and status:
            self._warnings.warning(
                f"status:{status}",
                "Moesif collector answered %d to %s; retrying with backoff",
                status,
                batch.path,
            )
        elif outcome == "rejected" and response is not None:
            reason = _REJECT_REASONS.get(status, "not retried")
            if status == 413:
                reason = f"{reason} ({len(batch.payload)} bytes)"
            self._warnings.warning(
                f"status:{status}",
                "Moesif collector answered %d to %s: %s; collector said: %s. "
                "Such batches are dropped, not retried (counted as dropped_rejected)",
                status,
                batch.path,
                reason,
                _body_excerpt(response.body),
            )
        elif outcome == "exhausted":
            self._warnings.warning(
                "retry_exhausted",
                "Moesif delivery gave up on a batch of %d events after %d attempts "
                "(max_retry_seconds=%s); counted as dropped_retry_exhausted",
                batch.count,
                batch.attempts,
                self._max_retry_seconds,
            )

    def _maybe_log_stats(self) -> None:
        if not _log.isEnabledFor(logging.DEBUG):
            return
        now = time.monotonic()
        if now - self._last_stats_log < _STATS_LOG_INTERVAL:
            return
        self._last_stats_log = now
        _log.debug("Moesif delivery stats: %s", self.stats())


_shared: dict[tuple[Hashable, ...], Delivery] = {}
_shared_lock = threading.Lock()


def shared_delivery(key: tuple[Hashable, ...], make: Callable[[], Delivery]) -> Delivery:
    """The process's Delivery for ``key`` (collector, application id and the settings that shape
    delivery), made on first use and reference-counted: an app that builds a middleware per test
    shares one set of threads and connections instead of keeping one per middleware until exit.
    Release it with :meth:`Delivery.release`."""
    with _shared_lock:
        delivery = _shared.get(key)
        if delivery is None or delivery._closed:
            delivery = _shared[key] = make()
            delivery._key = key
        delivery._users += 1
        return delivery

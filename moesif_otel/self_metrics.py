"""Self-telemetry: the delivery counters of ``stats()`` as OpenTelemetry metrics on the app's MeterProvider.

An SRE sees captured, sent, dropped (by cause), retried and pending events in the dashboards they
already have. Only on a real MeterProvider (one passed in, or an SDK one set globally, as for the
HTTP server metrics); without one nothing is created. The instruments are asynchronous: the meter
provider's reader calls ``stats()`` at collection time (every 60 s by default), so the request
path and the delivery threads do no work for them at all.

One set of instruments per MeterProvider, shared by every pipeline registered on it (the SDK keeps
the first callbacks of an instrument created twice); each pipeline's points carry
``moesif_otel.pipeline``, its registration order on that provider (0, 1, ...). A pipeline is
registered once, by its exporter: a middleware that joins the exporter ``opentelemetry-instrument``
created adds no second series. One collection reads ``stats()`` once per pipeline, so the points
of one collection satisfy ``captured == sum(events) + queue.size`` like the dict does.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from moesif_otel._version import __version__
from moesif_otel.forks import reinit_after_fork
from moesif_otel.logonce import LogOnce
from moesif_otel.server_metrics import real_meter_provider
from moesif_otel.types import EventOutcome

_log = LogOnce(logging.getLogger("moesif_otel"))

METER_NAME = "moesif_otel"
PIPELINE = "moesif_otel.pipeline"  # which pipeline (middleware, exporter) of this process
OUTCOME = "outcome"  # sent, dropped, sampled_out
ERROR_TYPE = "error.type"  # why dropped: the stats() key without "dropped_"

Stats = dict[str, int]
Reading = Callable[[Stats], Iterable[tuple[int, dict[str, Any]]]]


def _outcomes(stats: Stats) -> Iterable[tuple[int, dict[str, Any]]]:
    yield stats.get("sent", 0), _labels("sent")
    yield stats.get("sampled_out_outgoing", 0), _labels("sampled_out")
    for key in sorted(stats):
        if key.startswith("dropped_"):
            yield stats[key], _labels("dropped", key[len("dropped_") :])


def _labels(outcome: EventOutcome, cause: str | None = None) -> dict[str, Any]:
    """A point's attributes; ``cause`` is a :data:`~moesif_otel.types.DropCause` (a stats() key)."""
    return {OUTCOME: outcome} if cause is None else {OUTCOME: outcome, ERROR_TYPE: cause}


def _key(name: str) -> Reading:
    return lambda stats: ((stats.get(name, 0), {}),)


# name, observable kind, unit, description, how to read it from stats()
INSTRUMENTS: tuple[tuple[str, str, str, str, Reading], ...] = (
    (
        "moesif_otel.captured",
        "counter",
        "{event}",
        "API calls captured for Moesif; each ends sent, dropped or sampled out (moesif_otel.events) "
        "or is still pending (moesif_otel.queue.size).",
        _key("captured"),
    ),
    (
        "moesif_otel.events",
        "counter",
        "{event}",
        "Captured events at their end, by outcome: sent (accepted by the collector), dropped "
        "(error.type is the cause) or sampled_out (outgoing calls left out by the sample rate).",
        _outcomes,
    ),
    (
        "moesif_otel.retries",
        "counter",
        "{event}",
        "Events whose upload failed and was tried again (an event retried twice counts twice).",
        _key("retried"),
    ),
    (
        "moesif_otel.batches",
        "counter",
        "{batch}",
        "Batches of events the collector accepted.",
        _key("batches_sent"),
    ),
    (
        "moesif_otel.queue.size",
        "up_down_counter",
        "{event}",
        "Captured events not yet at their end: queued, converting or uploading.",
        _key("pending"),
    ),
    (
        "moesif_otel.queue.bytes",
        "up_down_counter",
        "By",
        "Bytes held by queued events, bounded by EVENT_QUEUE_BYTES.",
        _key("queue_bytes"),
    ),
)


class _Source:
    """One pipeline's stats, read once per collection and held weakly (an app's middleware may go)."""

    def __init__(self, owner: object, stats: Callable[[], Stats], index: int) -> None:
        self.owner = weakref.ref(owner)
        # the stats method, held weakly (None once its owner is gone); a plain function, strongly
        self._stats: Callable[[], Callable[[], Stats] | None] = (
            weakref.WeakMethod(stats) if hasattr(stats, "__self__") else lambda: stats
        )
        self.attributes = {PIPELINE: index}
        self._lock = threading.Lock()
        self._snapshot: Stats | None = None
        self._read: set[str] = set()

    def alive(self) -> bool:
        return self.owner() is not None and self._stats() is not None

    def snapshot(self, instrument: str) -> Stats | None:
        """The same stats() for every instrument of one collection: a new one is taken when an
        instrument comes back for a second read (the next collection, whatever the order)."""
        with self._lock:
            if self._snapshot is None or instrument in self._read:
                stats = self._stats()
                if stats is None:
                    return None
                self._snapshot = stats()
                self._read = set()
            self._read.add(instrument)
            return self._snapshot


class _Registry:
    """The instruments on one MeterProvider and the pipelines they report."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.sources: list[_Source] = []
        self.registered = 0
        self.lock = threading.Lock()
        for name, kind, unit, description, reading in INSTRUMENTS:
            create = getattr(meter, f"create_observable_{kind}")
            create(name, callbacks=[self._callback(name, reading)], unit=unit, description=description)

    def _callback(self, name: str, reading: Reading) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self.lock:
                sources = list(self.sources)
            observations = []
            for source in sources:
                try:
                    stats = source.snapshot(name)
                    if stats is None:
                        continue
                    for value, attributes in reading(stats):
                        observations.append(Observation(value, {**source.attributes, **attributes}))
                except Exception as exc:  # a collection must not fail because of one pipeline
                    _failed("reading stats()", exc)
            return observations

        return observe

    def add(self, owner: object, stats: Callable[[], Stats]) -> _Source:
        with self.lock:
            self.sources = [s for s in self.sources if s.alive()]
            for source in self.sources:
                if source.owner() is owner:
                    return source
            source = _Source(owner, stats, self.registered)
            self.registered += 1
            self.sources.append(source)
            return source


_registries: weakref.WeakKeyDictionary[Any, _Registry] = weakref.WeakKeyDictionary()
_registries_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """Fresh locks (a collection may have held one when the parent forked) and no parent snapshot:
    the child's stats() describe its own events."""
    global _registries_lock
    _registries_lock = threading.Lock()
    for registry in list(_registries.values()):
        registry.lock = threading.Lock()
        for source in registry.sources:
            source._lock = threading.Lock()
            source._snapshot = None


reinit_after_fork(_after_fork_in_child)


def register(source: Any, meter_provider: metrics.MeterProvider | None = None) -> dict[str, int] | None:
    """Report ``source.stats()`` as the ``moesif_otel.*`` metrics on ``meter_provider`` (else the
    global one if it is the SDK's). ``source`` is a MoesifMiddleware, a Pipeline or a
    MoesifSpanExporter (an existing OpenTelemetry pipeline's). Returns the pipeline's attributes on
    the points, or None when there is no real provider (nothing created) or it failed (logged once).
    Registering a pipeline twice, or two sources with the same exporter, reports it once."""
    provider = real_meter_provider(meter_provider)
    if provider is None:
        return None
    # a middleware's pipeline, a pipeline's exporter: the exporter is what one pipeline is
    owner = getattr(getattr(source, "pipeline", source), "exporter", source)
    try:
        with _registries_lock:
            registry = _registries.get(provider)
            if registry is None:
                registry = _Registry(provider.get_meter(METER_NAME, __version__))
                _registries[provider] = registry
        return dict(registry.add(owner, source.stats).attributes)
    except Exception as exc:  # the app's meter provider must not break the app
        _failed("registering its metrics", exc)
        return None


def _failed(what: str, exc: Exception) -> None:
    _log.warning(
        f"self-metrics:{what}:{type(exc).__qualname__}",
        "moesif_otel: %s on the MeterProvider failed (%s: %s); delivery is unaffected",
        what,
        type(exc).__qualname__,
        exc,
    )

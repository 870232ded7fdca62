"""MoesifSpanExporter: API-call spans → Moesif events → gzip JSON batches → the collector.

A real OTel ``SpanExporter``: it works behind :class:`~moesif_otel.MoesifSpanProcessor`, behind the
SDK's ``BatchSpanProcessor`` in an existing pipeline, and under ``opentelemetry-instrument`` with
``OTEL_TRACES_EXPORTER=moesif`` (constructed without arguments: settings come from ``MOESIF_*``).
``export`` converts on the calling (background) thread and hands payloads to its
:class:`~moesif_otel.uplink.Uplink` (the pipeline's, or one of its own when used alone), whose
delivery's workers upload, retry and overlap — so a slow collector never stalls the span pipeline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any
from urllib.parse import urlsplit

from moesifapi.models import EventModel
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from moesif_otel import attributes as A
from moesif_otel import jsoncodec
from moesif_otel.appconfig import RequestFacts, keep, weight_for
from moesif_otel.delivery import Delivery, ShutdownClock
from moesif_otel.event import (
    CapturedRecord,
    EventOptions,
    event_document,
    from_event_model,
    is_api_call,
    span_attributes,
    to_event_model,
)
from moesif_otel.forks import reinit_after_fork
from moesif_otel.hooks import HookTimeout, run_awaitable
from moesif_otel.logonce import LogOnce
from moesif_otel.payload import MAX_EVENT_BYTES, MAX_PAYLOAD_BYTES, JsonArray
from moesif_otel.settings import Settings
from moesif_otel.transport import USER_AGENT
from moesif_otel.uplink import Uplink

__all__ = [
    "EVENTS_PATH",
    "MAX_EVENT_BYTES",
    "MAX_PAYLOAD_BYTES",
    "USER_AGENT",
    "MoesifSpanExporter",
    "log_shutdown_summary",
    "span_weight",
]

logger = logging.getLogger("moesif_otel")

EVENTS_PATH = "/v1/events/batch"
_EVENT_HEADERS = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
SPAN_OVERHEAD = 4096  # bytes a finished span holds besides its bodies and header strings (measured ~3 KB)
HEADER_PAIR_OVERHEAD = 144  # a (name, value) tuple of two bytes objects, besides their contents
_REQUEST_BODY, _RESPONSE_BODY = A.HTTP_REQUEST_BODY_CONTENT, A.HTTP_RESPONSE_BODY_CONTENT
_REQUEST_HEADERS, _RESPONSE_HEADERS = A.MOESIF_REQUEST_HEADERS, A.MOESIF_RESPONSE_HEADERS
_DROP_COUNTERS = ("dropped_mask", "dropped_too_large", "dropped_conversion", "sampled_out")


def span_weight(span: ReadableSpan | CapturedRecord) -> int:
    """What a queued span costs in EVENT_QUEUE_BYTES: its captured bodies and headers plus a fixed
    overhead. It runs on the request path: four lookups, no Python-level loop. A record keeps its
    weight, so that the exporter's thread gives back exactly what was charged without computing it
    again."""
    if type(span) is CapturedRecord:
        if not span.weight:
            span.weight = _weight(span)
        return span.weight
    return _weight(span)


def _weight(span: ReadableSpan | CapturedRecord) -> int:
    get = span_attributes(span).get
    try:
        return (
            SPAN_OVERHEAD
            + len(get(_REQUEST_BODY) or b"")
            + len(get(_RESPONSE_BODY) or b"")
            + _headers_weight(get(_REQUEST_HEADERS))
            + _headers_weight(get(_RESPONSE_HEADERS))
        )
    except TypeError:  # not capture's values (another instrumentation's): the overhead only
        return SPAN_OVERHEAD


def _headers_weight(headers: Any) -> int:
    """``name:value`` text, or capture's header pairs: their bytes and what holding each pair costs."""
    if not headers:
        return 0
    if isinstance(headers, str):
        return len(headers)
    return sum(map(len, chain.from_iterable(headers))) + HEADER_PAIR_OVERHEAD * len(headers)


def log_shutdown_summary(stats: Mapping[str, int]) -> None:
    """One WARNING at the end of shutdown when anything was lost, by cause: a loss is never silent."""
    dropped = {key: n for key, n in stats.items() if key.startswith("dropped_") and n}
    if dropped:
        logger.warning(
            "moesif_otel: shutdown summary: captured=%d sent=%d dropped %s (%d events not delivered)",
            stats.get("captured", 0),
            stats.get("sent", 0),
            " ".join(f"{key}={n}" for key, n in sorted(dropped.items())),
            sum(dropped.values()),
        )


class _Conversion:
    """One export call's events not yet resolved (submitted or counted as dropped)."""

    __slots__ = ("abandoned", "unresolved")

    def __init__(self, count: int) -> None:
        self.unresolved = count
        self.abandoned = False  # counted as dropped_shutdown at the deadline; submits nothing more


class MoesifSpanExporter(SpanExporter):
    """Exports HTTP server/client spans as Moesif API-call events; ignores every other span."""

    def __init__(
        self,
        settings: Mapping[str, Any] | Settings | None = None,
        *,
        application_id: str | None = None,
        base_uri: str | None = None,
        delivery: Delivery | None = None,
        uplink: Uplink | None = None,
    ) -> None:
        """``uplink``: the pipeline's delivery and app config; without one the exporter makes its
        own (on ``delivery`` when given, else on the process's shared one for these settings)."""
        if not isinstance(settings, Settings):
            values = dict(settings or {})
            if application_id is not None:
                values["APPLICATION_ID"] = application_id
            if base_uri is not None:
                values["BASE_URI"] = base_uri
            settings = Settings.from_mapping(values)
        self.settings = settings
        self.options = EventOptions(
            api_version=settings.api_version,
            authorization_header_names=settings.authorization_header_names,
            authorization_user_id_field=settings.authorization_user_id_field,
            max_body_size=settings.max_body_size,
            request_body_masks=frozenset(settings.request_body_masks),
            response_body_masks=frozenset(settings.response_body_masks),
            raw_json_bodies=settings.mask_event_model is None,  # a mask hook reads the bodies
        )
        self._mask = settings.mask_event_model
        self.clock = ShutdownClock(settings.shutdown_timeout)
        self._lock = threading.Lock()
        self._local = threading.local()  # this thread's conversion (abandoned: drops not counted)
        self._reset_counters()
        reinit_after_fork(self._reset_counters)  # a forked worker counts its own events
        self.uplink = uplink if uplink is not None else Uplink(settings, delivery)
        self.app_config = self.uplink.app_config  # outgoing calls' sample rate
        self._shutdown = False
        self._closing = False  # a shutdown is under way: its deadline bounds conversion

    def _reset_counters(self) -> None:
        self._warnings = LogOnce(logger)
        self._lock = threading.Lock()
        self._drops = dict.fromkeys(_DROP_COUNTERS, 0)
        self._jobs: set[_Conversion] = set()
        self.received = 0  # API-call spans handed to export
        self.exported = 0  # events submitted for upload
        self.dropped_shutdown = 0  # events still converting (or exported after shutdown) at the deadline

    # A late conversion (its events already counted as dropped_shutdown at the deadline) must not
    # count a drop again: these counters ignore increments from a thread whose conversion was abandoned.
    def _drop_counter(name: str) -> property:  # type: ignore[misc]
        def get(self: MoesifSpanExporter) -> int:
            return self._drops[name]

        def set_(self: MoesifSpanExporter, value: int) -> None:
            job = getattr(self._local, "job", None)
            if job is None or not job.abandoned:
                self._drops[name] = value

        return property(get, set_)

    dropped_mask = _drop_counter("dropped_mask")
    dropped_too_large = _drop_counter("dropped_too_large")
    dropped_conversion = _drop_counter("dropped_conversion")
    sampled_out = _drop_counter("sampled_out")
    del _drop_counter

    # -- SpanExporter -----------------------------------------------------------------------------

    def export(
        self, spans: Sequence[ReadableSpan], *, release: Callable[[int], None] | None = None
    ) -> SpanExportResult:
        """Convert and hand over for upload. ``release(bytes)``: the queue that charged these spans
        to EVENT_QUEUE_BYTES (MoesifSpanProcessor) gets each one's weight back once converted; it
        hands over its list, which is emptied so that each span is freed once converted."""
        calls: list[ReadableSpan | None] = [span for span in spans if is_api_call(span)]
        if release is not None and isinstance(spans, list):
            spans.clear()
        budget = release
        if not calls:
            return SpanExportResult.SUCCESS
        with self._lock:
            self.received += len(calls)
            late = self._shutdown
            if late:
                self.dropped_shutdown += len(calls)
            else:
                job = _Conversion(len(calls))
                self._jobs.add(job)
        if late:
            if budget is not None:
                budget(sum(span_weight(span) for span in calls if span is not None))
            return SpanExportResult.FAILURE
        self._local.job = job
        try:
            return self._convert(calls, job, budget)
        finally:
            self._local.job = None
            with self._lock:
                self._jobs.discard(job)

    def _convert(
        self, calls: list[ReadableSpan | None], job: _Conversion, budget: Callable[[int], None] | None
    ) -> SpanExportResult:
        ok = True
        payload = JsonArray(gzip=True)
        done = 0  # spans converted (and let go of)
        try:
            for index in range(len(calls)):
                if self._closing and self.clock.expired():
                    self.abandon_conversions()
                if job.abandoned:
                    return SpanExportResult.FAILURE
                span = calls[index]
                assert span is not None
                data = self._encode(span)
                calls[index] = None
                done = index + 1
                if budget is not None:
                    budget(span_weight(span))
                del span
                if data is None:  # dropped and counted by its cause
                    with self._lock:
                        if not job.abandoned:
                            job.unresolved -= 1
                    continue
                if not payload.has_room(data, self.settings.batch_size):
                    ok = self._submit(payload, job) and ok
                    payload = JsonArray(gzip=True)
                payload.add(data)
            if payload.count:
                ok = self._submit(payload, job) and ok
        finally:
            if budget is not None and done < len(calls):
                budget(sum(span_weight(span) for span in calls[done:] if span is not None))
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def _submit(self, payload: JsonArray, job: _Conversion) -> bool:
        count = payload.count
        body = payload.finish()
        # Under the lock, as stats() reads: the events leave "converting" and join the delivery's
        # in-flight in one step (submit never blocks), so pending never misses them in between.
        with self._lock:
            if job.abandoned:  # finished after the shutdown deadline: already counted, never sent
                return False
            job.unresolved -= count
            self.exported += count
            return self.uplink.submit(EVENTS_PATH, body, count=count, headers=_EVENT_HEADERS)

    def begin_shutdown(self) -> None:
        """From now on the shutdown clock bounds conversion: past it, events still converting are dropped."""
        self.clock.start()
        self._closing = True

    def abandon_conversions(self) -> int:
        """The shutdown deadline passed: count the events of conversions still running (a slow
        MASK_EVENT_MODEL, say) as dropped_shutdown, once; when they finish they submit nothing."""
        dropped = 0
        with self._lock:
            for job in self._jobs:
                if not job.abandoned:
                    job.abandoned = True
                    dropped += job.unresolved
                    job.unresolved = 0
            self.dropped_shutdown += dropped
        if dropped:
            self._warnings.warning(
                "shutdown-converting",
                "moesif_otel: %d events were still being converted at the shutdown deadline "
                "(SHUTDOWN_TIMEOUT); counted as dropped_shutdown",
                dropped,
            )
        return dropped

    def _encode(self, span: ReadableSpan) -> bytes | None:
        try:
            event = event_document(span, self.options)
            if event["direction"] == "Outgoing" and not self._sample_outgoing(event, span):
                return None
            if self._mask is not None:
                model = self._apply_mask(to_event_model(event))
                if model is None:
                    return None
                event = from_event_model(model, event.get("trace_id"))
        except Exception as exc:
            self.dropped_conversion += 1
            self._warnings.warning(
                f"convert:{type(exc).__name__}", "moesif_otel: could not build an event: %r", exc
            )
            return None
        return self._serialize(event)

    def _sample_outgoing(self, event: dict[str, Any], span: ReadableSpan) -> bool:
        """The app config's sample rate for an outgoing call; False when sampled out.

        Incoming requests are sampled in capture, before their expensive work; outgoing calls are
        decided here, with the same rules and the same trace-id decision, so a call made while
        serving a request is kept or dropped with it whenever both get the same rate.
        """
        config = self.app_config.current
        if not config.samples:
            return True
        request = event["request"]
        facts = RequestFacts(
            verb=request["verb"],
            uri=request["uri"],
            path=urlsplit(request["uri"]).path or "/",
            ip=None,
            headers=request["headers"],
            user_id=event.get("user_id"),
            company_id=event.get("company_id"),
        )
        rate = config.sample_rate(facts, event["response"].get("status"))
        if rate >= 100:
            return True
        if not keep(span.context.trace_id if span.context is not None else 0, rate):
            self.sampled_out += 1
            return False
        event["weight"] = weight_for(rate)
        return True

    def _apply_mask(self, event: EventModel) -> EventModel | None:
        """MASK_EVENT_MODEL must not leak the unmasked event: any failure drops it."""
        try:
            result = self._mask(event)  # type: ignore[misc]
            if hasattr(result, "__await__"):
                result = run_awaitable(result, self.settings.hook_timeout)
        except HookTimeout:
            self.dropped_mask += 1
            self._warnings.warning(
                "mask-timeout",
                "moesif_otel: MASK_EVENT_MODEL did not return within HOOK_TIMEOUT (%s s); the event "
                "is dropped, not sent unmasked (logged once; see stats()['dropped_mask'])",
                self.settings.hook_timeout,
            )
            return None
        except Exception as exc:
            self.dropped_mask += 1
            self._warnings.warning(
                f"mask-raise:{type(exc).__name__}",
                "moesif_otel: MASK_EVENT_MODEL raised %r; the event is dropped, not sent unmasked "
                "(logged once; see stats()['dropped_mask'])",
                exc,
            )
            return None
        if not isinstance(result, EventModel):
            self.dropped_mask += 1
            self._warnings.warning(
                f"mask-type:{type(result).__name__}",
                "moesif_otel: MASK_EVENT_MODEL returned %s, not an EventModel; the event is dropped "
                "(logged once; see stats()['dropped_mask'])",
                type(result).__name__,
            )
            return None
        return result

    def _serialize(self, event: dict[str, Any]) -> bytes | None:
        try:
            data = jsoncodec.dumps(event)
            if len(data) <= MAX_EVENT_BYTES:
                return data
            # Over Moesif's limit: send the call without its bodies, and say so.
            notes = {}
            for side in ("request", "response"):
                part = event.get(side)
                if isinstance(part, dict) and part.pop("body", None) is not None:
                    part.pop("transfer_encoding", None)
                    notes[f"{side}_body"] = "omitted: event over 1 MB"
            metadata = event.get("metadata")
            if not isinstance(metadata, dict):
                metadata = {}
            event["metadata"] = {**metadata, "moesif_otel": {**metadata.get("moesif_otel", {}), **notes}}
            data = jsoncodec.dumps(event)
            if len(data) <= MAX_EVENT_BYTES:
                return data
        except (TypeError, ValueError, RecursionError) as exc:  # e.g. a mask hook put a datetime in it
            self.dropped_conversion += 1
            self._warnings.warning(
                f"json:{type(exc).__name__}", "moesif_otel: event is not JSON serialisable: %s", exc
            )
            return None
        self.dropped_too_large += 1
        self._warnings.warning("too-large", "moesif_otel: an event is over 1 MB even without bodies; dropped")
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.uplink.flush(timeout_millis / 1000)

    def shutdown(self, timeout_millis: int | None = None, *, summary: bool = True) -> None:
        """Deliver what was handed over and stop, within what is left of the shutdown clock
        (SHUTDOWN_TIMEOUT from the first shutdown stage; the SDK's batch processor offers 30 s)."""
        if self._shutdown:
            return
        self.begin_shutdown()
        self._shutdown = True
        timeout = self.clock.remaining()
        if timeout_millis is not None:
            timeout = min(timeout, timeout_millis / 1000)
        self.uplink.release(timeout)
        self.abandon_conversions()
        if summary:
            log_shutdown_summary(self.stats())

    def stats(self) -> dict[str, int]:
        """Counters of this exporter and its share of the delivery: what was captured, sent,
        retried, dropped (by cause) and is still pending, in events."""
        with self._lock:  # see _submit: converting and in flight read together
            delivery = self.uplink.stats()
            converting = sum(job.unresolved for job in self._jobs)
            dropped_shutdown = self.dropped_shutdown
            received, exported = self.received, self.exported
        budget = self.uplink.budget
        return {
            "captured": received,
            "events_exported": exported,
            "dropped_mask": self.dropped_mask,
            "dropped_too_large": self.dropped_too_large,
            "dropped_conversion": self.dropped_conversion,
            "sampled_out_outgoing": self.sampled_out,
            **delivery,
            "dropped_shutdown": delivery["dropped_shutdown"] + dropped_shutdown,
            "pending": converting + delivery["in_flight"],
            "queue_bytes": budget.used if budget is not None else 0,
        }

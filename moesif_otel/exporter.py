"""MoesifSpanExporter: API-call spans → Moesif events → gzip JSON batches → the collector.

A real OTel ``SpanExporter``: it works behind :class:`~moesif_otel.MoesifSpanProcessor`, behind the
SDK's ``BatchSpanProcessor`` in an existing pipeline, and under ``opentelemetry-instrument`` with
``OTEL_TRACES_EXPORTER=moesif`` (constructed without arguments: settings come from ``MOESIF_*``).
``export`` converts on the calling (background) thread and hands payloads to :class:`Delivery`,
whose own workers upload, retry and overlap — so a slow collector never stalls the span pipeline.
"""

from __future__ import annotations

import gzip
import logging
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from moesifapi.models import EventModel
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from moesif_otel import jsoncodec
from moesif_otel._version import __version__
from moesif_otel.appconfig import RequestFacts, keep, weight_for
from moesif_otel.config_sync import shared_config
from moesif_otel.delivery import Delivery
from moesif_otel.event import (
    EventOptions,
    event_document,
    from_event_model,
    is_api_call,
    to_event_model,
)
from moesif_otel.hooks import HookTimeout, run_awaitable
from moesif_otel.logonce import LogOnce
from moesif_otel.settings import Settings
from moesif_otel.transport import HttpTransport

logger = logging.getLogger("moesif_otel")

USER_AGENT = f"moesif-otel-python/{__version__}"
EVENTS_PATH = "/v1/events/batch"
MAX_EVENT_BYTES = 1_000_000  # Moesif rejects events over 1 MB
MAX_PAYLOAD_BYTES = 8_000_000  # uncompressed; far below the 50 MB batch limit
_GZIP_LEVEL = 1  # most of the size win for a fraction of the CPU


class MoesifSpanExporter(SpanExporter):
    """Exports HTTP server/client spans as Moesif API-call events; ignores every other span."""

    def __init__(
        self,
        settings: Mapping[str, Any] | Settings | None = None,
        *,
        application_id: str | None = None,
        base_uri: str | None = None,
        delivery: Delivery | None = None,
    ) -> None:
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
            plain_client_spans=settings.capture_outgoing_requests,
            request_body_masks=frozenset(settings.request_body_masks),
            response_body_masks=frozenset(settings.response_body_masks),
        )
        self._mask = settings.mask_event_model
        self._reset_counters()
        if hasattr(os, "register_at_fork"):  # a forked worker counts its own events
            ref = weakref.WeakMethod(self._reset_counters)
            os.register_at_fork(after_in_child=lambda: (m := ref()) is not None and m())
        # the app config (sampling, rules) shared with capture; upload answers announce changes
        self.app_config = shared_config(settings.collector_uri, settings.application_id, self._new_transport)
        self.delivery = delivery or Delivery(
            self._new_transport,
            workers=settings.event_worker_count,
            max_pending=max(16, settings.event_queue_size // max(1, settings.batch_size)),
            on_response=lambda response: self.app_config.observe(response.headers),
            name="moesif",
        )
        self._shutdown = False

    def _reset_counters(self) -> None:
        self._warnings = LogOnce(logger)
        self.exported = 0
        self.dropped_mask = 0
        self.dropped_too_large = 0
        self.dropped_conversion = 0
        self.sampled_out = 0

    def _new_transport(self) -> HttpTransport:
        return HttpTransport(self.settings.collector_uri, self.settings.application_id, user_agent=USER_AGENT)

    # -- SpanExporter -----------------------------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        encoded: list[bytes] = []
        for span in spans:
            if not is_api_call(span, self.options):
                continue
            data = self._encode(span)
            if data is not None:
                encoded.append(data)
        ok = True
        for payload, count in self._payloads(encoded):
            ok = (
                self.delivery.submit(
                    EVENTS_PATH,
                    gzip.compress(payload, _GZIP_LEVEL),
                    count=count,
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                )
                and ok
            )
        self.exported += len(encoded)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def accepts(self, span: ReadableSpan) -> bool:
        """Whether ``span`` becomes an event: processors use it to keep other spans out of queues."""
        return is_api_call(span, self.options)

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
            metadata = event.get("metadata") if isinstance(event.get("metadata"), dict) else {}
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

    def _payloads(self, encoded: list[bytes]) -> list[tuple[bytes, int]]:
        """JSON arrays of at most BATCH_SIZE events and MAX_PAYLOAD_BYTES."""
        payloads: list[tuple[bytes, int]] = []
        batch: list[bytes] = []
        size = 0
        for data in encoded:
            if batch and (len(batch) >= self.settings.batch_size or size + len(data) > MAX_PAYLOAD_BYTES):
                payloads.append((b"[" + b",".join(batch) + b"]", len(batch)))
                batch, size = [], 0
            batch.append(data)
            size += len(data) + 1
        if batch:
            payloads.append((b"[" + b",".join(batch) + b"]", len(batch)))
        return payloads

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.delivery.flush(timeout_millis / 1000)

    def shutdown(self, timeout_millis: int | None = None) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        # the SDK's batch processor offers up to 30 s; SHUTDOWN_TIMEOUT is the bound users set
        timeout = self.settings.shutdown_timeout
        if timeout_millis is not None:
            timeout = min(timeout, timeout_millis / 1000)
        self.delivery.shutdown(timeout)
        self.app_config.release()

    def stats(self) -> dict[str, int]:
        """Counters of this exporter and its delivery: what was sent, retried and dropped, by cause."""
        return {
            "events_exported": self.exported,
            "dropped_mask": self.dropped_mask,
            "dropped_too_large": self.dropped_too_large,
            "dropped_conversion": self.dropped_conversion,
            "sampled_out_outgoing": self.sampled_out,
            **self.delivery.stats(),
        }

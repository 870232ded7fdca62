"""What a Moesif pipeline sends through: the delivery, the app config and the collector transport.

:class:`Pipeline <moesif_otel.pipeline.Pipeline>` builds one and hands it to its exporter; an
exporter used on its own (``BatchSpanProcessor(MoesifSpanExporter(...))``, ``OTEL_TRACES_EXPORTER=
moesif``) builds its own the same way. The :class:`Delivery` and the :class:`ConfigSync` behind it
are shared by every uplink of the process with the same collector and delivery settings (reference
counted: the last release stops them); each uplink counts its own payloads in its own tally.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping

from moesif_otel.config_sync import ConfigSync, shared_config
from moesif_otel.delivery import ByteBudget, Delivery, Tally, new_tally, shared_delivery
from moesif_otel.forks import reinit_after_fork
from moesif_otel.settings import Settings
from moesif_otel.transport import collector_transport

__all__ = ["Uplink", "delivery_backlog"]


def delivery_backlog(settings: Settings) -> int:
    """Batches a delivery keeps pending: EVENT_QUEUE_SIZE in batches of BATCH_SIZE (at least 16)."""
    return max(16, settings.event_queue_size // max(1, settings.batch_size))


class Uplink:
    """One user's handle on the shared delivery and app config (or on a delivery of its own)."""

    def __init__(self, settings: Settings, delivery: Delivery | None = None) -> None:
        self.settings = settings
        # the app config (sampling, rules) shared with capture; upload answers announce changes
        self.app_config: ConfigSync = shared_config(settings)
        self.shared = delivery is None
        self.delivery = delivery or shared_delivery(self._delivery_key(), self._make_delivery)
        self._reset()
        reinit_after_fork(self._reset)  # a forked child counts its own events

    def _reset(self) -> None:
        self.tally: Tally = new_tally()  # this user's share of the (shared) delivery's counters

    def _delivery_key(self) -> tuple[Hashable, ...]:
        s = self.settings
        return (
            s.collector_uri,
            s.application_id,
            s.event_worker_count,
            delivery_backlog(s),
            s.event_queue_bytes,
        )

    def _make_delivery(self) -> Delivery:
        # shared by every uplink with the same key: nothing here may hold on to this uplink
        s, config = self.settings, self.app_config
        return Delivery(
            functools.partial(collector_transport, s),
            workers=s.event_worker_count,
            max_pending=delivery_backlog(s),
            on_response=lambda response: config.observe(response.headers),
            name="moesif",
            budget=ByteBudget(s.event_queue_bytes),
        )

    @property
    def budget(self) -> ByteBudget | None:
        """EVENT_QUEUE_BYTES: shared by the delivery backlog and the span queue in front of it."""
        return self.delivery.budget

    def submit(self, path: str, payload: bytes, *, count: int, headers: Mapping[str, str]) -> bool:
        """Queue a payload of ``count`` events (never blocks); False when it was dropped."""
        return self.delivery.submit(path, payload, count=count, headers=headers, tally=self.tally)

    def flush(self, timeout: float) -> bool:
        """Wait (bounded) until this user's payloads (all, on a delivery of its own) are sent or dropped."""
        return self.delivery.flush(timeout, self.tally if self.shared else None)

    def release(self, timeout: float) -> None:
        """This user is done: deliver its payloads within ``timeout``; the last user of the shared
        delivery and config fetcher stops them."""
        if self.shared:
            self.delivery.release(timeout, self.tally)
        else:
            self.delivery.shutdown(timeout)
        self.app_config.release()

    def stats(self) -> dict[str, int]:
        """The delivery's counters for this user's payloads (all, on a delivery of its own)."""
        return self.delivery.stats(self.tally if self.shared else None)

"""User, company and subscription profiles: moesifasgi's ``update_*`` API, without blocking.

moesifasgi posts a profile synchronously on the caller's thread (in an ASGI app: the event loop),
without a timeout or a retry, and a datetime in metadata fails deep inside its client. Here a call
only validates and serialises the profile, so bad input fails at the call with the field named, and
hands the JSON to the same bounded :class:`~moesif_otel.delivery.Delivery` as events: retried, timed
out, flushed at shutdown. The ``*_async`` forms resolve when the collector has accepted the update.

``app.add_middleware`` gives no handle to the middleware, so the same operations exist as this
module's functions (``moesif_otel.profiles.update_user(...)``; the package root re-exports them for
moesifasgi-style ``from moesif_otel import update_user``) on a default client: the one given to
:func:`configure`, else the most recent :class:`~moesif_otel.MoesifMiddleware`'s, else one built
from ``MOESIF_*``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import functools
import json
import logging
import math
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from moesifapi.models import CompanyModel, SubscriptionModel, UserModel
from moesifapi.models.base_model import BaseModel

from moesif_otel.delivery import Delivery
from moesif_otel.payload import json_arrays
from moesif_otel.settings import ConfigurationError, Settings
from moesif_otel.transport import Response, collector_transport
from moesif_otel.uplink import delivery_backlog

__all__ = [
    "ProfileUpdateError",
    "ProfilesClient",
    "configure",
    "default_client",
    "flush",
    "set_middleware_client",
    "update_companies_batch",
    "update_companies_batch_async",
    "update_company",
    "update_company_async",
    "update_subscription",
    "update_subscription_async",
    "update_subscriptions_batch",
    "update_subscriptions_batch_async",
    "update_user",
    "update_user_async",
    "update_users_batch",
    "update_users_batch_async",
]

logger = logging.getLogger("moesif_otel.profiles")

Profile = Any
"""A moesifapi model (``UserModel``, ``CompanyModel``, ``SubscriptionModel``), a dict or a JSON string."""

_HEADERS = {"Content-Type": "application/json"}  # uncompressed, as moesifapi sends profiles
_MAX_DEPTH = 64  # deeper than any real profile: a cycle, most likely
_BODY_IN_ERROR = 300


@dataclass(frozen=True)
class _Kind:
    name: str  # "user": names the single value in error messages
    plural: str  # "users": names batch items
    path: str
    model: type[BaseModel]
    id_field: str
    single_required: tuple[str, ...] = ()  # also required by the single endpoint (moesif-api.md §2)


_USER = _Kind("user", "users", "/v1/users", UserModel, "user_id")
_COMPANY = _Kind("company", "companies", "/v1/companies", CompanyModel, "company_id")
_SUBSCRIPTION = _Kind(
    "subscription",
    "subscriptions",
    "/v1/subscriptions",
    SubscriptionModel,
    "subscription_id",
    ("company_id", "status"),
)


class ProfileUpdateError(Exception):
    """An awaited profile update was not delivered: rejected, retries exhausted, or dropped.

    ``outcome`` is "rejected", "retry_exhausted", "queue_full", "shutdown" or "error"; ``status`` and
    ``body`` are the collector's last answer (0 and b"" when there was none).
    """

    def __init__(self, message: str, *, outcome: str, status: int = 0, body: bytes = b"") -> None:
        super().__init__(message)
        self.outcome = outcome
        self.status = status
        self.body = body


# -- validation and serialisation (on the caller's thread) ------------------------------------------


def format_datetime(value: dt.datetime) -> str:
    """UTC ISO-8601 with milliseconds and ``Z``, like event times; a naive datetime is taken as UTC."""
    if value.utcoffset() is not None:
        value = value.astimezone(dt.timezone.utc)
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _model_fields(model: BaseModel) -> dict[str, Any]:
    """A model's JSON fields without the unset ones; values stay raw (datetimes are ours to format:
    ``to_dictionary()`` would give a naive time without a zone)."""
    names = getattr(model, "names", None)
    if not isinstance(names, Mapping):
        return {k: v for k, v in model.to_dictionary().items() if v is not None}
    return {
        json_name: value
        for attr, json_name in names.items()
        if (value := getattr(model, attr, None)) is not None
    }


def _jsonable(value: Any, path: str, depth: int = 0) -> Any:
    """``value`` as plain JSON types; a TypeError/ValueError names the path of what cannot be sent."""
    if value is None or isinstance(value, (str, int)):  # bool is an int
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: {value!r} is not valid JSON (NaN and infinities cannot be sent)")
        return value
    if isinstance(value, dt.datetime):
        return format_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if depth >= _MAX_DEPTH:
        raise ValueError(f"{path}: nested more than {_MAX_DEPTH} levels deep (a reference cycle?)")
    if isinstance(value, BaseModel):
        value = _model_fields(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(
                    f"{path}: key {key!r} is a {type(key).__name__}; JSON object keys are strings"
                )
            out[str(key)] = _jsonable(item, f"{path}.{key}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
    raise TypeError(
        f"{path}: {type(value).__name__} is not JSON-serialisable "
        "(use str, int, float, bool, None, dict, list, datetime or date)"
    )


def _parse_json(text: str | bytes | bytearray, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{where}: not valid JSON: {exc}") from None


def _document(item: Any, kind: _Kind, where: str, *, single: bool) -> dict[str, Any]:
    if isinstance(item, BaseModel):
        if not isinstance(item, kind.model):
            raise TypeError(f"{where}: expected a {kind.model.__name__}, got a {type(item).__name__}")
        raw: Any = _model_fields(item)
    elif isinstance(item, (str, bytes, bytearray)):
        raw = _parse_json(item, where)
    else:
        raw = item
    if not isinstance(raw, Mapping):
        what = (
            "JSON " + type(raw).__name__ if isinstance(item, (str, bytes, bytearray)) else type(raw).__name__
        )
        raise TypeError(f"{where}: expected a {kind.model.__name__}, a dict or a JSON object, got {what}")
    # a top-level None means "not given", as in the models
    doc: dict[str, Any] = _jsonable({k: v for k, v in raw.items() if v is not None}, where)
    for field in (kind.id_field, *(kind.single_required if single else ())):
        value = doc.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            doc[field] = value = str(value)  # numeric ids are common; Moesif ids are strings
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: {field} is required (a non-empty string), got {value!r}")
    return doc


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _prepare_one(kind: _Kind, item: Profile, op: str) -> list[tuple[str, bytes, int]]:
    try:
        doc = _document(item, kind, kind.name, single=True)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{op}: {exc}") from None
    return [(kind.path, _dumps(doc), 1)]


def _prepare_batch(kind: _Kind, items: Any, op: str) -> list[tuple[str, bytes, int]]:
    """JSON arrays of at most MAX_PAYLOAD_BYTES; an empty batch sends nothing."""
    try:
        if isinstance(items, (str, bytes, bytearray)):
            items = _parse_json(items, kind.plural)
            if not isinstance(items, list):
                raise TypeError(f"{kind.plural}: expected a JSON array, got JSON {type(items).__name__}")
        elif isinstance(items, (BaseModel, Mapping)) or not isinstance(items, Iterable):
            raise TypeError(
                f"expected a list of {kind.model.__name__}, dicts or JSON objects (or a JSON array), "
                f"got a {type(items).__name__}"
            )
        encoded = [
            _dumps(_document(item, kind, f"{kind.plural}[{index}]", single=False))
            for index, item in enumerate(items)
        ]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{op}: {exc}") from None
    path = kind.path + "/batch"
    return [(path, payload, count) for payload, count in json_arrays(encoded)]


def _failure(outcome: str, response: Response | None, path: str, count: int) -> ProfileUpdateError:
    what = f"{count} profile{'s' if count != 1 else ''} to {path}"
    status = response.status if response is not None else 0
    body = response.body if response is not None else b""
    answer = body.decode("utf-8", errors="replace").strip()[:_BODY_IN_ERROR] or "(empty body)"
    if outcome == "rejected" and response is not None:
        message = f"the collector rejected {what} with HTTP {status}: {answer}"
    elif outcome == "retry_exhausted":
        last = f"HTTP {status}: {answer}" if response is not None else "no answer"
        message = f"gave up on {what} after retrying (last attempt: {last})"
    elif outcome == "queue_full":
        message = f"{what} dropped: the delivery backlog is full"
    elif outcome == "shutdown":
        message = f"{what} not delivered: moesif_otel is shut down or shutting down"
    else:
        message = f"{what} could not be sent ({outcome})"
    return ProfileUpdateError(message, outcome=outcome, status=status, body=body)


# -- the client ------------------------------------------------------------------------------------


class ProfilesClient:
    """Sends profile updates through a :class:`Delivery`: the middleware's (shared with its events,
    so flushed with them) or, without one, its own, flushed at exit within SHUTDOWN_TIMEOUT.

    The plain methods validate, serialise and enqueue, then return: True when queued, False when
    the backlog is full or delivery is shut down (counted in :meth:`stats`). They raise TypeError or
    ValueError on input that cannot be sent. The ``*_async`` forms return once the collector has
    accepted the update and raise :class:`ProfileUpdateError` when it will not be delivered;
    cancelling the awaiting task does not withdraw the update.
    """

    def __init__(
        self, settings: Mapping[str, Any] | Settings | None = None, delivery: Delivery | None = None
    ) -> None:
        self.settings = settings if isinstance(settings, Settings) else Settings.from_mapping(settings)
        self.owns_delivery = delivery is None
        if delivery is None:
            s = self.settings
            delivery = Delivery(
                functools.partial(collector_transport, s),
                workers=max(1, min(2, s.event_worker_count)),
                max_pending=delivery_backlog(s),
                name="moesif-profiles",
            )
            ref = weakref.ref(delivery)
            timeout = s.shutdown_timeout
            atexit.register(lambda: (d := ref()) is not None and d.shutdown(timeout))
        self.delivery = delivery

    # -- fire and forget ---------------------------------------------------------------------------

    def update_user(self, user: Profile) -> bool:
        return self._enqueue(_prepare_one(_USER, user, "update_user"))

    def update_users_batch(self, users: Any) -> bool:
        return self._enqueue(_prepare_batch(_USER, users, "update_users_batch"))

    def update_company(self, company: Profile) -> bool:
        return self._enqueue(_prepare_one(_COMPANY, company, "update_company"))

    def update_companies_batch(self, companies: Any) -> bool:
        return self._enqueue(_prepare_batch(_COMPANY, companies, "update_companies_batch"))

    def update_subscription(self, subscription: Profile) -> bool:
        return self._enqueue(_prepare_one(_SUBSCRIPTION, subscription, "update_subscription"))

    def update_subscriptions_batch(self, subscriptions: Any) -> bool:
        return self._enqueue(_prepare_batch(_SUBSCRIPTION, subscriptions, "update_subscriptions_batch"))

    # -- awaitable ---------------------------------------------------------------------------------

    async def update_user_async(self, user: Profile) -> None:
        await self._deliver(_prepare_one(_USER, user, "update_user_async"))

    async def update_users_batch_async(self, users: Any) -> None:
        await self._deliver(_prepare_batch(_USER, users, "update_users_batch_async"))

    async def update_company_async(self, company: Profile) -> None:
        await self._deliver(_prepare_one(_COMPANY, company, "update_company_async"))

    async def update_companies_batch_async(self, companies: Any) -> None:
        await self._deliver(_prepare_batch(_COMPANY, companies, "update_companies_batch_async"))

    async def update_subscription_async(self, subscription: Profile) -> None:
        await self._deliver(_prepare_one(_SUBSCRIPTION, subscription, "update_subscription_async"))

    async def update_subscriptions_batch_async(self, subscriptions: Any) -> None:
        await self._deliver(_prepare_batch(_SUBSCRIPTION, subscriptions, "update_subscriptions_batch_async"))

    # -- lifecycle ---------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait (bounded; SHUTDOWN_TIMEOUT by default) until everything queued is sent or dropped.
        Blocks: from async code, run it in an executor."""
        return self.delivery.flush(self.settings.shutdown_timeout if timeout is None else timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Deliver what is queued (bounded), then stop; only flushes a shared (middleware's) delivery."""
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        if not self.owns_delivery:
            return self.delivery.flush(timeout)
        return self.delivery.shutdown(timeout)

    def stats(self) -> dict[str, int]:
        """The delivery's counters (shared with events when the delivery is the middleware's)."""
        return self.delivery.stats()

    # -- internals ---------------------------------------------------------------------------------

    def _enqueue(self, payloads: list[tuple[str, bytes, int]]) -> bool:
        ok = True
        for path, body, count in payloads:
            ok = self.delivery.submit(path, body, count=count, headers=_HEADERS) and ok
        return ok

    async def _deliver(self, payloads: list[tuple[str, bytes, int]]) -> None:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for path, body, count in payloads:
            future: asyncio.Future[None] = loop.create_future()

            def on_done(
                outcome: str,
                response: Response | None,
                *,
                _f: asyncio.Future[None] = future,
                _p: str = path,
                _n: int = count,
            ) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                    loop.call_soon_threadsafe(_settle, _f, outcome, response, _p, _n)

            self.delivery.submit(path, body, count=count, headers=_HEADERS, on_done=on_done)
            futures.append(future)
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


def _settle(future: asyncio.Future[None], outcome: str, response: Response | None, path: str, n: int) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if outcome == "sent":
        future.set_result(None)
    else:
        future.set_exception(_failure(outcome, response, path, n))


# -- the module-level API --------------------------------------------------------------------------

_lock = threading.Lock()
_configured: ProfilesClient | None = None  # configure(): wins
_middleware: ProfilesClient | None = None  # the most recent MoesifMiddleware's
_from_env: ProfilesClient | None = None  # built on first use from MOESIF_*


def configure(settings: Mapping[str, Any] | Settings | None) -> ProfilesClient | None:
    """Use these settings (the moesifasgi dict) for the module-level functions, whatever middleware
    exists. ``None`` forgets every default client (explicit, middleware's, environment's). Clients
    replaced here that own their delivery are shut down, within their SHUTDOWN_TIMEOUT."""
    global _configured, _middleware, _from_env
    client = ProfilesClient(settings) if settings is not None else None
    with _lock:
        replaced = [_configured] if client is not None else [_configured, _middleware, _from_env]
        _configured = client
        if client is None:
            _middleware = _from_env = None
    for old in replaced:
        if old is not None and old.owns_delivery:
            old.shutdown()
    return client


def set_middleware_client(client: ProfilesClient) -> None:
    """Called by MoesifMiddleware when it builds its pipeline: the module functions then share its
    delivery (unless :func:`configure` was called)."""
    global _middleware
    with _lock:
        _middleware = client


def default_client() -> ProfilesClient:
    """The client behind the module functions; raises ConfigurationError when there is none to build."""
    global _from_env
    with _lock:
        client = _configured or _middleware or _from_env
        if client is not None:
            return client
        try:
            _from_env = ProfilesClient(Settings.from_mapping({}))
        except ConfigurationError as exc:
            raise ConfigurationError(
                "moesif_otel profile updates: no MoesifMiddleware has been created and configure() was "
                f"not called, and the environment does not configure one: {exc}"
            ) from None
        return _from_env


def flush(timeout: float | None = None) -> bool:
    """Flush the default client, if there is one (bounded; blocks)."""
    with _lock:
        client = _configured or _middleware or _from_env
    return True if client is None else client.flush(timeout)


def update_user(user: Profile) -> bool:
    """Queue a user profile update (``user_id`` required); see :class:`ProfilesClient`."""
    return default_client().update_user(user)


def update_users_batch(users: Any) -> bool:
    return default_client().update_users_batch(users)


def update_company(company: Profile) -> bool:
    """Queue a company profile update (``company_id`` required)."""
    return default_client().update_company(company)


def update_companies_batch(companies: Any) -> bool:
    return default_client().update_companies_batch(companies)


def update_subscription(subscription: Profile) -> bool:
    """Queue a subscription update (``subscription_id``, ``company_id`` and ``status`` required)."""
    return default_client().update_subscription(subscription)


def update_subscriptions_batch(subscriptions: Any) -> bool:
    return default_client().update_subscriptions_batch(subscriptions)


async def update_user_async(user: Profile) -> None:
    await default_client().update_user_async(user)


async def update_users_batch_async(users: Any) -> None:
    await default_client().update_users_batch_async(users)


async def update_company_async(company: Profile) -> None:
    await default_client().update_company_async(company)


async def update_companies_batch_async(companies: Any) -> None:
    await default_client().update_companies_batch_async(companies)


async def update_subscription_async(subscription: Profile) -> None:
    await default_client().update_subscription_async(subscription)


async def update_subscriptions_batch_async(subscriptions: Any) -> None:
    await default_client().update_subscriptions_batch_async(subscriptions)

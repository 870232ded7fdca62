"""Types for the settings dict's hooks, and the names moesif_otel gives kinds, causes and outcomes.

Annotate a hook with its alias and a type checker checks it against what moesif_otel calls it
with (as ``opentelemetry.instrumentation.asgi.types`` does for OTel's hooks)::

    from moesif_otel.types import HookResponse, IdentifyUser

    def identify_user(request: Request, response: HookResponse | None) -> str | None: ...

    IDENTIFY_USER: IdentifyUser = identify_user

Every hook may be a plain function or an ``async def``. A leaf module: it imports nothing of
moesif_otel, and Starlette, moesifapi, requests and httpx only for the type checker (the hook
aliases are strings at run time), so importing it costs nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx
    import requests
    from moesifapi.models import EventModel
    from starlette.datastructures import Headers
    from starlette.requests import Request

__all__ = [
    "Direction",
    "DropCause",
    "EventOutcome",
    "GetMetadata",
    "GetMetadataOutgoing",
    "GetSessionToken",
    "GetSessionTokenOutgoing",
    "HookKind",
    "HookResponse",
    "IdentifyCompany",
    "IdentifyCompanyOutgoing",
    "IdentifyUser",
    "IdentifyUserOutgoing",
    "MaskEventModel",
    "MaybeAwaitable",
    "OutgoingRequest",
    "OutgoingResponse",
    "PayloadOutcome",
    "Skip",
    "SkipOutgoing",
]

_T = TypeVar("_T")

MaybeAwaitable: TypeAlias = _T | Awaitable[_T]
"""What a hook returns: the value, or an awaitable of it (an ``async def`` hook)."""


class HookResponse(Protocol):
    """The ``response`` the incoming hooks receive: the response as sent, not a Starlette
    ``Response`` (``body`` holds at most ``MAX_BODY_SIZE`` bytes; empty when ``LOG_BODY`` is off)."""

    status_code: int  # 500 when the app raised before responding
    headers: Headers  # case-insensitive
    body: bytes


# -- the incoming hooks: (request, response) -------------------------------------------------------
# IDENTIFY_USER and IDENTIFY_COMPANY get ``response=None`` when Moesif governance rules are loaded
# (they run before the app then). Ids may be returned as ints; None leaves the field out.

IdentifyUser: TypeAlias = "Callable[[Request, HookResponse | None], MaybeAwaitable[str | int | None]]"
"""``IDENTIFY_USER``: the user id of the request."""

IdentifyCompany: TypeAlias = "Callable[[Request, HookResponse | None], MaybeAwaitable[str | int | None]]"
"""``IDENTIFY_COMPANY``: the company id of the request."""

GetSessionToken: TypeAlias = "Callable[[Request, HookResponse], MaybeAwaitable[str | int | None]]"
"""``GET_SESSION_TOKEN``: the session token of the request."""

GetMetadata: TypeAlias = "Callable[[Request, HookResponse], MaybeAwaitable[dict[str, Any] | None]]"
"""``GET_METADATA``: JSON-serialisable metadata for the event (at most 128 KiB of JSON)."""

Skip: TypeAlias = "Callable[[Request, HookResponse], MaybeAwaitable[bool | None]]"
"""``SKIP``: True sends no event for the request."""

MaskEventModel: TypeAlias = "Callable[[EventModel], MaybeAwaitable[EventModel]]"
"""``MASK_EVENT_MODEL``: the moesifapi ``EventModel`` to send (bodies filled in), changed or not."""

# -- the outgoing hooks: the client library's (request, response) -----------------------------------

OutgoingRequest: TypeAlias = "requests.PreparedRequest | httpx.Request"
OutgoingResponse: TypeAlias = "requests.Response | httpx.Response"

IdentifyUserOutgoing: TypeAlias = (
    "Callable[[OutgoingRequest, OutgoingResponse], MaybeAwaitable[str | int | None]]"
)
"""``IDENTIFY_USER_OUTGOING``: the user id of an outgoing call."""

IdentifyCompanyOutgoing: TypeAlias = (
    "Callable[[OutgoingRequest, OutgoingResponse], MaybeAwaitable[str | int | None]]"
)
"""``IDENTIFY_COMPANY_OUTGOING``: the company id of an outgoing call."""

GetSessionTokenOutgoing: TypeAlias = (
    "Callable[[OutgoingRequest, OutgoingResponse], MaybeAwaitable[str | int | None]]"
)
"""``GET_SESSION_TOKEN_OUTGOING``: the session token of an outgoing call."""

GetMetadataOutgoing: TypeAlias = (
    "Callable[[OutgoingRequest, OutgoingResponse], MaybeAwaitable[dict[str, Any] | None]]"
)
"""``GET_METADATA_OUTGOING``: metadata for an outgoing call's event."""

SkipOutgoing: TypeAlias = "Callable[[OutgoingRequest, OutgoingResponse], MaybeAwaitable[bool | None]]"
"""``SKIP_OUTGOING``: True sends no event for an outgoing call."""

# -- kinds, causes and outcomes ---------------------------------------------------------------------

HookKind = Literal["text", "mapping", "flag"]
"""What a hook must return: an id or token (``str``, or an ``int``), a ``dict``, a ``bool``."""

Direction = Literal["Incoming", "Outgoing"]
"""An event's ``direction``: a call the app served, or one it made."""

DropCause = Literal[
    "queue_full", "shutdown", "rejected", "retry_exhausted", "mask", "too_large", "conversion"
]
"""Why an event was dropped: ``stats()["dropped_<cause>"]`` and the ``error.type`` of the
``moesif_otel.events`` metric."""

EventOutcome = Literal["sent", "dropped", "sampled_out"]
"""The ``outcome`` of the ``moesif_otel.events`` metric."""

PayloadOutcome = Literal["sent", "rejected", "retry_exhausted", "queue_full", "shutdown", "error"]
"""How the delivery of one submitted payload ended (its ``on_done`` callback)."""

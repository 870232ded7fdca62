"""Hooks as the docs describe them: tests/test_typing.py checks that mypy --strict accepts them."""

from __future__ import annotations

from typing import Any

import httpx
import requests
from moesifapi.models import EventModel
from starlette.requests import Request

from moesif_otel.types import (
    GetMetadata,
    GetMetadataOutgoing,
    GetSessionToken,
    HookResponse,
    IdentifyCompany,
    IdentifyUser,
    IdentifyUserOutgoing,
    MaskEventModel,
    OutgoingRequest,
    OutgoingResponse,
    Skip,
    SkipOutgoing,
)


def identify_user(request: Request, response: HookResponse | None) -> str | None:
    return request.headers.get("x-user-id")


async def identify_company(request: Request, response: HookResponse | None) -> int:
    return 42


def get_session_token(request: Request, response: HookResponse) -> str:
    return response.headers.get("x-session", "")


async def get_metadata(request: Request, response: HookResponse) -> dict[str, Any]:
    return {"status": response.status_code, "size": len(response.body), "path": request.url.path}


def skip(request: Request, response: HookResponse) -> bool:
    return request.url.path == "/health"


def mask_event_model(event: EventModel) -> EventModel:
    return event


def identify_user_outgoing(request: OutgoingRequest, response: OutgoingResponse) -> str | None:
    return "u" if "x-user-id" in request.headers else None


def identify_requests_user(request: requests.PreparedRequest | httpx.Request, response: object) -> str:
    return "u"


async def get_metadata_outgoing(request: OutgoingRequest, response: OutgoingResponse) -> dict[str, Any]:
    return {"status": response.status_code}


IDENTIFY_USER_HOOK: IdentifyUser = identify_user
IDENTIFY_COMPANY_HOOK: IdentifyCompany = identify_company
GET_SESSION_TOKEN_HOOK: GetSessionToken = get_session_token
GET_METADATA_HOOK: GetMetadata = get_metadata
SKIP_HOOK: Skip = skip
LAMBDA_SKIP: Skip = lambda request, response: response.status_code == 404  # noqa: E731
MASK_HOOK: MaskEventModel = mask_event_model
IDENTIFY_USER_OUTGOING_HOOK: IdentifyUserOutgoing = identify_user_outgoing
IDENTIFY_USER_OUTGOING_2: IdentifyUserOutgoing = identify_requests_user
GET_METADATA_OUTGOING_HOOK: GetMetadataOutgoing = get_metadata_outgoing
SKIP_OUTGOING_HOOK: SkipOutgoing = lambda request, response: response.status_code >= 500  # noqa: E731

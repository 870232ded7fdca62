"""Hooks that do not fit what moesif_otel calls them with: tests/test_typing.py checks that mypy
reports an error on exactly the lines marked ``# error``."""

from __future__ import annotations

from moesifapi.models import EventModel
from starlette.requests import Request
from starlette.responses import Response

from moesif_otel.types import (
    GetMetadata,
    HookResponse,
    IdentifyUser,
    IdentifyUserOutgoing,
    MaskEventModel,
    Skip,
)


def needs_response(request: Request, response: HookResponse) -> str:
    return str(response.status_code)


def starlette_response(request: Request, response: Response) -> str:
    return "u"


def metadata_list(request: Request, response: HookResponse) -> list[str]:
    return []


def skip_one_argument(request: Request) -> bool:
    return False


def mask_returns_none(event: EventModel) -> None:
    return None


def incoming_for_outgoing(request: Request, response: HookResponse) -> str:
    return "u"


IDENTIFY_USER: IdentifyUser = needs_response  # error: governance calls it with response=None
IDENTIFY_USER_2: IdentifyUser = starlette_response  # error: not a Starlette Response
GET_METADATA: GetMetadata = metadata_list  # error: metadata is a dict
SKIP: Skip = skip_one_argument  # error: (request, response)
MASK_EVENT_MODEL: MaskEventModel = mask_returns_none  # error: None drops the event
IDENTIFY_USER_OUTGOING: IdentifyUserOutgoing = incoming_for_outgoing  # error: client request

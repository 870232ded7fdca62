"""The app the delivery-guarantee tests run in other processes (uvicorn, gunicorn, a plain script).

Settings come from ``MOESIF_*`` variables (``MOESIF_BASE_URI`` = the test's collector). The middleware
is built when the module is imported, so under ``gunicorn --preload`` the pipeline exists in the
master before it forks its workers; with ``DELIVERY_APP_LAZY=1`` it is added the usual Starlette way
instead, and built only when the server first calls the app. Each answer names the process that
served it (``x-worker-pid``). ``DELIVERY_APP_MASK_SLEEP`` (seconds) adds a MASK_EVENT_MODEL that sleeps.
"""

from __future__ import annotations

import os
import time
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from moesif_otel import MoesifMiddleware


async def work(request: Request) -> PlainTextResponse:
    return PlainTextResponse(
        f"done {request.query_params.get('id', '')}", headers={"x-worker-pid": str(os.getpid())}
    )


def slow_mask(event: Any) -> Any:
    time.sleep(float(os.environ["DELIVERY_APP_MASK_SLEEP"]))
    return event


settings = {"MASK_EVENT_MODEL": slow_mask} if os.environ.get("DELIVERY_APP_MASK_SLEEP") else {}
routes = [Route("/work", work, methods=["GET", "POST"])]
if os.environ.get("DELIVERY_APP_LAZY") == "1":
    app = Starlette(routes=routes, middleware=[Middleware(MoesifMiddleware, settings=settings)])
else:
    app = MoesifMiddleware(Starlette(routes=routes), settings=settings)

"""Moesif governance on the ASGI side: decide before the app runs, answer for it when blocked.

The decision itself (which rules match, merge tags) is :mod:`moesif_otel.appconfig`'s; this
module gathers the facts it needs from the exchange and carries the decision out.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from moesif_otel.appconfig import AppConfig, RequestFacts
from moesif_otel.asgi_scope import request_headers, request_uri
from moesif_otel.identity import client_ip

if TYPE_CHECKING:
    from moesif_otel.capture import Exchange


def request_facts(exchange: Exchange, *, with_body: bool = False) -> RequestFacts:
    scope = exchange.scope
    headers = request_headers(scope)
    client = scope.get("client")
    uri = request_uri(scope)
    body: Any = None
    if with_body and exchange.request_body and exchange.request_complete:
        try:
            body = json.loads(bytes(exchange.request_body))
        except ValueError:
            body = None
    return RequestFacts(
        verb=scope.get("method", "GET"),
        uri=uri,
        path=urlsplit(uri).path or "/",
        ip=client_ip(headers, str(client[0]) if client else None),
        headers=headers,
        body=body,
        user_id=exchange.user_id,
        company_id=exchange.company_id,
    )


async def govern(exchange: Exchange, config: AppConfig) -> bool:
    """Apply the rules to this request. True when a rule blocked it and it has been answered."""
    if config.needs_body:
        await exchange.read_request_body()
    # hooks get no response yet (as in moesifasgi), and are not called again after the app
    await exchange.identify(_request_for_hooks(exchange), None)
    decision = config.govern(request_facts(exchange, with_body=config.needs_body))
    if decision is None:
        return False
    exchange.blocked_by = decision.blocked_by
    if not decision.blocked:
        exchange.extra_headers = decision.headers
        return False
    body = decision.body or b""
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in decision.headers]
    headers.append((b"content-length", str(len(body)).encode()))
    await exchange.send({"type": "http.response.start", "status": decision.status or 403, "headers": headers})
    await exchange.send({"type": "http.response.body", "body": body, "more_body": False})
    return True


def _request_for_hooks(exchange: Exchange) -> Any:
    if exchange.options.identify_user is None and exchange.options.identify_company is None:
        return None
    from moesif_otel.hook_args import hook_arguments  # starlette.requests kept off module load

    request, _ = hook_arguments(exchange, None)
    return request

"""What moesif_otel reads off an ASGI scope (request headers, URL), and header pairs as a map or as text.

Nothing of moesif_otel's imported but the leaf ``transaction_ids`` (its header name): capture,
governance, outgoing capture and the event converter share these, none through another stage's
module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

from starlette.types import Scope

from moesif_otel.transaction_ids import TRANSACTION_HEADER_NAME


def request_headers(scope: Scope) -> dict[str, str]:
    """The scope's headers as a map (for decisions made on the event loop)."""
    return header_dict(scope.get("headers", ()))


def header_dict(raw: Iterable[tuple[Any, Any]]) -> dict[str, str]:
    """Header pairs → lower-case names to values, repeated headers joined with ', '.

    Names and values are bytes (ASGI) or text; bytes are Latin-1 (see :func:`flat_headers`).
    """
    headers: dict[str, str] = {}
    for key, text in _decoded(raw):
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def flat_headers(raw: Any, transaction_id: str | None) -> str:
    """Headers as one ``name:value`` line each: one string attribute, cheap to set and to check.

    One attribute per header would cost the SDK's per-value validation on every request and run
    into its attribute-count limit. Names are lower-cased; the exporter joins repeated ones. The
    transaction id, when given, replaces any incoming value so both header maps carry the event's.
    Names and values are bytes (ASGI, httpx) or text (requests); bytes are Latin-1, which is
    lossless here: HTTP/1 clients and servers send nothing else.
    """
    lines: list[str] = []
    for key, text in _decoded(raw):
        if transaction_id is not None and key == TRANSACTION_HEADER_NAME:
            continue
        if "\n" in text:  # servers reject these; a hand-built scope might not
            text = text.replace("\r", " ").replace("\n", " ")
        lines.append(f"{key}:{text}")
    if transaction_id is not None:
        lines.append(f"{TRANSACTION_HEADER_NAME}:{transaction_id}")
    return "\n".join(lines)


def _decoded(raw: Iterable[tuple[Any, Any]]) -> Iterator[tuple[str, str]]:
    """(lower-case name, value) as text, from bytes (Latin-1) or text pairs."""
    for name, value in raw:
        try:
            yield name.decode("latin-1").lower(), value.decode("latin-1")
        except AttributeError:  # text: the bytes path stays as cheap as it was
            yield _header_text(name).lower(), _header_text(value)


def _header_text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


def request_uri(scope: Scope) -> str:
    """Full URL as the client asked for it: scheme, Host header (or server), raw path, query.

    An absolute-form target (``GET http://other.example:81/p HTTP/1.1``, RFC 9112 3.2.2), which
    servers pass through as the path, is that URL already.
    """
    raw_path = scope.get("raw_path")
    if raw_path:
        path = raw_path.decode("latin-1")
        if "?" in path:  # some servers include the query in raw_path
            path = path.split("?", 1)[0]
        absolute = not path.startswith("/") and "://" in path
    else:
        path = scope.get("path", "/")  # includes root_path (ASGI spec)
        absolute = not path.startswith("/") and "://" in path
        if not absolute:
            path = quote(path)
    uri = path if absolute else f"{scope.get('scheme') or 'http'}://{_host(scope)}{path}"
    query = scope.get("query_string", b"")
    return f"{uri}?{query.decode('latin-1')}" if query else uri


def _host(scope: Scope) -> str:
    """The Host header, else the server address (the port left out when it is the default)."""
    scheme = scope.get("scheme") or "http"
    host = None
    for name, value in scope.get("headers", ()):
        if name == b"host" or name.lower() == b"host":
            host = value.decode("latin-1")
            break
    if not host:
        server = scope.get("server")
        if server:
            address, port = server[0], server[1]
            default = (scheme in ("http", "ws") and port == 80) or (
                scheme in ("https", "wss") and port == 443
            )
            host = address if port is None or default else f"{address}:{port}"
        else:
            host = "localhost"
    return host

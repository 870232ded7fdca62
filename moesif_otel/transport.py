"""One HTTP request to the Moesif collector, on a kept-alive connection.

Standard library only: ``moesifapi``'s client has no timeouts, never retries a POST and keeps its
settings process-global, and ``requests`` would be traced by OTel's own ``requests``
instrumentation. Every call runs under ``suppress_instrumentation()`` so that no instrumentation
(http.client, urllib, ...) turns our uploads into spans that would be exported again.

Few socket calls per request: each one lets go of the GIL, and while the app's event loop is
busy, taking it back is a forced switch that interrupts the loop (its caches are cold after it).
So a request's head and body leave in one write, and an idle connection is checked for a close
only when it has been idle long enough for a server to have closed it.
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.utils import suppress_instrumentation

from moesif_otel._version import __version__

if TYPE_CHECKING:
    from moesif_otel.settings import Settings

__all__ = ["USER_AGENT", "HttpTransport", "Response", "TransportError", "collector_transport"]

USER_AGENT = f"moesif-otel-python/{__version__}"

# A collector's answer is a few bytes; a bound keeps a misbehaving proxy from filling memory.
_MAX_RESPONSE_BODY = 1 << 20

# Errors that mean "the server closed the kept-alive connection before answering": nothing was
# received, so the request may be repeated once on a fresh connection.
_STALE_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)

# A connection used this recently is sent on without checking for a close first: servers keep
# idle connections for seconds to minutes, and a close in between is caught as a stale error
# (above) and retried once anyway. The check is a socket call of its own (see the module doc).
_CHECK_IDLE_AFTER = 1.0

# Bodies up to this size are copied behind the request head to leave in one write.
_ONE_WRITE_MAX = 1 << 20


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names, repeated headers joined with ", "
    body: bytes


class TransportError(Exception):
    """Connection refused/reset, DNS, TLS, timeouts: the request may be retried.

    ``cause`` is a short stable label ("refused", "connect_timeout", "read_timeout", "dns", "tls",
    "connection", "protocol") so callers can log once per cause instead of once per batch.
    """

    def __init__(self, message: str, cause: str = "connection") -> None:
        super().__init__(message)
        self.cause = cause


def _classify(exc: BaseException, *, connecting: bool) -> str:
    if isinstance(exc, TimeoutError):
        return "connect_timeout" if connecting else "read_timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError):  # includes RemoteDisconnected, also an HTTPException
        return "connection"
    return "protocol"


def _readable(sock: socket.socket) -> bool:
    """True when an idle kept-alive socket has something to read: EOF (server closed) or junk."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)
    except (OSError, ValueError):
        return True


class _Connection(http.client.HTTPConnection):
    """http.client writes a request's head, then its body: here, the body set in ``body`` goes
    out with the head, in one write (one socket call)."""

    body = b""

    def send(self, data: Any) -> None:  # http.client hands over the head as bytes
        body, self.body = self.body, b""
        super().send(b"".join((data, body)) if body else data)


class _TlsConnection(_Connection, http.client.HTTPSConnection):
    pass


class HttpTransport:
    """One keep-alive connection, stdlib http.client, explicit timeouts.

    Not thread-safe: one per worker thread.
    """

    def __init__(
        self,
        base_uri: str,
        application_id: str,
        *,
        user_agent: str,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
    ) -> None:
        parts = urllib.parse.urlsplit(base_uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_uri must be an http:// or https:// URL, got {base_uri!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        # Explicit port: http.client mis-parses a bare IPv6 host when it has to find the port itself.
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._fixed_headers = {"X-Moesif-Application-Id": application_id, "User-Agent": user_agent}
        self._fixed_lower = {name.lower() for name in self._fixed_headers}
        self._ssl_context: ssl.SSLContext | None = None
        self._conn: _Connection | None = None
        self._used = 0.0  # monotonic time the connection last finished a request

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        with suppress_instrumentation():
            return self._request(method, path, body, headers)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken socket must not raise
                conn.close()

    # -- internals -----------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> Response:
        url = self._prefix + (path if path.startswith("/") else "/" + path)
        all_headers = {k: v for k, v in (headers or {}).items() if k.lower() not in self._fixed_lower}
        all_headers.update(self._fixed_headers)

        if body is not None:
            all_headers["Content-Length"] = str(len(body))
        reused = self._conn is not None
        if self._conn is not None and (
            self._conn.sock is None
            or (time.monotonic() - self._used >= _CHECK_IDLE_AFTER and _readable(self._conn.sock))
        ):
            self.close()  # the server closed it while idle: don't even try
            reused = False
        while True:
            conn = self._conn if self._conn is not None else self._connect()
            try:
                if body is not None and len(body) <= _ONE_WRITE_MAX:
                    conn.body = body
                    conn.request(method, url, headers=all_headers)
                else:
                    conn.request(method, url, body=body, headers=all_headers)
                resp = conn.getresponse()
            except _STALE_ERRORS as exc:
                self.close()
                if reused:
                    reused = False  # once, and only on a fresh connection
                    continue
                raise TransportError(f"{method} {url}: {exc!r}", _classify(exc, connecting=False)) from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise TransportError(f"{method} {url}: {exc!r}", _classify(exc, connecting=False)) from exc
            return self._read(resp, method, url)

    def _read(self, resp: http.client.HTTPResponse, method: str, url: str) -> Response:
        try:
            data = resp.read(_MAX_RESPONSE_BODY + 1)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TransportError(
                f"{method} {url}: reading the response: {exc!r}", _classify(exc, connecting=False)
            ) from exc
        headers: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if len(data) > _MAX_RESPONSE_BODY or resp.will_close or not resp.isclosed():
            # Body left unread, or the server announced it closes: the connection can't be reused.
            self.close()
        self._used = time.monotonic()
        return Response(status=resp.status, headers=headers, body=data[:_MAX_RESPONSE_BODY])

    def _connect(self) -> _Connection:
        conn: _Connection
        if self._https:
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            conn = _TlsConnection(
                self._host, self._port, timeout=self._connect_timeout, context=self._ssl_context
            )
        else:
            conn = _Connection(self._host, self._port, timeout=self._connect_timeout)
        try:
            conn.connect()  # TCP (and TLS handshake) bounded by the connect timeout
            conn.sock.settimeout(self._read_timeout)  # every later send/recv bounded by the read timeout
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportError(
                f"connecting to {self._host}:{self._port}: {exc!r}", _classify(exc, connecting=True)
            ) from exc
        self._conn = conn
        return conn


def collector_transport(settings: Settings) -> HttpTransport:
    """The one way moesif_otel connects to its collector (events, profiles, app config): BASE_URI,
    APPLICATION_ID and our User-Agent. A transport is not thread-safe: one per thread that uses it."""
    return HttpTransport(settings.collector_uri, settings.application_id, user_agent=USER_AGENT)

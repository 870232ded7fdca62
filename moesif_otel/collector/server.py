"""A local Moesif collector: what the tests, the demo and the benchmarks send events to.

It speaks the Moesif collector API (moesif-api.md §2), checks every event strictly (``schema``),
records everything it receives, and can misbehave on request (fail, delay, hang, refuse connections)
so delivery code can be tested against the failures it must survive.

Choices worth knowing:
- A batch with some invalid events is answered 400 ``{"errors": [...]}`` naming each problem, but its
  valid events are still recorded in ``events`` and the invalid ones in ``rejected``. A test then sees
  both what arrived and what was wrong, instead of an empty ``events`` list.
- POST bodies to ``/v1/*`` must be ``Content-Type: application/json`` (what moesifapi sends); plain,
  gzip or deflate encoded; at most 50 MB decoded (Moesif's batch limit).
- ``requests`` records a request when it arrives (``status`` None) and fills in the status when it is
  answered, so a test can wait until a hung request has reached the collector.
- Faults (``fail_next``, ``set_delay``, ``hang``) and the application id check never apply to the
  ``/_collector/*`` control endpoints, so a test can always reach them to undo a fault.
- ``batches`` holds one record per events POST that was processed (not for injected failures or 401s).
- ``config_fetches``/``rules_fetches`` count answered GETs of ``/v1/config`` and ``/v1/rules``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import urlsplit

from .format import format_event
from .schema import MAX_EVENT_BYTES, check_event

_log = logging.getLogger("moesif_otel.collector")

MAX_BODY_BYTES = 50 * 1024 * 1024
"""Moesif's batch limit, applied to the decoded body ("regardless if compression is used")."""

DEFAULT_CONFIG: dict[str, Any] = {
    "sample_rate": 100,
    "user_sample_rate": {},
    "company_sample_rate": {},
    "user_rules": {},
    "company_rules": {},
    "regex_config": [],
}
CONTROL_PREFIX = "/_collector/"
_POLL_INTERVAL = 0.05
_STOP_JOIN_SECONDS = 2.0

_EVENT_PATHS = {"/v1/events": False, "/v1/events/batch": True}
# path -> (record list, id field, batch?, other fields required)
_ENTITY_PATHS: dict[str, tuple[str, str, bool, tuple[str, ...]]] = {
    "/v1/users": ("users", "user_id", False, ()),
    "/v1/users/batch": ("users", "user_id", True, ()),
    "/v1/companies": ("companies", "company_id", False, ()),
    "/v1/companies/batch": ("companies", "company_id", True, ()),
    "/v1/subscriptions": ("subscriptions", "subscription_id", False, ("company_id", "status")),
    "/v1/subscriptions/batch": ("subscriptions", "subscription_id", True, ()),
}
_GET_PATHS = ("/v1/config", "/v1/rules", "/health/probe", CONTROL_PREFIX + "events", CONTROL_PREFIX + "state")
_POST_CONTROL_PATHS = tuple(CONTROL_PREFIX + name for name in ("reset", "fault", "config", "rules"))


@dataclass
class _Reply:
    status: int
    payload: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.reply = _Reply(status, {"errors": [message]})


@dataclass
class _Fault:
    remaining: int
    status: int
    retry_after: str | None
    path_prefix: str


class Collector:
    """A Moesif-compatible collector on a local port. Thread-safe; use as a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        application_id: str | None = None,
        out: TextIO | None = None,
        verbose: bool = False,
        max_events: int | None = None,
    ) -> None:
        """``max_events`` bounds memory for long runs (CLI, benchmarks): only the most recent that many
        accepted events are kept in ``events``; ``event_count`` still counts them all."""
        if max_events is not None and max_events < 0:
            raise ValueError("max_events must be >= 0")
        self.max_events = max_events
        self.host = host
        self.port = port
        self.application_id = application_id
        self._out = out
        self._verbose = verbose
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._out_lock = threading.Lock()
        self._conn_lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._server: _HTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._running = False
        self._refused = False
        self._stopping = threading.Event()
        self._released = threading.Event()
        self._released.set()
        self._generation = 0
        self._clear()

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Collector:
        with self._lock:
            if self._running:
                raise RuntimeError("collector already started")
            self._stopping.clear()
            if self._hanging:
                self._released.clear()
            self._bind()
            self._running = True
            self._refused = False
        return self

    def stop(self) -> None:
        """Stop serving. Never blocks on hung or delayed handlers: they are woken and their
        connections dropped without an answer."""
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._stopping.set()
            self._released.set()
            if not self._refused:
                self._unbind()
            self._refused = False
        self._drop_connections()
        deadline = time.monotonic() + _STOP_JOIN_SECONDS
        with self._conn_lock:
            threads = list(self._conns.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _bind(self) -> None:
        server_cls = _HTTPServer6 if ":" in self.host else _HTTPServer
        server = server_cls((self.host, self.port), _Handler, self)
        self.port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"moesif-collector-{self.port}",
            daemon=True,
        )
        thread.start()
        self._server, self._serve_thread = server, thread

    def _unbind(self) -> None:
        server, thread = self._server, self._serve_thread
        self._server = self._serve_thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    def _track(self, conn: socket.socket, thread: threading.Thread) -> None:
        with self._conn_lock:
            self._conns[conn] = thread

    def _untrack(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._conns.pop(conn, None)

    def _drop_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # --- recorded traffic --------------------------------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    @property
    def event_count(self) -> int:
        """Events accepted since start or ``reset()`` (including any ``max_events`` let go); cheaper
        than ``len(events)``, which copies the list."""
        with self._lock:
            return self._event_count

    @property
    def rejected(self) -> list[tuple[Any, list[str]]]:
        with self._lock:
            return list(self._rejected)

    @property
    def batches(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(b) for b in self._batches]

    @property
    def users(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entities["users"])

    @property
    def companies(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entities["companies"])

    @property
    def subscriptions(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entities["subscriptions"])

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._requests]

    @property
    def config_fetches(self) -> int:
        with self._lock:
            return self._config_fetches

    @property
    def rules_fetches(self) -> int:
        with self._lock:
            return self._rules_fetches

    def wait_for_events(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """All events once at least ``n`` have arrived; AssertionError with a diagnosis otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._event_count < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    arrived = self._event_count
                    raise AssertionError(
                        f"expected {n} events within {timeout}s, {arrived} arrived; {self._summary()}"
                    )
                self._changed.wait(remaining)
            return list(self._events)

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 10.0) -> None:
        """Poll ``predicate(self)`` until true; it runs outside the collector's lock."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                generation = self._generation
            if predicate(self):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {timeout}s; {self._summary()}")
            with self._changed:
                if self._generation == generation:
                    self._changed.wait(min(remaining, _POLL_INTERVAL))

    def _summary(self) -> str:
        with self._lock:
            statuses = Counter(str(r["status"]) for r in self._requests)
            text = (
                f"collector saw {self._event_count} events, {len(self._rejected)} rejected, "
                f"{len(self._batches)} event posts, requests by status {dict(statuses)}"
            )
            if self._rejected:
                text += f"; first rejection: {self._rejected[0][1]}"
            return text

    def reset(self) -> None:
        """Forget everything recorded, clear all faults (releasing hung requests and reopening a refused
        port) and serve the default config and rules again."""
        with self._lock:
            self._clear()
            self._notify()
            refused = self._refused and self._running
        if refused:
            self.accept()

    def _clear(self) -> None:
        with self._lock:
            self._events: list[dict[str, Any]] = []
            self._event_count = 0
            self._rejected: list[tuple[Any, list[str]]] = []
            self._batches: list[dict[str, Any]] = []
            self._entities: dict[str, list[dict[str, Any]]] = {
                "users": [],
                "companies": [],
                "subscriptions": [],
            }
            self._requests: list[dict[str, Any]] = []
            self._config_fetches = 0
            self._rules_fetches = 0
            self._faults: list[_Fault] = []
            self._delay = 0.0
            self._hanging = False
            self._released.set()
            self._config: Any = dict(DEFAULT_CONFIG)
            self._config_etag = _tag_of(self._config)
            self._rules: Any = []
            self._rules_tag = _tag_of(self._rules)

    def _notify(self) -> None:
        self._generation += 1
        self._changed.notify_all()

    # --- faults and app config ---------------------------------------------------------------------

    def fail_next(
        self, n: int, status: int = 503, *, retry_after: str | None = None, path_prefix: str = "/v1/events"
    ) -> None:
        """Answer the next ``n`` requests whose path starts with ``path_prefix`` with ``status``."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {status!r}")
        with self._lock:
            if n:
                self._faults.append(_Fault(n, status, retry_after, path_prefix))

    def set_delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        with self._lock:
            self._delay = float(seconds)

    def hang(self, enabled: bool = True) -> None:
        """Read requests but answer none until ``hang(False)``, ``reset()`` or ``stop()``."""
        with self._lock:
            self._hanging = enabled
            if enabled and not self._stopping.is_set():
                self._released.clear()
            else:
                self._released.set()

    def refuse(self) -> None:
        """Close the listening socket and drop open connections, as if the collector went away."""
        with self._lock:
            if not self._running or self._refused:
                return
            self._unbind()
            self._refused = True
        self._drop_connections()

    def accept(self) -> None:
        """Listen again on the same port after ``refuse()``."""
        with self._lock:
            if not self._running or not self._refused:
                return
            self._bind()
            self._refused = False

    def set_config(self, config: dict[str, Any], etag: str | None = None) -> None:
        with self._lock:
            self._config = config
            self._config_etag = etag if etag is not None else _tag_of(config)

    def set_rules(self, rules: list[Any], tag: str | None = None) -> None:
        with self._lock:
            self._rules = rules
            self._rules_tag = tag if tag is not None else _tag_of(rules)

    # --- request handling (called from handler threads) --------------------------------------------

    def _arrived(self, method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
        record = {"method": method, "path": path, "status": None, "headers": headers}
        with self._lock:
            self._requests.append(record)
            self._notify()
        return record

    def _answered(self, record: dict[str, Any], status: int) -> None:
        with self._lock:
            record["status"] = status
            self._notify()

    def _respond(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> _Reply | None:
        """The answer to one request, or None when the collector stopped before answering."""
        if path.startswith(CONTROL_PREFIX):
            return self._control(method, path, raw)
        self._released.wait()
        if self._stopping.is_set():
            return None
        with self._lock:
            delay = self._delay
        if delay > 0 and self._stopping.wait(delay):
            return None
        fault = self._take_fault(path)
        if fault is not None:
            return fault
        if (
            path.startswith("/v1/")
            and self.application_id is not None
            and headers.get("x-moesif-application-id") != self.application_id
        ):
            return _Reply(401, {"errors": ["missing or wrong X-Moesif-Application-Id"]})
        try:
            return self._route(method, path, headers, raw)
        except _HTTPError as exc:
            return exc.reply

    def _take_fault(self, path: str) -> _Reply | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault.path_prefix):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                    return _Reply(fault.status, {"errors": ["injected fault"]}, headers)
        return None

    def _route(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> _Reply:
        if path in _EVENT_PATHS or path in _ENTITY_PATHS:
            if method != "POST":
                return _Reply(405, {"errors": [f"{method} not allowed on {path}"]}, {"Allow": "POST"})
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if path in _EVENT_PATHS:
                return self._post_events(path, headers, raw, media_type, batch=_EVENT_PATHS[path])
            if media_type != "application/json":
                raise _HTTPError(400, f"Content-Type must be application/json, got {media_type or 'none'!r}")
            return self._post_entities(path, _json_body(raw, headers))
        if path in _GET_PATHS:
            if method != "GET":
                return _Reply(405, {"errors": [f"{method} not allowed on {path}"]}, {"Allow": "GET"})
            with self._lock:
                if path == "/v1/config":
                    self._config_fetches += 1
                    return _Reply(200, self._config, {"X-Moesif-Config-ETag": self._config_etag})
                if path == "/v1/rules":
                    self._rules_fetches += 1
                    return _Reply(200, self._rules, {"X-Moesif-Rules-Tag": self._rules_tag})
            return _Reply(200, {"status": True, "region": "local"})
        return _Reply(404, {"errors": [f"no such endpoint: {method} {path}"]})

    def _post_events(
        self, path: str, headers: dict[str, str], raw: bytes, media_type: str, *, batch: bool
    ) -> _Reply:
        accepted: list[dict[str, Any]] = []
        rejected: list[tuple[Any, list[str]]] = []
        errors: list[str] = []
        status = 201
        try:
            if media_type != "application/json":
                raise _HTTPError(400, f"Content-Type must be application/json, got {media_type or 'none'!r}")
            data = _decode_body(raw, headers)
            payload = _parse_json(data)
            if batch and not isinstance(payload, list):
                raise _HTTPError(400, f"{path} expects a JSON array of events")
            if not batch and not isinstance(payload, dict):
                raise _HTTPError(400, f"{path} expects one JSON event object")
        except _HTTPError as exc:
            self._record_batch(path, headers, raw, 0, exc.reply.status)
            return exc.reply
        items = payload if batch else [payload]
        check_size = len(data) > MAX_EVENT_BYTES
        for index, event in enumerate(items):
            problems = check_event(event, check_size=check_size)
            if problems:
                rejected.append((event, problems))
                prefix = f"event[{index}]: " if batch else ""
                errors.extend(prefix + problem for problem in problems)
            else:
                accepted.append(event)
        if errors:
            status = 400
        with self._lock:
            self._events.extend(accepted)
            self._event_count += len(accepted)
            if self.max_events is not None and len(self._events) > self.max_events:
                del self._events[: len(self._events) - self.max_events]
            self._rejected.extend(rejected)
            self._record_batch(path, headers, raw, len(items), status)
            tags = {"X-Moesif-Config-ETag": self._config_etag, "X-Moesif-Rules-Tag": self._rules_tag}
        if self._out is not None:
            self._print_events(accepted, rejected)
        if errors:
            return _Reply(400, {"errors": errors}, tags)
        return _Reply(201, {}, tags)

    def _record_batch(self, path: str, headers: dict[str, str], raw: bytes, count: int, status: int) -> None:
        with self._lock:
            self._batches.append(
                {
                    "path": path,
                    "headers": headers,
                    "count": count,
                    "content_encoding": headers.get("content-encoding"),
                    "bytes": len(raw),
                    "status": status,
                }
            )
            self._notify()

    def _post_entities(self, path: str, payload: Any) -> _Reply:
        kind, id_field, batch, also_required = _ENTITY_PATHS[path]
        if batch and not isinstance(payload, list):
            raise _HTTPError(400, f"{path} expects a JSON array")
        if not batch and not isinstance(payload, dict):
            raise _HTTPError(400, f"{path} expects one JSON object")
        items = payload if batch else [payload]
        accepted: list[dict[str, Any]] = []
        errors: list[str] = []
        for index, item in enumerate(items):
            prefix = f"{kind}[{index}]: " if batch else ""
            if not isinstance(item, dict):
                errors.append(f"{prefix}must be a JSON object")
                continue
            missing = [
                key
                for key in (id_field, *also_required)
                if not isinstance(item.get(key), str) or not item[key]
            ]
            if missing:
                errors.extend(f"{prefix}{key}: missing (required non-empty string)" for key in missing)
            else:
                accepted.append(item)
        with self._lock:
            self._entities[kind].extend(accepted)
            self._notify()
        if self._out is not None and accepted:
            self._write([f"{kind[:-1]} {id_field}={item[id_field]}" for item in accepted])
        return _Reply(400, {"errors": errors}) if errors else _Reply(201)

    def _print_events(self, accepted: list[dict[str, Any]], rejected: list[tuple[Any, list[str]]]) -> None:
        lines = []
        for event in accepted:
            lines.append(format_event(event))
            if self._verbose:
                lines.append(json.dumps(event, indent=2, ensure_ascii=False))
        for event, problems in rejected:
            lines.append(f"REJECTED {format_event(event)}: {'; '.join(problems)}")
            if self._verbose:
                lines.append(json.dumps(event, indent=2, ensure_ascii=False, default=repr))
        self._write(lines)

    def _write(self, lines: list[str]) -> None:
        out = self._out
        if out is None or not lines:
            return
        with self._out_lock:
            try:
                out.write("\n".join(lines) + "\n")
                out.flush()
            except (OSError, ValueError):
                _log.debug("collector output stream failed", exc_info=True)

    # --- control endpoints -------------------------------------------------------------------------

    def _control(self, method: str, path: str, raw: bytes) -> _Reply:
        try:
            if path in _GET_PATHS:
                if method != "GET":
                    return _Reply(405, {"errors": [f"{method} not allowed on {path}"]}, {"Allow": "GET"})
                return _Reply(200, self.events if path.endswith("/events") else self._state())
            if path not in _POST_CONTROL_PATHS:
                return _Reply(404, {"errors": [f"no such control endpoint: {path}"]})
            if method != "POST":
                return _Reply(405, {"errors": [f"{method} not allowed on {path}"]}, {"Allow": "POST"})
            body = _parse_json(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise _HTTPError(400, "control body must be a JSON object")
            name = path[len(CONTROL_PREFIX) :]
            if name == "reset":
                self.reset()
            elif name == "fault":
                self._apply_fault(body)
            elif name == "config":
                self.set_config(body.get("config", dict(DEFAULT_CONFIG)), body.get("etag"))
            else:
                self.set_rules(body.get("rules", []), body.get("tag"))
            return _Reply(200)
        except (ValueError, TypeError) as exc:
            return _Reply(400, {"errors": [str(exc)]})
        except _HTTPError as exc:
            return exc.reply

    def _apply_fault(self, body: dict[str, Any]) -> None:
        unknown = set(body) - {"fail_next", "status", "retry_after", "path_prefix", "delay", "hang"}
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        if "fail_next" in body:
            retry_after = body.get("retry_after")
            self.fail_next(
                body["fail_next"],
                body.get("status", 503),
                retry_after=None if retry_after is None else str(retry_after),
                path_prefix=body.get("path_prefix", "/v1/events"),
            )
        if "delay" in body:
            self.set_delay(float(body["delay"]))
        if "hang" in body:
            self.hang(bool(body["hang"]))

    def _state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "events": list(self._events),
                "event_count": self._event_count,
                "rejected": [{"event": event, "problems": problems} for event, problems in self._rejected],
                "batches": [dict(b) for b in self._batches],
                "users": list(self._entities["users"]),
                "companies": list(self._entities["companies"]),
                "subscriptions": list(self._entities["subscriptions"]),
                "requests": [dict(r) for r in self._requests],
                "config_fetches": self._config_fetches,
                "rules_fetches": self._rules_fetches,
            }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() joins handler threads itself, with a deadline
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[_Handler], collector: Collector) -> None:
        self.collector = collector
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on a misconfigured resolver.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="moesif-collector-conn",
            daemon=True,
        )
        self.collector._track(request, thread)
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        self.collector._untrack(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("collector connection from %s failed", client_address, exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MoesifLocalCollector"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _HTTPServer

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("%s %s", self.address_string(), format % args)

    def _serve(self) -> None:
        collector = self.server.collector
        headers = _lower_headers(self.headers)
        record = collector._arrived(self.command, self.path, headers)
        try:
            raw = self._read_body(headers)
        except _HTTPError as exc:
            self.close_connection = True
            self._send(record, exc.reply)
            return
        if raw is None:  # the client went away mid-body
            self.close_connection = True
            return
        reply = collector._respond(self.command, urlsplit(self.path).path, headers, raw)
        if reply is None:
            self.close_connection = True
            return
        self._send(record, reply)

    def _read_body(self, headers: dict[str, str]) -> bytes | None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length = headers.get("content-length")
        if length is None:
            return b""
        try:
            size = int(length)
            if size < 0:
                raise ValueError
        except ValueError:
            raise _HTTPError(400, f"invalid Content-Length {length!r}") from None
        if size > MAX_BODY_BYTES:
            raise _HTTPError(413, f"body of {size} bytes exceeds the {MAX_BODY_BYTES} byte limit")
        data = self.rfile.read(size)
        return data if len(data) == size else None

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            if not line:
                return None
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _HTTPError(400, "malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise _HTTPError(413, f"body exceeds the {MAX_BODY_BYTES} byte limit")
            data = self.rfile.read(size)
            if len(data) < size:
                return None
            chunks.append(data)
            self.rfile.readline(3)

    def _send(self, record: dict[str, Any], reply: _Reply) -> None:
        body = json.dumps(reply.payload, separators=(",", ":"), default=repr).encode("utf-8")
        # Recorded before writing, so a client that has its answer always finds it in ``requests``.
        self.server.collector._answered(record, reply.status)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True


def _lower_headers(message: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in message.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _decode_body(raw: bytes, headers: dict[str, str]) -> bytes:
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding in ("gzip", "x-gzip"):
        return _inflate(raw, zlib.MAX_WBITS | 16, "gzip")
    if encoding == "deflate":
        try:
            return _inflate(raw, zlib.MAX_WBITS, "deflate")
        except _HTTPError:
            return _inflate(raw, -zlib.MAX_WBITS, "deflate")  # raw deflate, as some clients send
    raise _HTTPError(400, f"unsupported Content-Encoding {encoding!r}")


def _inflate(raw: bytes, wbits: int, name: str) -> bytes:
    """Decompress with the 50 MB bound enforced on the output (a small body can inflate hugely)."""
    out: list[bytes] = []
    total = 0
    data = raw
    try:
        while True:
            inflater = zlib.decompressobj(wbits)
            chunk = inflater.decompress(data, MAX_BODY_BYTES + 1 - total)
            total += len(chunk)
            out.append(chunk)
            if total > MAX_BODY_BYTES or inflater.unconsumed_tail:
                raise _HTTPError(413, f"decoded body exceeds the {MAX_BODY_BYTES} byte limit")
            if not inflater.eof:
                raise _HTTPError(400, f"truncated {name} body")
            data = inflater.unused_data
            if name != "gzip" or not data:  # only gzip allows several members back to back
                break
    except zlib.error as exc:
        raise _HTTPError(400, f"body is not valid {name} data ({exc})") from None
    return b"".join(out)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise _HTTPError(400, f"body is not UTF-8 ({exc})") from None
    except ValueError as exc:
        raise _HTTPError(400, f"invalid JSON: {exc}") from None


def _json_body(raw: bytes, headers: dict[str, str]) -> Any:
    return _parse_json(_decode_body(raw, headers))


def _tag_of(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=repr).encode("utf-8")).hexdigest()[:16]

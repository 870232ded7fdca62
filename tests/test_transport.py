"""HttpTransport against a real HTTP server on 127.0.0.1 (ephemeral port)."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from moesif_otel import __version__
from moesif_otel import transport as transport_module
from moesif_otel.collector import Collector
from moesif_otel.settings import Settings
from moesif_otel.transport import USER_AGENT, HttpTransport, Response, TransportError, collector_transport


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    client_port: int

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Action:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    close_after: bool = False  # close the connection after answering, without saying so
    drop: bool = False  # close the connection without answering
    hang: float = 0.0  # wait (until released) before answering


class Server:
    """Records every request; answers from a script of Actions (default: 200, empty body)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.script: deque[Action] = deque()
        self.release = threading.Event()
        self.closed_connections = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                owner.seen.append(
                    Seen(self.command, self.path, list(self.headers.items()), body, self.client_address[1])
                )
                action = owner.script.popleft() if owner.script else Action()
                if action.hang:
                    owner.release.wait(action.hang)
                if action.drop:
                    self.close_connection = True
                    return
                self.send_response(action.status)
                for name, value in action.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(action.body)))
                self.end_headers()
                self.wfile.write(action.body)
                if action.close_after:
                    self.close_connection = True

            do_GET = do_POST = _handle

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that time out and leave are expected here

            def shutdown_request(self, request: socket.socket) -> None:
                super().shutdown_request(request)
                owner.closed_connections += 1

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def make_transport() -> Iterator:
    made: list[HttpTransport] = []

    def make(base_uri: str, **kwargs: float) -> HttpTransport:
        transport = HttpTransport(base_uri, "app-id-123", user_agent="moesif-otel-test/1", **kwargs)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


def test_sends_app_id_user_agent_and_caller_headers(server: Server, make_transport) -> None:
    transport = make_transport(server.url)
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "user-agent": "caller must not override",
    }
    response = transport.request("POST", "/v1/events/batch", b"\x1f\x8bpayload", headers)

    assert response.status == 200
    (seen,) = server.seen
    assert (seen.method, seen.path, seen.body) == ("POST", "/v1/events/batch", b"\x1f\x8bpayload")
    assert seen.header("X-Moesif-Application-Id") == ["app-id-123"]
    assert seen.header("User-Agent") == ["moesif-otel-test/1"]
    assert seen.header("Content-Encoding") == ["gzip"]
    assert seen.header("Content-Type") == ["application/json"]
    assert seen.header("Content-Length") == [str(len(b"\x1f\x8bpayload"))]


@pytest.mark.parametrize("prefix", ["/collector", "/collector/"])
def test_base_uri_path_prefix_is_kept(server: Server, make_transport, prefix: str) -> None:
    transport = make_transport(server.url + prefix)
    transport.request("POST", "/v1/events/batch", b"[]")
    transport.request("GET", "/v1/config")
    assert [s.path for s in server.seen] == ["/collector/v1/events/batch", "/collector/v1/config"]
    assert server.seen[1].body == b""


def test_response_headers_lower_case_and_repeated_joined(server: Server, make_transport) -> None:
    server.script.append(
        Action(
            status=201,
            headers=(("X-Moesif-Config-ETag", "abc"), ("X-Multi", "1"), ("x-multi", "2")),
            body=b'{"ok":true}',
        )
    )
    response = make_transport(server.url).request("POST", "/v1/events/batch", b"[]")
    assert isinstance(response, Response)
    assert response.status == 201
    assert response.body == b'{"ok":true}'
    assert response.headers["x-moesif-config-etag"] == "abc"
    assert response.headers["x-multi"] == "1, 2"
    assert all(name == name.lower() for name in response.headers)


def test_connection_is_kept_alive(server: Server, make_transport) -> None:
    transport = make_transport(server.url)
    for _ in range(5):
        assert transport.request("POST", "/v1/events/batch", b"[]").status == 200
    assert len({s.client_port for s in server.seen}) == 1


@pytest.mark.parametrize("idle_check_due", [True, False])
def test_reconnects_after_server_closed_idle_connection(
    server: Server, make_transport, monkeypatch: pytest.MonkeyPatch, idle_check_due: bool
) -> None:
    # Due: the check before sending sees the close. Not due (the connection was just used): the
    # send or the wait for the answer fails, and the request is repeated on a fresh connection.
    if idle_check_due:
        monkeypatch.setattr(transport_module, "_CHECK_IDLE_AFTER", 0.0)
    else:
        monkeypatch.setattr(transport_module, "_CHECK_IDLE_AFTER", 3600.0)
    transport = make_transport(server.url)
    server.script.append(Action(close_after=True))
    transport.request("POST", "/v1/events/batch", b"first")
    assert transport.request("POST", "/v1/events/batch", b"second").status == 200
    assert [s.body for s in server.seen] == [b"first", b"second"]
    assert server.seen[0].client_port != server.seen[1].client_port


def test_stale_connection_undetected_before_send_is_retried_once_on_fresh_one(
    server: Server, make_transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Make the pre-send check miss the close, so the failure happens while sending/awaiting.
    monkeypatch.setattr(transport_module, "_readable", lambda sock: False)
    transport = make_transport(server.url)
    server.script.append(Action(close_after=True))
    transport.request("POST", "/v1/events/batch", b"first")
    deadline = time.monotonic() + 5
    while server.closed_connections < 1 and time.monotonic() < deadline:  # the server closed it
        time.sleep(0.01)
    assert server.closed_connections == 1
    assert transport.request("POST", "/v1/events/batch", b"second").status == 200
    assert [s.body for s in server.seen] == [b"first", b"second"]


def test_a_recently_used_connection_is_not_checked_before_sending(
    server: Server, make_transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[socket.socket] = []
    monkeypatch.setattr(transport_module, "_readable", lambda sock: checked.append(sock) or False)
    transport = make_transport(server.url)
    for _ in range(3):
        assert transport.request("POST", "/v1/events/batch", b"[]").status == 200
    assert checked == []  # each socket call costs the app's event loop a GIL switch
    monkeypatch.setattr(transport_module, "_CHECK_IDLE_AFTER", 0.0)  # now idle long enough
    assert transport.request("POST", "/v1/events/batch", b"[]").status == 200
    assert len(checked) == 1
    assert len({s.client_port for s in server.seen}) == 1


def _recording_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    writes: list[bytes] = []
    real_send = http.client.HTTPConnection.send

    def send(conn: http.client.HTTPConnection, data: bytes) -> None:
        writes.append(bytes(data))
        real_send(conn, data)

    monkeypatch.setattr(http.client.HTTPConnection, "send", send)
    return writes


def test_request_head_and_body_leave_in_one_write(
    server: Server, make_transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = _recording_writes(monkeypatch)
    transport = make_transport(server.url)
    body = bytes(range(256)) * 200
    assert transport.request("POST", "/v1/events/batch", body, {"Content-Encoding": "gzip"}).status == 200
    assert transport.request("GET", "/v1/config").status == 200
    assert len(writes) == 2
    head, _, sent = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/events/batch HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 51200" in head and b"\r\nContent-Encoding: gzip" in head
    assert sent == body
    assert writes[1].startswith(b"GET /v1/config HTTP/1.1\r\n") and writes[1].endswith(b"\r\n\r\n")
    assert [s.body for s in server.seen] == [body, b""]
    assert server.seen[1].header("Content-Length") == []


def test_a_body_over_the_one_write_size_goes_in_its_own_write(
    server: Server, make_transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "_ONE_WRITE_MAX", 1000)  # not copied behind the head
    writes = _recording_writes(monkeypatch)
    body = b"y" * 1001
    assert make_transport(server.url).request("POST", "/v1/events/batch", body).status == 200
    assert len(writes) == 2 and writes[1] == body
    assert server.seen[0].body == body


def test_reused_connection_dropped_after_request_is_retried_once(server: Server, make_transport) -> None:
    transport = make_transport(server.url)
    transport.request("POST", "/v1/events/batch", b"warm-up")
    server.script.append(Action(drop=True))  # kept-alive connection dies without an answer
    assert transport.request("POST", "/v1/events/batch", b"payload").status == 200
    assert [s.body for s in server.seen] == [b"warm-up", b"payload", b"payload"]
    assert server.seen[1].client_port != server.seen[2].client_port


def test_fresh_connection_dropped_is_an_error_not_retried(server: Server, make_transport) -> None:
    transport = make_transport(server.url)
    server.script.append(Action(drop=True))
    with pytest.raises(TransportError) as info:
        transport.request("POST", "/v1/events/batch", b"payload")
    assert info.value.cause == "connection"
    assert len(server.seen) == 1
    assert transport.request("POST", "/v1/events/batch", b"again").status == 200  # usable afterwards


def test_read_timeout_on_hung_server(server: Server, make_transport) -> None:
    transport = make_transport(server.url, read_timeout=0.3)
    server.script.append(Action(hang=10))
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        transport.request("POST", "/v1/events/batch", b"[]")
    assert info.value.cause == "read_timeout"
    assert time.monotonic() - started < 3
    server.release.set()
    assert transport.request("POST", "/v1/events/batch", b"[]").status == 200


def test_connection_refused(make_transport) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = make_transport(f"http://127.0.0.1:{port}")
    with pytest.raises(TransportError) as info:
        transport.request("POST", "/v1/events/batch", b"[]")
    assert info.value.cause == "refused"


def test_https_speaks_tls(server: Server, make_transport) -> None:
    transport = make_transport(f"https://127.0.0.1:{server.port}", connect_timeout=2, read_timeout=2)
    with pytest.raises(TransportError) as info:
        transport.request("POST", "/v1/events/batch", b"[]")  # a plain-HTTP server can't do the handshake
    assert info.value.cause == "tls"


def test_requests_run_with_instrumentation_suppressed(
    server: Server, make_transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    observed: list[bool] = []
    original = http.client.HTTPConnection.getresponse

    def spy(self: http.client.HTTPConnection) -> http.client.HTTPResponse:
        observed.append(is_instrumentation_enabled())
        return original(self)

    monkeypatch.setattr(http.client.HTTPConnection, "getresponse", spy)
    make_transport(server.url).request("POST", "/v1/events/batch", b"[]")
    assert observed == [False]
    assert is_instrumentation_enabled()


@pytest.mark.parametrize("uri", ["ftp://example.com", "api.moesif.net", "http://"])
def test_rejects_unusable_base_uri(uri: str) -> None:
    with pytest.raises(ValueError):
        HttpTransport(uri, "id", user_agent="ua")


def test_the_one_collector_transport_sends_the_settings_app_id_and_our_user_agent() -> None:
    with Collector() as collector:
        settings = Settings.from_mapping({"APPLICATION_ID": "factory-app", "BASE_URI": collector.url})
        transport = collector_transport(settings)
        try:
            assert transport.request("GET", "/v1/config").status == 200
        finally:
            transport.close()
        [request] = collector.requests
    assert (request["method"], request["path"]) == ("GET", "/v1/config")
    assert request["headers"]["x-moesif-application-id"] == "factory-app"
    assert request["headers"]["user-agent"] == USER_AGENT == f"moesif-otel-python/{__version__}"

"""Delivery against a real HTTP collector stand-in on 127.0.0.1 (ephemeral port)."""

from __future__ import annotations

import email.utils
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from moesif_otel.delivery import Delivery, parse_retry_after
from moesif_otel.transport import HttpTransport, Response

PATH = "/v1/events/batch"
LOGGER = "moesif_otel.delivery"


@dataclass
class Seen:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int


@dataclass
class Answer:
    status: int = 201
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    hang: bool = False  # wait until released (or 10 s), then answer


class Collector:
    """Records requests (with arrival time and concurrency); answers from a script, default 201."""

    def __init__(self, port: int = 0) -> None:
        self.seen: list[Seen] = []
        self.script: deque[Answer] = deque()
        self.default = Answer()
        self.delay = 0.0
        self.release = threading.Event()
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner._lock:
                    owner.seen.append(
                        Seen(time.monotonic(), self.path, dict(self.headers), body, self.client_address[1])
                    )
                    answer = owner.script.popleft() if owner.script else owner.default
                    owner.active += 1
                    owner.max_active = max(owner.max_active, owner.active)
                try:
                    if answer.hang:
                        owner.release.wait(10)
                    elif owner.delay:
                        owner.release.wait(owner.delay)
                    self.send_response(answer.status)
                    for name, value in answer.headers:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                finally:
                    with owner._lock:
                        owner.active -= 1

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that timed out and left are expected

        self.httpd = Quiet(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def fail(self, times: int, status: int, *headers: tuple[str, str], body: bytes = b"") -> None:
        self.script.extend(Answer(status, headers, body) for _ in range(times))

    def bodies(self) -> list[bytes]:
        with self._lock:
            return [s.body for s in self.seen]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def delivery_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "-delivery-" in t.name and t.name.startswith("t-")]


@pytest.fixture
def collector() -> Iterator[Collector]:
    srv = Collector()
    yield srv
    srv.close()


@pytest.fixture
def make_delivery(collector: Collector) -> Iterator[Callable[..., Delivery]]:
    made: list[Delivery] = []

    def make(url: str | None = None, read_timeout: float = 5.0, **kwargs: object) -> Delivery:
        base = url or collector.url

        def factory() -> HttpTransport:
            return HttpTransport(
                base, "app-1", user_agent="ua-test", connect_timeout=1, read_timeout=read_timeout
            )

        kwargs.setdefault("backoff_initial", 0.01)
        kwargs.setdefault("backoff_max", 0.05)
        kwargs.setdefault("name", f"t-{len(made)}")
        delivery = Delivery(factory, **kwargs)  # type: ignore[arg-type]
        made.append(delivery)
        return delivery

    yield make
    collector.release.set()  # let hung requests finish so the workers can exit
    for delivery in made:
        delivery.shutdown(5)
    assert wait_for(lambda: not delivery_threads()), f"leaked threads: {delivery_threads()}"


# -- basics --------------------------------------------------------------------------------------


def test_delivers_with_headers_and_counts(collector: Collector, make_delivery) -> None:
    responses: list[Response] = []
    collector.default = Answer(201, (("X-Moesif-Config-ETag", "etag-1"),))
    delivery = make_delivery(on_response=responses.append)
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}

    assert delivery.submit(PATH, b"payload", count=3, headers=headers)
    assert delivery.flush(5)

    (seen,) = collector.seen
    assert (seen.path, seen.body) == (PATH, b"payload")
    assert seen.headers["X-Moesif-Application-Id"] == "app-1"
    assert seen.headers["User-Agent"] == "ua-test"
    assert seen.headers["Content-Encoding"] == "gzip"
    assert [(r.status, r.headers.get("x-moesif-config-etag")) for r in responses] == [(201, "etag-1")]
    stats = delivery.stats()
    assert stats["queued"] == 3 and stats["sent"] == 3 and stats["batches_sent"] == 1
    assert stats["in_flight"] == 0 and stats["pending_batches"] == 0 and stats["retried"] == 0


def test_threads_start_lazily_and_are_named(collector: Collector, make_delivery) -> None:
    delivery = make_delivery(workers=3, name="t-lazy")
    assert not delivery_threads()
    delivery.submit(PATH, b"x", count=1)
    assert sorted(t.name for t in delivery_threads()) == [f"t-lazy-delivery-{i}" for i in range(3)]
    assert all(t.daemon for t in delivery_threads())
    assert delivery.flush(5)


def test_keep_alive_one_connection_per_worker(collector: Collector, make_delivery) -> None:
    delivery = make_delivery(workers=2)
    for i in range(50):
        assert delivery.submit(PATH, b"%d" % i, count=1)
    assert delivery.flush(5)
    assert len(collector.seen) == 50
    assert len({s.client_port for s in collector.seen}) <= 2


# -- retries -------------------------------------------------------------------------------------


def test_503_then_success_is_delivered_once_and_counted_as_retried(
    collector: Collector, make_delivery
) -> None:
    statuses: list[int] = []
    collector.fail(3, 503)
    delivery = make_delivery(on_response=lambda r: statuses.append(r.status))

    assert delivery.submit(PATH, b"batch", count=10)
    assert delivery.flush(5)

    assert collector.bodies() == [b"batch"] * 4
    assert statuses == [503, 503, 503, 201]
    stats = delivery.stats()
    assert (stats["sent"], stats["batches_sent"], stats["retried"]) == (10, 1, 30)
    assert stats["dropped_rejected"] == stats["dropped_retry_exhausted"] == 0


def test_retry_after_seconds_is_honoured_for_every_batch(collector: Collector, make_delivery) -> None:
    collector.fail(1, 429, ("Retry-After", "1"))
    delivery = make_delivery(workers=2)

    delivery.submit(PATH, b"first", count=1)
    assert wait_for(lambda: delivery.stats()["retried"] == 1)
    delivery.submit(PATH, b"second", count=1)  # the server asked everyone to wait, not just one batch
    assert delivery.flush(5)

    first, *later = collector.seen
    assert sorted(s.body for s in later) == [b"first", b"second"]
    assert all(s.at - first.at >= 0.95 for s in later), [s.at - first.at for s in later]


def test_retry_after_http_date_is_honoured(collector: Collector, make_delivery) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s from now
    collector.fail(1, 503, ("Retry-After", when))
    delivery = make_delivery()
    delivery.submit(PATH, b"x", count=1)
    assert delivery.flush(5)
    first, second = collector.seen
    assert second.at - first.at >= 0.95


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 2 ") == 2.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    for junk in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(junk) is None


def test_hung_server_times_out_and_backlog_is_delivered_after_recovery(
    collector: Collector, make_delivery, caplog: pytest.LogCaptureFixture
) -> None:
    collector.script.append(Answer(hang=True))
    delivery = make_delivery(read_timeout=0.3, workers=1)

    started = time.monotonic()
    assert delivery.submit(PATH, b"a", count=1)
    assert delivery.submit(PATH, b"b", count=1)
    assert time.monotonic() - started < 0.1  # submit never waits for the network
    assert delivery.flush(5)

    assert sorted(collector.bodies()) == [b"a", b"a", b"b"]
    assert delivery.stats()["sent"] == 2 and delivery.stats()["retried"] == 1
    assert any("read_timeout" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_refused_connection_then_recovery(make_delivery, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    delivery = make_delivery(url=f"http://127.0.0.1:{port}", backoff_initial=0.05)
    assert delivery.submit(PATH, b"late", count=2)
    assert wait_for(lambda: delivery.stats()["retried"] >= 4)

    late = Collector(port)
    try:
        assert delivery.flush(5)
        assert late.bodies() == [b"late"]
    finally:
        late.close()
    assert delivery.stats()["sent"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([m for m in warnings if "refused" in m]) == 1  # once, not once per attempt


def test_waiting_retry_does_not_occupy_the_only_worker(collector: Collector, make_delivery) -> None:
    collector.fail(1, 503)
    delivery = make_delivery(workers=1, backoff_initial=2.0, backoff_max=2.0)  # retry in 1 to 2 s

    delivery.submit(PATH, b"A", count=1)
    assert wait_for(lambda: delivery.stats()["retried"] == 1)
    delivery.submit(PATH, b"B", count=1)
    assert wait_for(lambda: collector.bodies() == [b"A", b"B"], timeout=0.9)
    assert delivery.flush(5)
    assert collector.bodies() == [b"A", b"B", b"A"]


def test_retry_exhausted_is_counted(collector: Collector, make_delivery, caplog) -> None:
    collector.default = Answer(503)
    delivery = make_delivery(max_retry_seconds=0.3)
    delivery.submit(PATH, b"x", count=4)
    delivery.submit(PATH, b"y", count=5)
    assert delivery.flush(5)
    stats = delivery.stats()
    assert stats["dropped_retry_exhausted"] == 9 and stats["sent"] == 0 and stats["in_flight"] == 0
    assert len(collector.seen) > 2
    assert len([r for r in caplog.records if "gave up" in r.getMessage()]) == 1


# -- not retried ---------------------------------------------------------------------------------


def test_401_not_retried_and_logged_once(collector: Collector, make_delivery, caplog) -> None:
    collector.fail(2, 401, body=b'{"message":"bad app id"}')
    delivery = make_delivery()
    delivery.submit(PATH, b"one", count=2)
    delivery.submit(PATH, b"two", count=3)
    assert delivery.flush(5)

    assert sorted(collector.bodies()) == [b"one", b"two"]
    stats = delivery.stats()
    assert stats["dropped_rejected"] == 5 and stats["retried"] == 0 and stats["sent"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "401" in warnings[0] and "the application id is wrong" in warnings[0]


def test_400_logs_the_collector_answer_truncated(collector: Collector, make_delivery, caplog) -> None:
    answer = b"field 'request.time' is invalid " + b"x" * 5000
    collector.fail(1, 400, body=answer)
    collector.fail(1, 413)
    delivery = make_delivery(workers=1)
    delivery.submit(PATH, b"bad", count=1)
    delivery.submit(PATH, b"big", count=1)
    assert delivery.flush(5)

    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    (rejected,) = [m for m in messages if " 400 " in m]
    assert "field 'request.time' is invalid" in rejected and len(rejected) < 1000
    (too_large,) = [m for m in messages if " 413 " in m]
    assert "too large" in too_large
    assert delivery.stats()["dropped_rejected"] == 2 and len(collector.seen) == 2


def test_unusable_transport_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    def factory() -> HttpTransport:
        return HttpTransport("ftp://nowhere", "app-1", user_agent="ua")  # raises ValueError

    delivery = Delivery(factory, name="t-bad")
    try:
        delivery.submit(PATH, b"1", count=2)
        delivery.submit(PATH, b"2", count=3)
        assert delivery.flush(5)
        stats = delivery.stats()
        assert stats["dropped_rejected"] == 5 and stats["retried"] == 0
        assert len([r for r in caplog.records if "ftp://nowhere" in r.getMessage()]) == 1
    finally:
        assert delivery.shutdown(2)


# -- bounds --------------------------------------------------------------------------------------


def test_queue_full_drops_are_counted_and_submit_does_not_block(collector: Collector, make_delivery) -> None:
    collector.default = Answer(hang=True)
    delivery = make_delivery(max_pending=2, workers=1)

    started = time.monotonic()
    results = [delivery.submit(PATH, b"%d" % i, count=10) for i in range(5)]
    assert time.monotonic() - started < 0.5
    assert results == [True, True, False, False, False]
    stats = delivery.stats()
    assert stats["dropped_queue_full"] == 30 and stats["queued"] == 20 and stats["pending_batches"] == 2

    collector.release.set()
    assert delivery.flush(5)
    assert delivery.stats()["sent"] == 20


def test_shutdown_is_bounded_when_the_server_hangs(collector: Collector, make_delivery) -> None:
    collector.default = Answer(hang=True)
    delivery = make_delivery(workers=1, read_timeout=30)
    for i in range(3):
        delivery.submit(PATH, b"%d" % i, count=5)
    assert wait_for(lambda: len(collector.seen) == 1)

    started = time.monotonic()
    assert delivery.shutdown(0.5) is False
    assert time.monotonic() - started < 1.5
    stats = delivery.stats()
    assert stats["dropped_shutdown"] == 15 and stats["in_flight"] == 0 and stats["pending_batches"] == 0

    assert delivery.submit(PATH, b"late", count=2) is False
    assert delivery.stats()["dropped_shutdown"] == 17
    assert delivery.shutdown(0.1) is True  # idempotent

    # The request that was stuck at the deadline still gets through: it is then counted as sent.
    collector.release.set()
    assert wait_for(lambda: delivery.stats()["sent"] == 5)
    assert delivery.stats()["dropped_shutdown"] == 12


def test_shutdown_interrupts_backoff_waits(collector: Collector, make_delivery) -> None:
    collector.fail(1, 503)
    delivery = make_delivery(workers=2, backoff_initial=20.0, backoff_max=20.0)
    delivery.submit(PATH, b"x", count=1)
    assert wait_for(lambda: delivery.stats()["retried"] == 1)

    started = time.monotonic()
    assert delivery.shutdown(0.2) is False
    assert wait_for(lambda: not delivery_threads(), timeout=1.0)  # workers woke up and left
    assert time.monotonic() - started < 1.5
    assert delivery.stats()["dropped_shutdown"] == 1


def test_shutdown_flushes_pending_batches(collector: Collector, make_delivery, caplog) -> None:
    collector.delay = 0.1
    delivery = make_delivery(workers=2)
    for i in range(6):
        delivery.submit(PATH, b"%d" % i, count=1)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert delivery.shutdown(5) is True
    assert delivery.stats()["sent"] == 6
    assert any("'sent': 6" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


# -- concurrency, callbacks, fork ----------------------------------------------------------------


def test_uploads_overlap_when_the_collector_is_slow(collector: Collector, make_delivery) -> None:
    collector.delay = 0.5
    delivery = make_delivery(workers=4)
    for i in range(4):
        delivery.submit(PATH, b"%d" % i, count=1)
    assert delivery.flush(5)
    assert collector.max_active == 4


def test_on_response_errors_are_swallowed_and_logged_once(
    collector: Collector, make_delivery, caplog
) -> None:
    def broken(response: Response) -> None:
        raise RuntimeError("boom")

    delivery = make_delivery(on_response=broken)
    delivery.submit(PATH, b"1", count=1)
    delivery.submit(PATH, b"2", count=1)
    assert delivery.flush(5)
    assert delivery.stats()["sent"] == 2
    assert len([r for r in caplog.records if "boom" in r.getMessage()]) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads running
def test_forked_child_delivers_with_its_own_threads(collector: Collector, make_delivery) -> None:
    collector.script.append(Answer(hang=True))  # the parent's batch stays in flight across the fork
    delivery = make_delivery(workers=1, name="t-fork")
    delivery.submit(PATH, b"parent", count=1, headers={"X-Pid": str(os.getpid())})
    assert wait_for(lambda: len(collector.seen) == 1)

    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 10
        try:
            stats = delivery.stats()
            code = 11
            if stats["pending_batches"] == 0 and stats["queued"] == 0 and not delivery_threads():
                code = 12
                ok = delivery.submit(PATH, b"child", count=1, headers={"X-Pid": str(os.getpid())})
                own = [t.name for t in delivery_threads()] == ["t-fork-delivery-0"]
                if ok and own and delivery.flush(5) and delivery.stats()["sent"] == 1:
                    code = 0
        finally:
            os._exit(code)

    deadline = time.monotonic() + 10
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if status[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("forked child did not finish")
    assert os.waitstatus_to_exitcode(status[1]) == 0

    collector.release.set()
    assert delivery.flush(5)
    by_body = {s.body: s.headers["X-Pid"] for s in collector.seen}
    assert len(collector.seen) == 2
    assert by_body[b"parent"] == str(os.getpid())
    assert by_body[b"child"] == str(pid)
    assert delivery.stats()["sent"] == 1


def test_flush_delivers_on_the_calling_thread_when_no_worker_can_start(
    collector: Collector, make_delivery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Python 3.12+ refuses new threads at interpreter exit: an atexit flush must still deliver
    real_start = threading.Thread.start

    def refuse(thread: threading.Thread) -> None:
        if "-delivery-" in thread.name:
            raise RuntimeError("can't create new thread at interpreter shutdown")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    collector.fail(1, 503)
    delivery = make_delivery(name="t-inline")
    assert delivery.submit(PATH, b"one", count=2)
    assert delivery.submit(PATH, b"two", count=3)
    assert not delivery_threads()
    assert delivery.flush(5)
    assert sorted(s.body for s in collector.seen) == [b"one", b"one", b"two"]  # the 503 retried
    stats = delivery.stats()
    assert stats["sent"] == 5 and stats["retried"] == 2 and stats["pending_batches"] == 0
    assert any("could not start its threads" in r.getMessage() for r in caplog.records)

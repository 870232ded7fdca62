"""Delivery guarantees end to end: real uvicorn (in-process and as a subprocess), gunicorn, fork(),
with faults injected by the local collector. Every request that got an answer must have exactly
one event at the collector, matched by the unique ``id`` query parameter each request carries."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from moesif_otel import MoesifMiddleware
from moesif_otel.collector import Collector

from .servers import serve

REPO = Path(__file__).resolve().parent.parent
EVENTS_PATH = "/v1/events/batch"
CLIENT_TIMEOUT = 5.0  # a functional bound: an app slowed down by its collector would exceed it


# -- the app and its traffic ----------------------------------------------------------------------


async def _work(request: Request) -> PlainTextResponse:
    return PlainTextResponse("done", headers={"x-worker-pid": str(os.getpid())})


_made: list[MoesifMiddleware] = []


@pytest.fixture(autouse=True)
def _stop_pipelines() -> Iterator[None]:
    """A uvicorn lifespan only flushes: stop each test's pipeline threads so none outlive the test."""
    yield
    while _made:
        _made.pop().pipeline.shutdown()


def make_app(collector: Collector, **settings: Any) -> MoesifMiddleware:
    """MoesifMiddleware built directly (not via add_middleware) so the test holds it for stats()."""
    values = {
        "APPLICATION_ID": "delivery-test",
        "BASE_URI": collector.url,
        "EVENT_BATCH_TIMEOUT": 0.05,
        "BATCH_SIZE": 20,
        **settings,
    }
    app = MoesifMiddleware(Starlette(routes=[Route("/work", _work)]), settings=values)
    _made.append(app)
    return app


class Traffic:
    """Requests with unique ids from a pool of threads; records which ones got an answer."""

    def __init__(self, base: str, prefix: str, *, close: bool = False) -> None:
        self.base = base
        self.prefix = prefix
        self.headers = {"connection": "close"} if close else {}
        self.answered: dict[str, int] = {}  # id -> status
        self.pid_of: dict[str, str] = {}  # id -> the x-worker-pid that answered
        self.unanswered: set[str] = set()
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def one(self, client: httpx.Client) -> None:
        with self._lock:
            rid = f"{self.prefix}-{next(self._ids)}"
        try:
            answer = client.get(f"{self.base}/work", params={"id": rid}, headers=self.headers)
        except httpx.HTTPError:
            with self._lock:
                self.unanswered.add(rid)
            return
        with self._lock:
            self.answered[rid] = answer.status_code
            self.pid_of[rid] = answer.headers.get("x-worker-pid", "")

    def progress(self) -> tuple[int, int]:
        """(requests answered, distinct processes that answered them) so far."""
        with self._lock:
            return len(self.answered), len(set(self.pid_of.values()))

    def start(
        self, *, count: int | None = None, stop: threading.Event | None = None, threads: int = 8
    ) -> Callable[[], None]:
        """Send ``count`` requests (or until ``stop``) from ``threads`` threads; returns a join()."""
        budget = itertools.count()
        stop = stop or threading.Event()

        def run() -> None:
            with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
                while not stop.is_set() and (count is None or next(budget) < count):
                    self.one(client)

        pool = [threading.Thread(target=run, name=f"traffic-{i}", daemon=True) for i in range(threads)]
        for thread in pool:
            thread.start()

        def join() -> None:
            for thread in pool:
                thread.join(30)
            assert not any(t.is_alive() for t in pool), "traffic threads did not finish"

        return join

    def send(self, count: int, threads: int = 8) -> None:
        self.start(count=count, threads=threads)()

    def assert_all_ok(self, count: int) -> None:
        assert not self.unanswered, f"{len(self.unanswered)} requests got no answer"
        assert len(self.answered) == count
        assert set(self.answered.values()) == {200}


def event_ids(collector: Collector) -> Counter[str]:
    ids: Counter[str] = Counter()
    for event in collector.events:
        values = parse_qs(urlsplit(event["request"]["uri"]).query).get("id")
        if values:
            ids[values[0]] += 1
    return ids


def assert_delivered(collector: Collector, traffic: Traffic, timeout: float = 15.0) -> Counter[str]:
    """Every answered request has exactly one event; an event without an answer is allowed only for
    a request whose answer was lost on the way back (it was served, so it is an API call)."""
    wanted = set(traffic.answered)
    try:
        collector.wait_for(lambda c: wanted <= set(event_ids(c)), timeout)
    except AssertionError as exc:
        missing = wanted - set(event_ids(collector))
        raise AssertionError(
            f"{len(missing)} of {len(wanted)} answered requests have no event, "
            f"e.g. {sorted(missing)[:3]}; {exc}"
        ) from None
    ids = event_ids(collector)
    assert {k: n for k, n in ids.items() if n > 1} == {}, "duplicate events"
    assert set(ids) - wanted <= traffic.unanswered, "events for requests that were never sent"
    assert collector.rejected == []
    return ids


def drops(stats: dict[str, int]) -> dict[str, int]:
    return {key: value for key, value in stats.items() if key.startswith("dropped") and value}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.01)


def wait_spans_ended(app: MoesifMiddleware, n: int) -> None:
    """A client has its answer just before the request's span ends: wait until all ``n`` reached the
    processor (queued or dropped) before flushing, or a flush could finish ahead of the last ones."""
    processor = app.pipeline.processor
    wait_until(lambda: processor.queued + processor.dropped_queue_full >= n, f"{n} spans ended")


def upload_hanging(collector: Collector) -> bool:
    return any(r["path"] == EVENTS_PATH and r["status"] is None for r in collector.requests)


# -- transient collector failures: retried, nothing lost ----------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after"), [(503, None), (500, None), (408, None), (429, "1")], ids=str
)
def test_failed_uploads_during_load_are_retried(
    collector: Collector, status: int, retry_after: str | None
) -> None:
    collector.fail_next(5, status, retry_after=retry_after)
    app = make_app(collector)
    with serve(app) as base:
        traffic = Traffic(base, f"fail{status}")
        traffic.send(300)
        traffic.assert_all_ok(300)
        assert_delivered(collector, traffic)  # while the server runs: retries, not the shutdown flush
        assert app.flush(5)  # the collector records a batch before the client reads its answer
        stats = app.stats()
    failed = [r for r in collector.requests if r["path"] == EVENTS_PATH and r["status"] == status]
    assert len(failed) == 5
    assert stats["retried"] > 0
    assert drops(stats) == {}
    assert stats["sent"] == 300


def test_slow_collector_uploads_overlap_and_nothing_is_lost(collector: Collector) -> None:
    collector.set_delay(0.5)
    app = make_app(collector, BATCH_SIZE=25, EVENT_WORKER_COUNT=4)
    with serve(app) as base:
        traffic = Traffic(base, "slow")
        join = traffic.start(count=200)
        # several uploads are at the collector at once: a slow collector does not serialise delivery
        collector.wait_for(
            lambda c: sum(r["path"] == EVENTS_PATH and r["status"] is None for r in c.requests) >= 2,
            timeout=10,
        )
        join()
        traffic.assert_all_ok(200)
        assert_delivered(collector, traffic)
        assert app.flush(5)
        stats = app.stats()
    assert drops(stats) == {}


def test_refused_connections_then_accepted_during_load(collector: Collector) -> None:
    app = make_app(collector)
    with serve(app) as base:
        collector.refuse()
        traffic = Traffic(base, "refused")
        traffic.send(150)
        # uploads were attempted (and retried) while the collector refused connections
        wait_until(lambda: app.stats()["retried"] > 0, "a refused upload retried")
        collector.accept()
        traffic.send(150)
        traffic.assert_all_ok(300)
        assert_delivered(collector, traffic)
        assert app.flush(5)
        after = app.stats()
    assert drops(after) == {}
    assert after["sent"] == 300


def test_hung_collector_does_not_hold_up_the_app_and_the_backlog_follows(collector: Collector) -> None:
    collector.hang()
    app = make_app(collector)
    with serve(app) as base:
        traffic = Traffic(base, "hung")
        traffic.send(200)  # each within CLIENT_TIMEOUT, or it counts as unanswered
        traffic.assert_all_ok(200)
        collector.wait_for(upload_hanging, timeout=5)
        assert collector.event_count == 0
        collector.hang(False)
        assert_delivered(collector, traffic)
        assert app.flush(5)
        stats = app.stats()
    assert drops(stats) == {}
    assert stats["sent"] == 200


# -- rejected uploads and bounds: dropped, counted, the app unaffected ---------------------------------


def test_401_is_not_retried_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="moesif_otel")
    with Collector(application_id="the-right-id") as collector:
        app = make_app(collector, APPLICATION_ID="a-wrong-id", BATCH_SIZE=10)
        with serve(app) as base:
            traffic = Traffic(base, "unauthorized")
            traffic.send(50)
            traffic.assert_all_ok(50)
            wait_spans_ended(app, 50)
            assert app.flush(10)
            stats = app.stats()
        uploads = [r for r in collector.requests if r["path"] == EVENTS_PATH]
    assert collector.event_count == 0
    assert all(r["status"] == 401 for r in uploads)
    assert stats["retried"] == 0
    assert drops(stats) == {"dropped_rejected": 50}
    warnings = [r for r in caplog.records if r.name.startswith("moesif_otel") and "401" in r.getMessage()]
    upload_warnings = [r for r in warnings if EVENTS_PATH in r.getMessage()]
    assert len(upload_warnings) == 1, [r.getMessage() for r in warnings]
    assert "application id" in upload_warnings[0].getMessage()


def test_delivery_backlog_bound_with_a_hung_collector_counts_every_drop(collector: Collector) -> None:
    collector.hang()
    app = make_app(collector, EVENT_QUEUE_SIZE=20, BATCH_SIZE=5)
    with serve(app) as base:
        traffic = Traffic(base, "bounded")
        traffic.send(300)
        traffic.assert_all_ok(300)  # the app answered every request while events were dropped
        collector.wait_for(upload_hanging, timeout=5)
        wait_spans_ended(app, 300)
        collector.hang(False)
        assert app.flush(10)
        stats = app.stats()
        delivered = event_ids(collector)
    assert stats["dropped_queue_full"] > 0
    assert set(drops(stats)) == {"dropped_queue_full"}
    assert max(delivered.values()) == 1
    assert sum(delivered.values()) + stats["dropped_queue_full"] == 300


def test_span_queue_bound_with_a_stalled_exporter_counts_every_drop(collector: Collector) -> None:
    """The processor's own queue (EVENT_QUEUE_SIZE) fills when conversion stalls: its drops count too."""
    gate = threading.Event()

    def stalled_mask(event: Any) -> Any:
        gate.wait(20)
        return event

    app = make_app(collector, EVENT_QUEUE_SIZE=20, BATCH_SIZE=5, MASK_EVENT_MODEL=stalled_mask)
    try:
        with serve(app) as base:
            traffic = Traffic(base, "stalled")
            traffic.send(100)
            traffic.assert_all_ok(100)
            wait_spans_ended(app, 100)
            gate.set()
            assert app.flush(10)
            stats = app.stats()
            delivered = event_ids(collector)
    finally:
        gate.set()
    assert stats["dropped_queue_full"] > 0
    assert max(delivered.values()) == 1
    assert sum(delivered.values()) + stats["dropped_queue_full"] == 100


def test_a_full_batch_leaves_without_waiting_for_the_timeout(collector: Collector) -> None:
    app = make_app(collector, BATCH_SIZE=10, EVENT_BATCH_TIMEOUT=300)
    with serve(app) as base:
        traffic = Traffic(base, "full")
        traffic.send(10, threads=1)
        traffic.assert_all_ok(10)
        assert_delivered(collector, traffic, timeout=5)  # the server still runs: no shutdown flush yet
        assert [b["count"] for b in collector.batches] == [10]


def test_a_busy_app_sends_full_batches_not_each_full_batch_and_its_stragglers(collector: Collector) -> None:
    """Events queued behind a full batch wait for the next full one (or the timer); they used to
    leave right after it in an upload of their own, doubling the uploads of a busy app."""
    exporting, release = threading.Event(), threading.Event()

    def first_batch_waits(event: Any) -> Any:
        exporting.set()
        release.wait(10)
        return event

    app = make_app(collector, BATCH_SIZE=10, EVENT_BATCH_TIMEOUT=30, MASK_EVENT_MODEL=first_batch_waits)
    try:
        with serve(app) as base:
            traffic = Traffic(base, "busy")
            traffic.send(10, threads=1)
            assert exporting.wait(5), "the first full batch was not exported"
            traffic.send(3, threads=1)  # queued while the first batch is being exported
            wait_spans_ended(app, 13)
            release.set()
            wait_until(lambda: len(event_ids(collector)) >= 10, "the first batch")
            traffic.send(7, threads=1)  # completes the second batch
            traffic.assert_all_ok(20)
            assert_delivered(collector, traffic, timeout=10)  # long before the 30 s timer
            assert [b["count"] for b in collector.batches] == [10, 10]
    finally:
        release.set()


def test_tracer_provider_shutdown_flushes(collector: Collector) -> None:
    provider = TracerProvider()
    app = MoesifMiddleware(
        Starlette(routes=[Route("/work", _work)]),
        settings={"APPLICATION_ID": "x", "BASE_URI": collector.url, "EVENT_BATCH_TIMEOUT": 300},
        tracer_provider=provider,
    )
    ids = [f"provider-{i}" for i in range(5)]
    asyncio.run(_call_asgi(app, ids))
    assert collector.event_count == 0
    provider.shutdown()
    assert sorted(event_ids(collector)) == sorted(ids)


async def _call_asgi(app: Any, ids: list[str]) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://asgi.test") as client:
        for rid in ids:
            assert (await client.get("/work", params={"id": rid})).status_code == 200


# -- other processes: SIGTERM, process exit, gunicorn --------------------------------------------------


def child_env(collector: Collector, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "OTEL_"))}
    env.update(
        {
            "MOESIF_APPLICATION_ID": "delivery-app",
            "MOESIF_BASE_URI": collector.url,
            **{f"MOESIF_{key}": str(value) for key, value in settings.items()},
        }
    )
    return env


@contextlib.contextmanager
def server_process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[tuple[subprocess.Popen, str]]:
    """Start ``command``; yield it and its base URL.

    ``{fd}`` in the command stands for a listening socket bound here (port known race-free). Without
    it the server binds port 0 itself and the URL is read from its log (uvicorn's ``--fd`` would
    treat a TCP socket as a Unix one and leave Nagle on: 40 ms per response).
    """
    listener: socket.socket | None = None
    if any("{fd}" in part for part in command):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(512)
        command = [part.replace("{fd}", str(listener.fileno())) for part in command]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            pass_fds=[listener.fileno()] if listener is not None else [],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: cleanup reaches forked workers too
        )
    try:
        if listener is not None:
            base = f"http://127.0.0.1:{listener.getsockname()[1]}"
            listener.close()  # our copy would keep accepting connections after the server closed its own
            listener = None
        else:
            base = _url_from_log(proc, log)
        yield proc, base
    finally:
        if listener is not None:
            listener.close()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _url_from_log(proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while not (found := re.search(r"running on (http://127\.0\.0\.1:[1-9]\d*)", log.read_text())):
        assert proc.poll() is None, f"server exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"server did not start in {timeout}s:\n{log.read_text()}"
        time.sleep(0.05)
    return found.group(1)


def wait_ready(traffic: Traffic, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    """Until the server answers; the probes are part of ``traffic`` (an answered probe has an event)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1) as client:
        while True:
            assert proc.poll() is None, f"server exited early:\n{log.read_text()}"
            traffic.one(client)
            if traffic.answered:
                return
            assert time.monotonic() < deadline, f"server not ready in {timeout}s:\n{log.read_text()}"
            time.sleep(0.05)


def stop_and_wait(proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server did not exit within {timeout}s of SIGTERM:\n{log.read_text()}")
    # uvicorn re-raises the signal after its graceful shutdown; gunicorn exits 0
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize(
    ("batch_timeout", "lifespan", "lazy"),
    [(0.2, "on", False), (300, "on", False), (300, "off", False), (300, "off", True)],
    ids=["streaming", "only-shutdown-flush", "lifespan-off", "lifespan-off-lazy-middleware"],
)
def test_sigterm_right_after_load_delivers_every_answered_request(
    collector: Collector, tmp_path: Path, batch_timeout: float, lifespan: str, lazy: bool
) -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process dies by the signal and
    atexit never runs: the lifespan flush, or without lifespan the pipeline's SIGTERM hook, must deliver."""
    settings: dict[str, Any] = {"EVENT_BATCH_TIMEOUT": batch_timeout, "EVENT_QUEUE_SIZE": 100_000}
    if batch_timeout > 1:
        settings["BATCH_SIZE"] = 100_000  # nothing leaves before shutdown
    log = tmp_path / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "0", "--lifespan", lifespan]
    command += ["--log-level", "info", "--no-access-log", "tests.delivery_app:app"]
    env = child_env(collector, **settings)
    if lazy:
        env["DELIVERY_APP_LAZY"] = "1"  # built inside uvicorn, after it took over SIGTERM
    with server_process(command, env, log) as (proc, base):
        traffic = Traffic(base, "sigterm")
        wait_ready(traffic, proc, log)
        stop = threading.Event()
        join = traffic.start(stop=stop)
        stop.wait(3.0)  # the load lasts 3 s; SIGTERM arrives while requests are still in flight
        if batch_timeout > 1:
            assert collector.event_count == 0  # nothing has left the process yet
        proc.send_signal(signal.SIGTERM)
        stop.set()
        join()
        stop_and_wait(proc, log)
    assert len(traffic.answered) > 100, "too little load to mean anything"
    # the process has exited: whatever it delivered is already at the collector
    assert_delivered(collector, traffic, timeout=0.5)


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigterm_with_a_hung_collector_is_bounded_and_reports_the_loss(
    collector: Collector, tmp_path: Path
) -> None:
    collector.hang()
    log = tmp_path / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "0"]
    command += ["--log-level", "info", "--no-access-log", "tests.delivery_app:app"]
    env = child_env(collector, SHUTDOWN_TIMEOUT=1, BATCH_SIZE=10)
    with server_process(command, env, log) as (proc, base):
        traffic = Traffic(base, "hung-exit")
        wait_ready(traffic, proc, log)
        traffic.send(50)
        collector.wait_for(upload_hanging, timeout=5)
        # far less than the 15 s read timeout a hung upload would otherwise hold the exit for
        stop_and_wait(proc, log, timeout=10)
    assert collector.event_count == 0
    assert "dropped_shutdown" in log.read_text()  # lost, but not silently


def test_process_exit_without_lifespan_flushes_at_exit(collector: Collector) -> None:
    script = (
        "import asyncio, httpx\n"
        "from tests.delivery_app import app\n"
        "async def main():\n"
        "    transport = httpx.ASGITransport(app=app)\n"
        "    async with httpx.AsyncClient(transport=transport, base_url='http://exit.test') as client:\n"
        "        for i in range(5):\n"
        "            assert (await client.get('/work', params={'id': f'exit-{i}'})).status_code == 200\n"
        "asyncio.run(main())\n"
    )
    env = child_env(collector, EVENT_BATCH_TIMEOUT=300)
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(event_ids(collector)) == [f"exit-{i}" for i in range(5)]


def _gunicorn_worker_class() -> str:
    pytest.importorskip("gunicorn")
    try:
        import uvicorn_worker  # noqa: F401  (uvicorn.workers is deprecated in its favour)
    except ImportError:
        return "uvicorn.workers.UvicornWorker"
    return "uvicorn_worker.UvicornWorker"


@pytest.mark.skipif(os.name != "posix", reason="gunicorn is POSIX-only")
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_workers_each_deliver_their_own_events(
    collector: Collector, tmp_path: Path, preload: bool
) -> None:
    log = tmp_path / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", _gunicorn_worker_class()]
    command += ["--bind", "fd://{fd}", "--graceful-timeout", "15", "--log-level", "warning"]
    command += ["--preload"] if preload else []
    command += ["tests.delivery_app:app"]
    env = child_env(collector, BATCH_SIZE=10, EVENT_BATCH_TIMEOUT=300)
    with server_process(command, env, log) as (proc, base):
        traffic = Traffic(base, "gunicorn", close=True)  # a new connection each time: both workers accept
        wait_ready(traffic, proc, log)
        stop = threading.Event()
        join = traffic.start(stop=stop)
        deadline = time.monotonic() + 15
        while not stop.wait(0.05):
            answered, pids = traffic.progress()
            if (answered >= 200 and pids >= 2) or time.monotonic() > deadline:
                stop.set()
        join()
        stop_and_wait(proc, log)
    pids = set(traffic.pid_of.values())
    assert len(pids) == 2, f"answers came from {pids}:\n{log.read_text()}"
    assert str(proc.pid) not in pids
    assert_delivered(collector, traffic, timeout=0.5)
    by_event = {
        parse_qs(urlsplit(e["request"]["uri"]).query)["id"][0]: e["response"]["headers"]["x-worker-pid"]
        for e in collector.events
    }
    assert all(by_event[rid] == pid for rid, pid in traffic.pid_of.items()), "event from the wrong worker"


# -- os.fork(): the child delivers with its own threads ------------------------------------------------


def _moesif_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("moesif-") and "collector" not in t.name]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads running
def test_forked_child_delivers_its_own_events_with_fresh_threads(collector: Collector) -> None:
    earlier = set(_moesif_threads())  # other tests' pipelines may still be winding down
    app = make_app(collector)
    asyncio.run(_call_asgi(app, ["parent-0"]))
    collector.wait_for_events(1)
    parent_threads = [t for t in _moesif_threads() if t not in earlier]
    names = {t.name for t in parent_threads}
    assert {"moesif-otel-processor", "moesif-delivery-0"} <= names, names

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            report: dict[str, Any] = {"inherited": [t.name for t in _moesif_threads()]}
            asyncio.run(_call_asgi(app, [f"child-{i}" for i in range(3)]))
            report["flushed"] = app.flush(5)
            threads = _moesif_threads()
            report["names"] = sorted(t.name for t in threads)
            report["fresh"] = all(t.is_alive() and t not in parent_threads for t in threads)
            report["stats"] = app.stats()
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)

    os.close(write_end)
    deadline = time.monotonic() + 15
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if status[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("forked child did not finish")
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    assert os.waitstatus_to_exitcode(status[1]) == 0, raw
    report = json.loads(raw)
    assert report["inherited"] == []
    assert {"moesif-otel-processor", "moesif-delivery-0"} <= set(report["names"])
    assert report["fresh"] and report["flushed"]
    stats = report["stats"]
    assert (stats["spans_queued"], stats["queued"], stats["sent"]) == (3, 3, 3), stats  # its own counts

    assert all(t.is_alive() for t in parent_threads)  # the parent's threads were left alone
    asyncio.run(_call_asgi(app, ["parent-1"]))
    assert app.flush(5)
    by_id = {
        parse_qs(urlsplit(e["request"]["uri"]).query)["id"][0]: e["response"]["headers"]["x-worker-pid"]
        for e in collector.events
    }
    me, child = str(os.getpid()), str(pid)
    assert by_id == {"parent-0": me, "child-0": child, "child-1": child, "child-2": child, "parent-1": me}
    assert app.stats()["sent"] == 2

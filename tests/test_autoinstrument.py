"""The real ``opentelemetry-instrument`` command, uvicorn and the local collector, in a subprocess.

The served app (tests/plain_app.py) contains no Moesif code: everything comes from the ``moesif``
distro and exporter entry points, configured by ``MOESIF_*`` variables.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from moesif_otel.collector import Collector

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
START_TIMEOUT = 15.0


class Server:
    def __init__(self, process: subprocess.Popen[str], base: str, lines: queue.Queue[str | None]) -> None:
        self.process = process
        self.base = base
        self._lines = lines
        self.output: list[str] = []

    def stop(self, timeout: float = 10.0) -> str:
        """SIGTERM, as a process manager would; returns everything the process printed."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout)
        return self.drain()

    def wait_for_output(self, text: str, count: int = 1, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while "".join(self.output).count(text) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not printed in time:\n" + "".join(self.output)
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is not None:
                self.output.append(line)

    def drain(self) -> str:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.output.append(line)
        return "".join(self.output)


def clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MOESIF_"))}
    env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"  # the console exporter's output arrives as it is printed
    env.update(extra)
    return env


@contextmanager
def instrumented(app: str, env: dict[str, str]) -> Iterator[Server]:
    """``opentelemetry-instrument uvicorn <app>`` on an ephemeral port; always killed on exit."""
    command = [
        str(BIN / "opentelemetry-instrument"),
        str(BIN / "uvicorn"),
        app,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--log-level",
        "info",
        "--no-access-log",
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: killed as a whole
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, name="uvicorn-output", daemon=True)
    reader.start()
    try:
        seen: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT
        port = None
        while port is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("uvicorn did not start:\n" + "".join(seen))
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("uvicorn exited:\n" + "".join(seen))
            seen.append(line)
            match = RUNNING.search(line)
            if match:
                port = match.group(1)
        server = Server(process, f"http://127.0.0.1:{port}", lines)
        server.output.extend(seen)
        yield server
    finally:
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        reader.join(10)
        if process.stdout is not None:
            process.stdout.close()


def moesif_env(collector: Collector, **extra: str) -> dict[str, str]:
    values = {
        "OTEL_PYTHON_DISTRO": "moesif",  # opentelemetry-distro is installed here too: the first one would win
        "OTEL_TRACES_EXPORTER": "moesif",
        "MOESIF_APPLICATION_ID": "auto-app-id",
        "MOESIF_BASE_URI": collector.url,
        "MOESIF_EVENT_BATCH_TIMEOUT": "0.05",
    }
    return clean_environment(**{**values, **extra})


def without_volatile(event: dict[str, Any]) -> dict[str, Any]:
    event = {**event, "request": dict(event["request"]), "response": dict(event["response"])}
    assert re.fullmatch(r"[0-9a-f]{32}", event.pop("trace_id"))
    for part in ("request", "response"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event[part].pop("time"))
    return event


@pytest.mark.parametrize("configurator", ["opentelemetry-distro", "moesif distro"])
def test_app_without_moesif_code_sends_events_with_bodies(collector: Collector, configurator: str) -> None:
    extra = {"MOESIF_IDENTIFY_USER": "tests.plain_app:identify_user"}
    if configurator == "moesif distro":
        # no installed configurator by that name: the distro sets the SDK up itself
        extra["OTEL_PYTHON_CONFIGURATOR"] = "moesif"
    with instrumented("tests.plain_app:app", moesif_env(collector, **extra)) as server:
        with httpx.Client(base_url=server.base) as client:
            echoed = client.post("/echo?x=1", json={"name": "Ann", "n": [1, 2]}, headers={"x-user": "u-7"})
            assert echoed.status_code == 200
            assert client.get("/items/3").json() == {"id": 3}
        events = collector.wait_for_events(2)
        output = server.stop()
    assert "Traceback" not in output and "Failed to auto initialize" not in output, output
    port = server.base.rsplit(":", 1)[1]
    by_path = {e["request"]["uri"].split("/", 3)[3]: without_volatile(e) for e in events}
    assert sorted(by_path) == ["echo?x=1", "items/3"]

    tx = echoed.headers["x-moesif-transaction-id"]
    assert uuid.UUID(tx).version == 4
    body = b'{"name":"Ann","n":[1,2]}'
    assert by_path["echo?x=1"] == {
        "request": {
            "uri": f"{server.base}/echo?x=1",
            "verb": "POST",
            "headers": {
                "host": f"127.0.0.1:{port}",
                "accept": "*/*",
                "accept-encoding": "gzip, deflate",
                "connection": "keep-alive",
                "user-agent": f"python-httpx/{httpx.__version__}",
                "content-length": str(len(body)),
                "content-type": "application/json",
                "x-user": "u-7",
                "x-moesif-transaction-id": tx,
            },
            "ip_address": "127.0.0.1",
            "body": {"name": "Ann", "n": [1, 2]},
            "transfer_encoding": "json",
        },
        "response": {
            "status": 200,
            "headers": {
                "content-length": str(len(body)),
                "content-type": "application/json",
                "x-moesif-transaction-id": tx,
            },
            "body": {"name": "Ann", "n": [1, 2]},
            "transfer_encoding": "json",
        },
        "user_id": "u-7",  # MOESIF_IDENTIFY_USER, a function of the app's own module
        "direction": "Incoming",
        "weight": 1,
        "transaction_id": tx,
    }
    item = by_path["items/3"]
    assert item["response"]["body"] == {"id": 3}
    assert item["response"]["status"] == 200
    assert "user_id" not in item  # the hook returned None: no x-user header
    # exactly one event per request; the exporter's own uploads and config fetches are not events
    assert collector.event_count == 2
    assert all(b["path"] == "/v1/events/batch" for b in collector.batches)
    assert all(b["headers"]["x-moesif-application-id"] == "auto-app-id" for b in collector.batches)
    assert collector.rejected == []


def test_sigterm_right_after_requests_delivers_everything(collector: Collector) -> None:
    # batches wait far longer than the test: only the flush at exit can deliver them
    env = moesif_env(collector, MOESIF_EVENT_BATCH_TIMEOUT="300", MOESIF_BATCH_SIZE="1000")
    with instrumented("tests.plain_app:app", env) as server:
        with httpx.Client(base_url=server.base) as client:
            for i in range(20):
                assert client.get(f"/items/{i}").status_code == 200
        assert collector.event_count == 0
        output = server.stop()
        # uvicorn re-raises SIGTERM after its graceful shutdown: the SDK's exit-time flush never runs
        assert server.process.returncode == -signal.SIGTERM, output
    events = collector.wait_for_events(20, timeout=5)
    assert sorted(e["request"]["uri"].rsplit("/", 1)[1] for e in events) == sorted(str(i) for i in range(20))


def test_a_wrong_variable_is_a_clear_error_and_the_app_still_runs(collector: Collector) -> None:
    env = moesif_env(collector, MOESIF_BATCH_SIZE="lots")
    with instrumented("tests.plain_app:app", env) as server:
        assert httpx.get(f"{server.base}/items/1").json() == {"id": 1}
        output = server.stop()
    assert "MOESIF_BATCH_SIZE='lots' is invalid" in output
    assert collector.event_count == 0


def test_without_the_moesif_exporter_no_bodies_are_captured(collector: Collector) -> None:
    # the moesif distro with another trace exporter only: bodies must not go to someone else's backend
    env = moesif_env(collector, OTEL_TRACES_EXPORTER="console", OTEL_BSP_SCHEDULE_DELAY="20")
    with instrumented("tests.plain_app:app", env) as server:
        answer = httpx.post(f"{server.base}/echo", content=b"secret-body")
        assert answer.content == b"secret-body"
        assert "x-moesif-transaction-id" not in answer.headers
        server.wait_for_output('"name": "POST /echo"')  # the console exporter got the server span
        output = server.stop()
    assert "secret-body" not in output and "moesif." not in output
    assert collector.event_count == 0


def test_moesif_middleware_under_opentelemetry_instrument_one_event_per_request(collector: Collector) -> None:
    # every server span of an HTTP request becomes an event: a duplicate span would be a duplicate event
    with instrumented("tests.moesif_app:app", moesif_env(collector)) as server:
        with httpx.Client(base_url=server.base) as client:
            for i in range(3):
                assert client.get(f"/items/{i}").status_code == 200
        collector.wait_for_events(3)
        server.stop()
    uris = sorted(e["request"]["uri"] for e in collector.events)
    assert uris == [f"{server.base}/items/{i}" for i in range(3)]


@pytest.mark.parametrize("outgoing", [True, False], ids=["capture-outgoing", "default"])
def test_outgoing_requests_calls_under_opentelemetry_instrument(collector: Collector, outgoing: bool) -> None:
    extra = {"PLAIN_APP_UPSTREAM": f"{collector.url}/health/probe"}
    if outgoing:
        extra["MOESIF_CAPTURE_OUTGOING_REQUESTS"] = "true"
    with instrumented("tests.plain_app:app", moesif_env(collector, **extra)) as server:
        assert httpx.get(f"{server.base}/call-out").json() == {"upstream_status": 200}
        incoming = collector.wait_for_events(1)
        server.stop()
    events = {e["direction"]: e for e in collector.events}
    assert incoming and events["Incoming"]["request"]["uri"].endswith("/call-out")
    if not outgoing:
        # requests is instrumented by opentelemetry-instrument, but nobody asked for Outgoing events
        assert sorted(events) == ["Incoming"]
        return
    assert sorted(events) == ["Incoming", "Outgoing"]
    call = events["Outgoing"]
    assert call["request"]["uri"] == f"{collector.url}/health/probe"
    assert call["response"]["status"] == 200
    assert call["response"]["body"] == {"status": True, "region": "local"}  # bodies, through our hooks
    assert call["trace_id"] == events["Incoming"]["trace_id"]

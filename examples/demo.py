"""The demo: the example app under uvicorn, a handful of requests, the events Moesif receives.

    python examples/demo.py            # events go to an embedded local collector and are shown here
    MOESIF_APPLICATION_ID=... python examples/demo.py   # the same app sends to Moesif instead

Needs only the package and its ``demo`` extra (fastapi, uvicorn).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from moesif_otel.collector import Collector, format_event

HERE = Path(__file__).resolve().parent

REQUESTS = [
    ("GET", "/items/42?verbose=true", None, {"x-user-id": "alice"}),
    ("POST", "/users", {"name": "Bob", "password": "hunter2"}, {"x-company-id": "acme"}),
    ("GET", "/text", None, {}),
    ("GET", "/logo.png", None, {}),
    ("GET", "/stream?chunks=4", None, {"x-session-token": "sess-123"}),
    ("GET", "/health/probe", None, {}),  # skipped by the SKIP hook: no event
    ("GET", "/boom", None, {}),  # the app raises: a 500 event
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the app exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the app did not start listening in time")


def call(base: str, method: str, path: str, payload: object, headers: dict[str, str]) -> str:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(base + path, data=data, method=method, headers=dict(headers))
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return f"{response.status} ({len(response.read())} bytes)"
    except urllib.error.HTTPError as error:
        return f"{error.code} ({len(error.read())} bytes)"


def main() -> int:
    to_moesif = bool(os.environ.get("MOESIF_APPLICATION_ID"))
    collector = None if to_moesif else Collector().start()
    env = dict(os.environ)
    if collector is not None:
        env["MOESIF_BASE_URI"] = collector.url
    port = free_port()
    app = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app:app",
            "--app-dir",
            str(HERE),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--log-level",
            "critical",  # /boom's traceback would hide the demo's output
        ],
        env=env,
    )
    try:
        wait_for_port(port, app)
        print(
            f"example app on http://127.0.0.1:{port}, sending to "
            f"{'Moesif' if to_moesif else 'the local collector at ' + collector.url}\n"
        )
        base = f"http://127.0.0.1:{port}"
        for method, path, payload, headers in REQUESTS:
            print(f"  {method:4} {path:24} -> {call(base, method, path, payload, headers)}")
    finally:
        app.send_signal(signal.SIGTERM)  # uvicorn's lifespan shutdown flushes the queue
        app.wait(timeout=30)
    if collector is None:
        print("\nsent to Moesif: see your Moesif dashboard")
        return 0
    try:
        expected = len(REQUESTS) - 1
        events = collector.wait_for_events(expected, timeout=15)
        print(
            f"\nthe collector received {len(events)} events (/health/probe was skipped by the SKIP hook):\n"
        )
        for event in events:
            print("  " + format_event(event))
        masked = next(e for e in events if e["request"]["verb"] == "POST")
        print("\nthe POST /users event, as Moesif receives it (the password masked by MASK_EVENT_MODEL):\n")
        print(json.dumps(masked, indent=2))
        if collector.rejected:
            print(f"\n{len(collector.rejected)} events failed the Moesif schema check!")
            return 1
        return 0
    finally:
        collector.stop()


if __name__ == "__main__":
    sys.exit(main())

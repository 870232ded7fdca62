"""The README's demo command, end to end: the example app, real requests, the collector's events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "the collector received 6 events" in out
    for line in (
        "Incoming GET http://127.0.0.1:",
        "/items/42?verbose=true -> 200 user=alice company=67890",
        "/users -> 201 user=12345 company=acme (req json",
        "/stream?chunks=4 -> 200",
        "/boom -> 500",
    ):
        assert line in out
    assert "/health/probe ->" not in out.split("the collector received")[1]  # skipped
    event = json.loads(out[out.index("{\n") :])
    assert event["request"]["body"] == {"name": "Bob", "password": None}
    assert event["response"]["body"] == {"id": 7, "name": "Bob", "password": None}
    assert "hunter2" not in out

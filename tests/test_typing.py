"""mypy --strict on moesif_otel/, as part of the one test command: a type error fails the build
like a failing test. The configuration is pyproject's [tool.mypy]; its cache (.mypy_cache) keeps
a run after a small change to about a second."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", "--strict"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr

"""mypy --strict, as part of the one test command: a type error in moesif_otel/ fails the build like
a failing test, and the hook aliases of moesif_otel.types accept the hooks the docs describe and
reject the ones moesif_otel could not call. The configuration is pyproject's [tool.mypy]; its cache
(.mypy_cache) keeps a run after a small change to a second or two."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = Path(__file__).resolve().parent / "typing"
CONFIGURATION = ROOT / "docs" / "configuration.md"


def mypy(*paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", "--strict", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mypy_strict() -> None:
    """The package, and hooks written as docs/configuration.md describes them."""
    done = mypy("moesif_otel", str(SNIPPETS / "hooks_ok.py"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_hook_aliases_reject_hooks_that_do_not_fit() -> None:
    bad = SNIPPETS / "hooks_bad.py"
    marked = {n for n, line in enumerate(bad.read_text().splitlines(), 1) if "  # error:" in line}
    done = mypy(str(bad))
    reported = {int(n) for n in re.findall(r"hooks_bad\.py:(\d+): error", done.stdout)}
    assert marked and reported == marked, done.stdout + done.stderr


def test_the_documented_hook_annotation_type_checks(tmp_path: Path) -> None:
    docs = CONFIGURATION.read_text()
    section = docs[docs.index("**Type hints:**") :]
    start = section.index("```python\n") + len("```python\n")
    example = section[start : section.index("\n```", start)]
    assert "IDENTIFY_USER: IdentifyUser" in example
    (tmp_path / "docs_example.py").write_text(example + "\n")
    done = mypy(str(tmp_path / "docs_example.py"))
    assert done.returncode == 0, done.stdout + done.stderr

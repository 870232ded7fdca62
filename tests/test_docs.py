"""The configuration reference in docs/ must describe the settings the code has, no more, no less."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from moesif_otel.settings import ENV_PREFIX, settings_reference

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONFIGURATION = DOCS / "configuration.md"
MIGRATING = DOCS / "migrating-from-moesifasgi.md"

# How each setting kind is named in the table's Type column.
TYPE_NAMES = {
    "str": "str",
    "bool": "bool",
    "int": "int",
    "float": "float",
    "hook": "function",
    "list": "list[str]",
}
REQUIRED = {"APPLICATION_ID"}
GROUPS = [
    "Required",
    "Capture",
    "Hooks",
    "Delivery and logging",
    "Outgoing calls",
    "moesifasgi compatibility",
]
# Upper-case words the docs may put in backticks that are not settings keys.
NOT_SETTINGS = {"DEBUG", "INFO", "WARNING", "ERROR"}

REFERENCE = {key: (kind, default) for key, kind, default, _ in settings_reference()}


def render_default(key: str, default: Any) -> str:
    """A default as the table writes it: a Python-ish literal in backticks, or 'required'."""
    if key in REQUIRED:
        return "required"
    if isinstance(default, bool) or default is None:
        text = repr(default)
    elif isinstance(default, int):
        text = f"{default:_}"
    elif isinstance(default, float):
        text = repr(default)
    elif isinstance(default, str):
        text = f'"{default}"'
    elif isinstance(default, tuple):
        text = "[" + ", ".join(f'"{item}"' for item in default) + "]"
    else:  # a new kind of default: teach this function how the docs should show it
        raise AssertionError(f"no rendering for the default of {key}: {default!r}")
    return f"`{text}`"


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def reference_table(text: str) -> list[list[str]]:
    """Rows of the first table in the document (header and separator excluded)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return rows


@pytest.fixture(scope="module")
def configuration() -> str:
    return CONFIGURATION.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def setting_rows(configuration: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for row in reference_table(configuration):
        match = re.fullmatch(r"`([A-Z0-9_]+)`", row[0])
        if match is None:
            continue
        key = match.group(1)
        assert key not in rows, f"{key} is documented twice in the reference table"
        assert len(row) == 4, f"{key}: expected key | type | default | meaning, got {row}"
        rows[key] = row
    return rows


def test_the_reference_table_comes_first(configuration: str) -> None:
    lines = [line for line in configuration.splitlines() if line.strip()]
    first_table = next(i for i, line in enumerate(lines) if line.startswith("|"))
    headings = [line for line in lines[:first_table] if line.startswith("## ")]
    assert headings == ["## Reference"]
    assert cells(lines[first_table]) == ["Key", "Type", "Default", "Meaning"]


def test_every_setting_is_documented_with_its_type_and_default(setting_rows: dict[str, list[str]]) -> None:
    missing = sorted(set(REFERENCE) - set(setting_rows))
    assert not missing, f"settings missing from docs/configuration.md: {missing}"
    for key, (kind, default) in REFERENCE.items():
        _, doc_type, doc_default, meaning = setting_rows[key]
        assert doc_type == TYPE_NAMES[kind], f"{key}: documented type {doc_type!r}, code has {kind!r}"
        expected = render_default(key, default)
        assert doc_default == expected, f"{key}: documented default {doc_default!r}, code has {expected}"
        assert meaning, f"{key}: no meaning given"


def test_no_setting_is_documented_that_the_code_lacks(setting_rows: dict[str, list[str]]) -> None:
    extra = sorted(set(setting_rows) - set(REFERENCE))
    assert not extra, f"docs/configuration.md documents settings the code does not have: {extra}"


def test_settings_are_grouped(configuration: str) -> None:
    groups = []
    for row in reference_table(configuration):
        match = re.fullmatch(r"\*\*(.+)\*\*", row[0])
        if match is not None:
            assert not any(row[1:]), f"group row {row[0]} must have empty cells"
            groups.append(match.group(1))
    assert groups == GROUPS
    first = reference_table(configuration)[0][0]
    assert first == "**Required**", "the table must open with a group row"


@pytest.mark.parametrize("path", [CONFIGURATION, MIGRATING], ids=lambda p: p.name)
def test_keys_mentioned_anywhere_exist(path: Path) -> None:
    """A key in backticks (or its MOESIF_ variable) anywhere in the prose must be a real setting."""
    unknown = set()
    for token in re.findall(r"`([A-Z][A-Z0-9_]*[A-Z0-9])`", path.read_text(encoding="utf-8")):
        if token in NOT_SETTINGS or token.startswith("OTEL_"):
            continue
        key = token.removeprefix(ENV_PREFIX)
        if key not in REFERENCE:
            unknown.add(token)
    assert not unknown, f"{path.name} mentions settings the code does not have: {sorted(unknown)}"


@pytest.mark.parametrize("key", ["BATCH_SIZE", "EVENT_QUEUE_SIZE", "EVENT_WORKER_COUNT", "MAX_BODY_SIZE"])
def test_migration_guide_states_current_defaults(key: str) -> None:
    """The guide explains changed defaults; it must quote the ones the code has now."""
    text = MIGRATING.read_text(encoding="utf-8")
    _, default = REFERENCE[key]
    assert render_default(key, default) in text, f"{MIGRATING.name} does not state {key}'s default"


def test_render_default_matches_the_table_style() -> None:
    assert render_default("APPLICATION_ID", "") == "required"
    assert render_default("X", None) == "`None`"
    assert render_default("X", False) == "`False`"
    assert render_default("X", 131_072) == "`131_072`"
    assert render_default("X", 1.0) == "`1.0`"
    assert render_default("X", "sub") == '`"sub"`'
    assert render_default("X", ()) == "`[]`"
    assert render_default("X", ("a", "b")) == '`["a", "b"]`'

"""moesif_otel.types: its Literals name what the code really produces, and it stays a leaf that
costs nothing to import (the hook aliases themselves are checked by mypy in test_typing.py)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

from moesif_otel import hooks, types
from moesif_otel.exporter import MoesifSpanExporter
from moesif_otel.processor import MoesifSpanProcessor, merge_stats


def test_drop_causes_are_the_dropped_counters_of_stats() -> None:
    exporter = MoesifSpanExporter(application_id="app")
    processor = MoesifSpanProcessor.for_exporter(exporter)
    try:
        stats = merge_stats(processor, exporter.stats())
    finally:
        processor.shutdown()
    dropped = {key.removeprefix("dropped_") for key in stats if key.startswith("dropped_")}
    assert dropped == set(get_args(types.DropCause))


def test_hook_kinds_are_the_checked_ones() -> None:
    assert set(hooks.CHECKS) == set(get_args(types.HookKind))


def test_leaf_module_with_third_party_names_for_the_type_checker_only() -> None:
    tree = ast.parse(Path(types.__file__).read_text())
    imported = []
    for node in tree.body:  # top-level statements only: `if TYPE_CHECKING:` blocks are skipped
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append(node.module or "")
    assert sorted(imported) == ["__future__", "collections.abc", "typing"]
    assert isinstance(types.IdentifyUser, str)  # resolved by the type checker, never at run time

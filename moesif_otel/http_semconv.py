"""Which HTTP semantic conventions the drop-in's server span speaks, and its route template.

``OTEL_SEMCONV_STABILITY_OPT_IN`` is read through OTel's own (process-wide, cached) reader, so
the drop-in and any OTel instrumentation in the same process always agree: unset means the old
names (``http.method``, ``http.status_code``, ...), ``http`` the stable ones, ``http/dup`` both.
:func:`init_mode` (ServerSpan's constructor) reads it and sets :data:`names`, which the request
path reads as two plain flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moesif_otel.internals import (
    StabilityMode,
    fastapi_route_template,
    http_stability_mode,
    report_new,
    report_old,
    schema_url,
)

__all__ = [
    "Names",
    "StabilityMode",
    "init_mode",
    "names",
    "report_new",
    "report_old",
    "route_template",
    "schema_url",
]


class Names:
    """Which names the HTTP mode in force writes: ``old``, ``new`` (stable) or both."""

    __slots__ = ("new", "old")

    def __init__(self) -> None:
        self.old = True  # OTel's default until init_mode() has read the opt-in
        self.new = False


names = Names()


def init_mode() -> StabilityMode:
    """Read the opt-in (once per process, as OTel's instrumentations do), update :data:`names`
    and return the HTTP mode."""
    mode = http_stability_mode()
    names.old = report_old(mode)
    names.new = report_new(mode)
    return mode


def route_template(scope: Mapping[str, Any]) -> str | None:
    """The matched route's template from the app's root, mount and router prefixes included.

    Read after the app ran, from what Starlette leaves in the scope: ``route`` (its template is
    relative to the mount that holds it), ``root_path`` (grown by every Mount on the way) and
    ``app_root_path`` (the root path before the first Mount). FastAPI (0.137 and later) keeps a
    router's ``include_router`` prefix out of the route and in its effective route context.
    """
    route = scope.get("route")
    if route is None:
        return None
    template = fastapi_route_template(scope, route)
    if not isinstance(template, str):
        template = getattr(route, "path_format", None) or getattr(route, "path", None)
        if not isinstance(template, str):
            return None
    app_root = scope.get("app_root_path")
    if isinstance(app_root, str):  # under a Mount: its prefix is the root path's growth
        root = scope.get("root_path") or ""
        if root.startswith(app_root) and len(root) > len(app_root):
            template = root[len(app_root) :] + template
    return template or None

"""Moesif app config (``/v1/config`` + ``/v1/rules``): dynamic sampling and governance decisions.

The fetched JSON is validated and compiled once into an immutable :class:`AppConfig`, so the
request path only runs precompiled regexes and dict lookups. The collector's JSON is not trusted:
anything malformed is skipped and logged once, and a decision never raises (moesifasgi answers the
client with a 500 when a cohort entry names an unknown rule).

Pure logic: no I/O, no threads, no OpenTelemetry. The fetcher and the ASGI integration live elsewhere.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from moesif_otel.logonce import LogOnce

logger = logging.getLogger("moesif_otel.appconfig")

__all__ = ["AppConfig", "GovernanceDecision", "RequestFacts", "keep", "weight_for"]

_UNKNOWN = "UNKNOWN"
_NO_VALUES: Mapping[str, str] = {}
_MAX_LOGGED_PROBLEMS = 512
_logged_problems = LogOnce(
    logger, limit=_MAX_LOGGED_PROBLEMS, full_note=" (further distinct app config problems are not logged)"
)


def _warn_once(message: str) -> None:
    """Log a config problem at WARNING the first time it is seen; a refetch every minute must not spam."""
    _logged_problems.warning(message, "moesif app config: %s", message)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- public value types ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestFacts:
    """What sampling and governance may look at, gathered once per request by the caller."""

    verb: str
    uri: str  # full URL
    path: str  # URL path (no query)
    ip: str | None
    headers: Mapping[str, str]  # lower-case names
    body: Any = None  # parsed JSON request body when available, else None
    user_id: str | None = None
    company_id: str | None = None


@dataclass(frozen=True)
class GovernanceDecision:
    """What the governance rules want done to one request's response."""

    blocked_by: str | None  # _id of the last blocking rule applied, None if no block
    status: int | None  # status to answer with when blocked
    headers: tuple[tuple[str, str], ...]  # lower-case names; to add to the response (blocking or not)
    body: bytes | None  # JSON body (utf-8) when blocked; b"" when the blocking rule has no body

    @property
    def blocked(self) -> bool:
        return self.blocked_by is not None


# --- sampling helpers -----------------------------------------------------------------------------

_LOW_56 = (1 << 56) - 1


def weight_for(rate: int) -> int:
    """How many real calls one kept event stands for: ``floor(100 / rate)``.

    A rate of 0 keeps nothing, so no event ever carries its weight; 1 is returned (as moesifasgi does)
    so a caller that asks anyway gets a harmless value.
    """
    if rate <= 0 or rate >= 100:
        return 1
    return 100 // rate


def keep(trace_id: int, rate: int) -> bool:
    """Keep ``rate`` percent of traces: those whose trace id's low 56 bits are below ``rate``% of 2**56.

    The low 56 bits are the part W3C Trace Context (level 2) requires to be random. OTel's
    TraceIdRatioBased compares the low 64 bits instead, so its decisions differ from these.
    Deterministic per trace, so an incoming call and the outgoing calls it makes are kept or dropped
    together.
    """
    if rate >= 100:
        return True
    if rate <= 0:
        return False
    return (trace_id & _LOW_56) < (rate << 56) // 100


def _parse_rate(value: Any) -> int | None:
    """A sample rate as an int 0..100, or None when it is not one (fractions in (0, 1) count as 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value < 0 or value > 100:
        return None
    if 0 < value < 1:
        return 1
    return int(value)


# --- field access and regex conditions ------------------------------------------------------------


def _value_text(value: Any) -> str | None:
    """A JSON value as text: strings as they are, scalars as JSON spells them, the rest as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    try:
        return json.dumps(value, separators=(",", ":"), default=str)
    except (TypeError, ValueError, RecursionError):
        return None


def _as_text(value: Any) -> str | None:
    """The text a regex condition is matched against; None (no match) for a missing or empty field."""
    if isinstance(value, str):
        return value or None
    return _value_text(value) or None


def _header(headers: Mapping[str, str], name: str) -> Any:
    value = headers.get(name)
    if value is None:
        for key, val in headers.items():
            if isinstance(key, str) and key.lower() == name:
                return val
    return value


def _body_field(body: Any, key: str) -> Any:
    return body.get(key) if isinstance(body, dict) else None


_RuleGetter = Callable[[RequestFacts], Any]
_SampleGetter = Callable[[RequestFacts, int | None], Any]

_RULE_FIELDS: dict[str, _RuleGetter] = {
    "request.verb": lambda f: f.verb,
    "request.ip": lambda f: f.ip,
    "request.ip_address": lambda f: f.ip,
    "request.route": lambda f: f.uri,  # the full URI, as Moesif's governance does
}

_SAMPLE_FIELDS: dict[str, _SampleGetter] = {
    "request.verb": lambda f, s: f.verb,
    "request.route": lambda f, s: f.path or "/",
    "request.ip_address": lambda f, s: f.ip,
    "request.ip": lambda f, s: f.ip,
    "response.status": lambda f, s: s,
}

_HEADERS_PREFIX = "request.headers."
_BODY_PREFIX = "request.body."


def _rule_getter(path: str) -> _RuleGetter | None:
    getter = _RULE_FIELDS.get(path)
    if getter is not None:
        return getter
    if path.startswith(_HEADERS_PREFIX) and len(path) > len(_HEADERS_PREFIX):
        name = path[len(_HEADERS_PREFIX) :].lower()
        return lambda f: _header(f.headers, name)
    if path.startswith(_BODY_PREFIX) and len(path) > len(_BODY_PREFIX):
        key = path[len(_BODY_PREFIX) :]
        return lambda f: _body_field(f.body, key)
    return None


class _ConfigProblem(Exception):
    """Something in the config that must be skipped; the message says what and why."""


class _UnknownPath(_ConfigProblem):
    """A condition path this version does not know (Moesif may add some)."""


def _compile_condition(cond: Any, getters: Callable[[str], Any], where: str) -> tuple[Any, re.Pattern[str]]:
    if not isinstance(cond, dict):
        raise _ConfigProblem(f"{where}: condition is not an object: {_short(cond)}")
    path, value = cond.get("path"), cond.get("value")
    if not isinstance(path, str) or value is None or isinstance(value, (dict, list)):
        raise _ConfigProblem(f"{where}: condition needs a string path and a value: {_short(cond)}")
    getter = getters(path)
    if getter is None:
        raise _UnknownPath(f"{where}: unknown condition path {path!r}")
    try:
        pattern = re.compile(value if isinstance(value, str) else str(value))
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise _ConfigProblem(f"{where}: invalid regex {_short(value)}: {exc}") from None
    return getter, pattern


# --- governance rules -----------------------------------------------------------------------------

_TAG_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_RULE_TYPES = ("regex", "user", "company")

_Condition = tuple[_RuleGetter, re.Pattern[str]]
_Rendered = tuple[tuple[tuple[str, str], ...], bytes | None]  # headers, body


def _clean_header_value(value: str) -> str:
    """Make a header value sendable: no control characters, latin-1 only. Spaces are kept."""
    value = _CONTROL_RE.sub("", value).strip()
    if not value.isascii():
        value = value.encode("latin-1", "replace").decode("latin-1")
    return value


class _Rule:
    """One validated, compiled governance rule."""

    __slots__ = (
        "anonymous",
        "block",
        "body",
        "body_bytes",
        "headers",
        "headers_static",
        "id",
        "kind",
        "match_sets",
        "not_matching",
        "status",
        "unidentified",
        "variables",
    )

    def __init__(self, raw: dict[str, Any]) -> None:
        """Validate ``raw``; raises _ConfigProblem with a reason when the rule must be skipped."""
        rule_id = raw.get("_id")
        if not isinstance(rule_id, str) or not rule_id:
            raise _ConfigProblem(f"governance rule without a string _id skipped: {_short(raw)}")
        where = f"governance rule {rule_id!r}"
        kind = raw.get("type")
        if kind not in _RULE_TYPES:
            raise _ConfigProblem(f"{where} skipped: unknown type {_short(kind)}")
        applied_to = raw.get("applied_to")
        if applied_to not in (None, "matching", "not_matching"):
            raise _ConfigProblem(f"{where} skipped: unknown applied_to {_short(applied_to)}")
        self.id: str = rule_id
        self.kind: str = kind
        self.block: bool = raw.get("block") is True
        self.not_matching: bool = applied_to == "not_matching"
        self.unidentified: bool = raw.get("applied_to_unidentified") is True
        self.match_sets = self._compile_regex_config(raw.get("regex_config"), where)
        self.variables = self._variable_positions(raw.get("variables"), where)

        response = raw.get("response")
        if response is None:
            response = {}
        if not isinstance(response, dict):
            raise _ConfigProblem(f"{where} skipped: response is not an object")
        self.status: int | None = None
        if self.block:
            self.status = self._parse_status(response.get("status"), where)
        self.headers = self._header_templates(response.get("headers"), where)
        self.body: Any = response.get("body") if self.block else None
        try:
            body_text = json.dumps(self.body, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            raise _ConfigProblem(f"{where} skipped: response body is not JSON") from None
        # Templates without merge tags are rendered once here, not per request.
        self.body_bytes: bytes | None = None
        if self.body is not None and not _TAG_RE.search(body_text):
            self.body_bytes = body_text.encode("utf-8")
        self.headers_static: tuple[tuple[str, str], ...] | None = None
        if not any(_TAG_RE.search(v) for _, v in self.headers):
            self.headers_static = tuple((k, _clean_header_value(v)) for k, v in self.headers)
        # What regex rules, unidentified and not_matching entities get (no cohort entry: tags are UNKNOWN).
        self.anonymous: _Rendered = self.render(_NO_VALUES)

    @staticmethod
    def _compile_regex_config(regex_config: Any, where: str) -> tuple[tuple[_Condition, ...], ...] | None:
        """None matches every request; an empty tuple matches none."""
        if not regex_config:
            return None
        if not isinstance(regex_config, list):
            raise _ConfigProblem(f"{where} skipped: regex_config is not a list")
        sets: list[tuple[_Condition, ...]] = []
        for entry in regex_config:
            conditions = entry.get("conditions") if isinstance(entry, dict) else None
            if not isinstance(conditions, list):
                raise _ConfigProblem(f"{where} skipped: regex_config entry without a conditions list")
            if not conditions:
                continue  # an empty AND-set matches nothing (as Moesif's SDKs do)
            compiled: list[_Condition] = []
            for cond in conditions:
                try:
                    compiled.append(_compile_condition(cond, _rule_getter, where))
                except _UnknownPath as exc:
                    # A path this version does not know can never match; other OR-sets still can.
                    _warn_once(f"{exc}; that condition set never matches")
                    compiled = []
                    break
                except _ConfigProblem as exc:
                    raise _ConfigProblem(f"{exc}; rule skipped") from None
            if compiled:
                sets.append(tuple(compiled))
        return tuple(sets)

    @staticmethod
    def _variable_positions(variables: Any, where: str) -> dict[str, int]:
        positions: dict[str, int] = {}
        if variables is None:
            return positions
        if not isinstance(variables, list):
            _warn_once(f"{where}: variables is not a list; ignored")
            return positions
        for index, var in enumerate(variables):
            name = var.get("name") if isinstance(var, dict) else None
            if isinstance(name, str) and name:
                positions.setdefault(name, index)
            else:
                _warn_once(f"{where}: variable without a name ignored: {_short(var)}")
        return positions

    @staticmethod
    def _parse_status(status: Any, where: str) -> int:
        if isinstance(status, str) and status.strip().isdigit():
            status = int(status.strip())
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise _ConfigProblem(f"{where} skipped: blocking rule has invalid status {_short(status)}")
        return status

    @staticmethod
    def _header_templates(headers: Any, where: str) -> tuple[tuple[str, str], ...]:
        if headers is None:
            return ()
        if not isinstance(headers, dict):
            _warn_once(f"{where}: response headers is not an object; ignored")
            return ()
        out: list[tuple[str, str]] = []
        for name, value in headers.items():
            if not isinstance(name, str) or not _TOKEN_RE.match(name):
                _warn_once(f"{where}: invalid header name {_short(name)} ignored")
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                _warn_once(f"{where}: header {name!r} has a non-text value; ignored")
                continue
            out.append((name.lower(), value if isinstance(value, str) else str(value)))
        return tuple(out)

    def matches(self, facts: RequestFacts) -> bool:
        sets = self.match_sets
        if sets is None:
            return True
        for conditions in sets:
            for getter, pattern in conditions:
                text = _as_text(getter(facts))
                if text is None or pattern.search(text) is None:
                    break
            else:
                return True
        return False

    def render(self, values: Mapping[str, str]) -> _Rendered:
        """Headers and body with merge tags filled from a cohort entry's values."""

        def fill(text: str) -> str:
            return _TAG_RE.sub(lambda m: self._tag_value(m.group(1), values), text)

        headers = self.headers_static
        if headers is None:
            headers = tuple((k, _clean_header_value(fill(v))) for k, v in self.headers)
        body = self.body_bytes
        if body is None and self.body is not None:
            rendered = _fill_json(self.body, fill)
            body = json.dumps(rendered, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return headers, body

    def _tag_value(self, name: str, values: Mapping[str, str]) -> str:
        """By key as given (Moesif keys values by variable name), else by the variable's position."""
        value = values.get(name)
        if value is None:
            position = self.variables.get(name)
            if position is not None:
                value = values.get(str(position))
        return _UNKNOWN if value is None else value


def _fill_json(obj: Any, fill: Callable[[str], str]) -> Any:
    if isinstance(obj, str):
        return fill(obj)
    if isinstance(obj, dict):
        return {(fill(k) if isinstance(k, str) else k): _fill_json(v, fill) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill_json(v, fill) for v in obj]
    return obj


class _CohortEntry:
    """One entity's membership in one rule's cohort; its rendering is memoised on first use."""

    __slots__ = ("_rendered", "rule", "values")

    def __init__(self, rule: _Rule, values: Mapping[str, str]) -> None:
        self.rule = rule
        self.values = values
        self._rendered: _Rendered | None = None

    def rendered(self) -> _Rendered:
        # A race between two requests only renders twice; both results are equal.
        if self._rendered is None:
            self._rendered = self.rule.render(self.values)
        return self._rendered


@dataclass(frozen=True)
class _Cohorts:
    """One kind of entity (users or companies): its rules and the config's cohort memberships."""

    entries: Mapping[str, tuple[_CohortEntry, ...]]  # entity id -> cohort entries with known rules
    member_of: Mapping[str, frozenset[str]]  # entity id -> ids of the rules whose cohort it is in
    not_matching: tuple[_Rule, ...]
    unidentified: tuple[_Rule, ...]

    def applicable(self, facts: RequestFacts, entity_id: str | None) -> Iterable[tuple[_Rule, _Rendered]]:
        if entity_id is None or entity_id == "":
            for rule in self.unidentified:
                if rule.matches(facts):
                    yield rule, rule.anonymous
            return
        if not isinstance(entity_id, str):
            entity_id = str(entity_id)
        for entry in self.entries.get(entity_id, ()):
            if not entry.rule.not_matching and entry.rule.matches(facts):
                yield entry.rule, entry.rendered()
        member_of = self.member_of.get(entity_id, frozenset())
        for rule in self.not_matching:
            if rule.id not in member_of and rule.matches(facts):
                yield rule, rule.anonymous


_EMPTY_COHORTS = _Cohorts({}, {}, (), ())


def _parse_cohorts(raw: Any, kind: str, rules_by_id: Mapping[str, _Rule]) -> _Cohorts:
    key = f"{kind}_rules"
    kind_rules = [r for r in rules_by_id.values() if r.kind == kind]
    entries: dict[str, tuple[_CohortEntry, ...]] = {}
    member_of: dict[str, frozenset[str]] = {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        _warn_once(f"config {key} is not an object; ignored")
        raw = {}
    for entity_id, raw_entries in raw.items():
        if not isinstance(raw_entries, list):
            _warn_once(f"config {key}[{_short(entity_id)}] is not a list; ignored")
            continue
        kept: list[_CohortEntry] = []
        ids: set[str] = set()
        for raw_entry in raw_entries:
            rule_id = raw_entry.get("rules") if isinstance(raw_entry, dict) else None
            if not isinstance(rule_id, str):
                _warn_once(f"config {key}[{_short(entity_id)}] entry without a rule id skipped")
                continue
            ids.add(rule_id)
            rule = rules_by_id.get(rule_id)
            if rule is None or rule.kind != kind:
                what = "unknown rule" if rule is None else f"a {rule.kind} rule"
                _warn_once(f"config {key}[{_short(entity_id)}] names {what} {rule_id!r}; entry skipped")
                continue
            kept.append(_CohortEntry(rule, _parse_values(raw_entry.get("values"), key, rule_id)))
        if kept:
            entries[str(entity_id)] = tuple(kept)
        if ids:
            member_of[str(entity_id)] = frozenset(ids)
    return _Cohorts(
        entries=entries,
        member_of=member_of,
        not_matching=tuple(r for r in kind_rules if r.not_matching),
        unidentified=tuple(r for r in kind_rules if r.unidentified),
    )


def _parse_values(raw: Any, key: str, rule_id: str) -> Mapping[str, str]:
    if raw is None:
        return _NO_VALUES
    if not isinstance(raw, dict):
        _warn_once(f"config {key} values for rule {rule_id!r} is not an object; ignored")
        return _NO_VALUES
    values: dict[str, str] = {}
    for name, value in raw.items():
        text = _value_text(value)
        if text is not None:
            values[str(name)] = text
    return values


class _Decision:
    """Accumulates rules in order: later rules overwrite status/body; headers merge, last one wins."""

    __slots__ = ("blocked_by", "body", "headers", "status")

    def __init__(self) -> None:
        self.blocked_by: str | None = None
        self.status: int | None = None
        self.body: bytes | None = None
        self.headers: dict[str, str] = {}

    def apply(self, rule: _Rule, rendered: _Rendered) -> None:
        headers, body = rendered
        self.headers.update(headers)
        if rule.block:
            self.blocked_by = rule.id
            self.status = rule.status
            self.body = body if body is not None else b""

    def result(self) -> GovernanceDecision | None:
        if self.blocked_by is None:
            if not self.headers:
                return None
            return GovernanceDecision(None, None, tuple(self.headers.items()), None)
        headers = dict(self.headers)
        if self.body and "content-type" not in headers:
            headers["content-type"] = "application/json"
        return GovernanceDecision(self.blocked_by, self.status, tuple(headers.items()), self.body)


# --- sampling config ------------------------------------------------------------------------------

_SampleCondition = tuple[_SampleGetter, re.Pattern[str]]


def _parse_sample_regex(raw: Any) -> tuple[tuple[tuple[_SampleCondition, ...], int], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        _warn_once("config regex_config is not a list; ignored")
        return ()
    out: list[tuple[tuple[_SampleCondition, ...], int]] = []
    for index, entry in enumerate(raw):
        where = f"config regex_config[{index}]"
        if not isinstance(entry, dict):
            _warn_once(f"{where} is not an object; skipped")
            continue
        rate = _parse_rate(entry.get("sample_rate"))
        conditions = entry.get("conditions")
        if rate is None:
            _warn_once(f"{where} has invalid sample_rate {_short(entry.get('sample_rate'))}; skipped")
            continue
        if not isinstance(conditions, list) or not conditions:
            _warn_once(f"{where} has no conditions; skipped")
            continue
        try:
            compiled = tuple(_compile_condition(c, _SAMPLE_FIELDS.get, where) for c in conditions)
        except _ConfigProblem as exc:
            _warn_once(f"{exc}; entry skipped")
            continue
        out.append((compiled, rate))
    return tuple(out)


def _parse_rate_map(raw: Any, key: str) -> Mapping[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        _warn_once(f"config {key} is not an object; ignored")
        return {}
    rates: dict[str, int] = {}
    for entity_id, value in raw.items():
        rate = _parse_rate(value)
        if rate is None:
            _warn_once(f"config {key}[{_short(entity_id)}] has invalid rate {_short(value)}; skipped")
        else:
            rates[str(entity_id)] = rate
    return rates


# --- the config -----------------------------------------------------------------------------------


class AppConfig:
    """One fetched app config, compiled. Immutable: a refetch builds a new one and swaps the reference."""

    __slots__ = (
        "_companies",
        "_company_rates",
        "_etag",
        "_has_rules",
        "_needs_body",
        "_regex_rules",
        "_rules_tag",
        "_sample_rate",
        "_sample_regex",
        "_user_rates",
        "_users",
    )

    def __init__(
        self,
        *,
        sample_rate: int = 100,
        sample_regex: tuple[tuple[tuple[_SampleCondition, ...], int], ...] = (),
        user_rates: Mapping[str, int] | None = None,
        company_rates: Mapping[str, int] | None = None,
        regex_rules: tuple[_Rule, ...] = (),
        users: _Cohorts = _EMPTY_COHORTS,
        companies: _Cohorts = _EMPTY_COHORTS,
        has_rules: bool = False,
        needs_body: bool = False,
        etag: str | None = None,
        rules_tag: str | None = None,
    ) -> None:
        """Internal: use :meth:`default` or :meth:`from_json`."""
        self._needs_body = needs_body
        self._sample_rate = sample_rate
        self._sample_regex = sample_regex
        self._user_rates = user_rates or {}
        self._company_rates = company_rates or {}
        self._regex_rules = regex_rules
        self._users = users
        self._companies = companies
        self._has_rules = has_rules
        self._etag = etag
        self._rules_tag = rules_tag

    @classmethod
    def default(cls) -> AppConfig:
        """What applies before the first successful fetch: keep everything, no rules."""
        return cls()

    @classmethod
    def from_json(
        cls, config: Any, rules: Any, *, etag: str | None = None, rules_tag: str | None = None
    ) -> AppConfig:
        """Compile parsed ``/v1/config`` and ``/v1/rules`` bodies. Never raises on bad input."""
        if config is None:
            config = {}
        elif not isinstance(config, dict):
            _warn_once(f"config is not a JSON object ({type(config).__name__}); using defaults")
            config = {}
        rate = 100
        if config.get("sample_rate") is not None:
            parsed = _parse_rate(config["sample_rate"])
            if parsed is None:
                _warn_once(f"config sample_rate {_short(config['sample_rate'])} is invalid; using 100")
            else:
                rate = parsed

        rules_by_id = _parse_rules(rules)
        return cls(
            sample_rate=rate,
            sample_regex=_parse_sample_regex(config.get("regex_config")),
            user_rates=_parse_rate_map(config.get("user_sample_rate"), "user_sample_rate"),
            company_rates=_parse_rate_map(config.get("company_sample_rate"), "company_sample_rate"),
            regex_rules=tuple(r for r in rules_by_id.values() if r.kind == "regex"),
            users=_parse_cohorts(config.get("user_rules"), "user", rules_by_id),
            companies=_parse_cohorts(config.get("company_rules"), "company", rules_by_id),
            has_rules=bool(rules_by_id),
            needs_body=any(_uses_body(rule) for rule in (rules if isinstance(rules, list) else ())),
            etag=etag,
            rules_tag=rules_tag,
        )

    @property
    def etag(self) -> str | None:
        return self._etag

    @property
    def rules_tag(self) -> str | None:
        return self._rules_tag

    @property
    def has_rules(self) -> bool:
        return self._has_rules

    @property
    def needs_body(self) -> bool:
        """Some rule matches on ``request.body.*``: the body must be read before the app runs."""
        return self._needs_body

    @property
    def samples(self) -> bool:
        """Anything but "keep every event": without it, sampling work can be skipped entirely."""
        return bool(self._sample_rate != 100 or self._sample_regex or self._user_rates or self._company_rates)

    def sample_rate(self, facts: RequestFacts, status: int | None) -> int:
        """0..100. First matching regex_config entry, then user rate, company rate, global rate."""
        try:
            for conditions, rate in self._sample_regex:
                for getter, pattern in conditions:
                    text = _as_text(getter(facts, status))
                    if text is None or pattern.search(text) is None:
                        break
                else:
                    return rate
            user_id = facts.user_id
            if user_id is not None and self._user_rates:
                user_rate = self._user_rates.get(user_id if isinstance(user_id, str) else str(user_id))
                if user_rate is not None:
                    return user_rate
            company_id = facts.company_id
            if company_id is not None and self._company_rates:
                company_rate = self._company_rates.get(
                    company_id if isinstance(company_id, str) else str(company_id)
                )
                if company_rate is not None:
                    return company_rate
        except Exception as exc:  # never let sampling break a request; keep the event
            _warn_once(f"sampling failed ({type(exc).__name__}: {exc}); event kept")
            return 100
        return self._sample_rate

    def govern(self, facts: RequestFacts) -> GovernanceDecision | None:
        """Apply regex, then company, then user rules. None when there is nothing to do."""
        if not self._has_rules:
            return None
        try:
            decision = _Decision()
            for rule in self._regex_rules:
                if rule.matches(facts):
                    decision.apply(rule, rule.anonymous)
            for rule, rendered in self._companies.applicable(facts, facts.company_id):
                decision.apply(rule, rendered)
            for rule, rendered in self._users.applicable(facts, facts.user_id):
                decision.apply(rule, rendered)
            return decision.result()
        except Exception as exc:  # never let governance break a request; let it through
            _warn_once(f"governance failed ({type(exc).__name__}: {exc}); request not governed")
            return None

    def __repr__(self) -> str:
        return (
            f"AppConfig(sample_rate={self._sample_rate}, regex_config={len(self._sample_regex)}, "
            f"user_rates={len(self._user_rates)}, company_rates={len(self._company_rates)}, "
            f"has_rules={self._has_rules}, etag={self._etag!r}, rules_tag={self._rules_tag!r})"
        )


def _uses_body(raw: Any) -> bool:
    if not isinstance(raw, dict) or not isinstance(raw.get("regex_config"), list):
        return False
    return any(
        isinstance(cond, dict) and str(cond.get("path", "")).startswith(_BODY_PREFIX)
        for entry in raw["regex_config"]
        if isinstance(entry, dict) and isinstance(entry.get("conditions"), list)
        for cond in entry["conditions"]
    )


def _parse_rules(rules: Any) -> dict[str, _Rule]:
    """Valid rules by _id, in the order received."""
    if rules is None:
        return {}
    if not isinstance(rules, list):
        _warn_once(f"rules is not a JSON array ({type(rules).__name__}); no governance rules")
        return {}
    by_id: dict[str, _Rule] = {}
    for raw in rules:
        if not isinstance(raw, dict):
            _warn_once(f"governance rule is not an object; skipped: {_short(raw)}")
            continue
        try:
            rule = _Rule(raw)
        except _ConfigProblem as exc:
            _warn_once(str(exc))
            continue
        if rule.id in by_id:
            _warn_once(f"governance rule {rule.id!r} appears twice; the second is skipped")
            continue
        by_id[rule.id] = rule
    return by_id

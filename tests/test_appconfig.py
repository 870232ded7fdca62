"""appconfig.py: dynamic sampling and governance decisions compiled from /v1/config and /v1/rules
(pure logic; fetching and applying them in a real app: test_config_sync.py)."""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import pytest

from moesif_otel import appconfig
from moesif_otel.appconfig import AppConfig, GovernanceDecision, RequestFacts, keep, weight_for

LOGGER = "moesif_otel.appconfig"


@pytest.fixture(autouse=True)
def _fresh_problem_log() -> None:
    appconfig._logged_problems.clear()


def facts(**overrides: Any) -> RequestFacts:
    values: dict[str, Any] = {
        "verb": "GET",
        "uri": "https://api.example.com/items/1?page=2",
        "path": "/items/1",
        "ip": "10.0.0.1",
        "headers": {},
    }
    values.update(overrides)
    return RequestFacts(**values)


def cond(path: str, value: Any) -> dict[str, Any]:
    return {"path": path, "value": value}


def rule(rule_id: str, kind: str = "regex", *, conditions: list | None = None, **fields: Any) -> dict:
    raw: dict[str, Any] = {"_id": rule_id, "type": kind, "block": False, "applied_to": "matching"}
    if conditions is not None:
        raw["regex_config"] = [{"conditions": conditions}]
    raw.update(fields)
    return raw


def blocking(status: int = 403, headers: dict | None = None, body: Any = None) -> dict[str, Any]:
    return {"block": True, "response": {"status": status, "headers": headers or {}, "body": body}}


def warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and needle in r.getMessage()
    ]


# --- sampling -------------------------------------------------------------------------------------

PRECEDENCE_CONFIG = {
    "sample_rate": 70,
    "user_sample_rate": {"u1": 50, "u0": 0},
    "company_sample_rate": {"c1": 10},
    "regex_config": [
        {"conditions": [cond("request.route", "^/health")], "sample_rate": 0},
        {"conditions": [cond("request.verb", "POST")], "sample_rate": 20},
        {"conditions": [cond("request.verb", "POST")], "sample_rate": 30},
    ],
}


@pytest.mark.parametrize(
    ("request_facts", "expected"),
    [
        (facts(path="/health/live", user_id="u1", company_id="c1"), 0),  # regex beats user
        (facts(verb="POST", user_id="u1"), 20),  # first matching regex entry wins
        (facts(user_id="u1", company_id="c1"), 50),  # user beats company
        (facts(user_id="u0"), 0),  # a user rate of 0 is a rate, not "unset"
        (facts(user_id="u2", company_id="c1"), 10),  # company when the user has no rate
        (facts(user_id="u2", company_id="c2"), 70),  # global
        (facts(), 70),
    ],
)
def test_sample_rate_precedence(request_facts: RequestFacts, expected: int) -> None:
    cfg = AppConfig.from_json(PRECEDENCE_CONFIG, [])
    assert cfg.sample_rate(request_facts, 200) == expected


def test_sample_rate_defaults_to_100() -> None:
    assert AppConfig.default().sample_rate(facts(), 200) == 100
    assert AppConfig.from_json({}, None).sample_rate(facts(user_id="u"), 200) == 100


@pytest.mark.parametrize(
    ("path", "value", "request_facts", "status", "matches"),
    [
        ("request.verb", "^(POST|PUT)$", facts(verb="PUT"), 200, True),
        ("request.verb", "^(POST|PUT)$", facts(verb="GET"), 200, False),
        # request.route is the URL path: no host, no query
        ("request.route", "^/items/[0-9]+$", facts(), 200, True),
        ("request.route", "example", facts(), 200, False),
        ("request.route", "page", facts(), 200, False),
        ("request.route", "^/$", facts(path=""), 200, True),
        ("request.ip_address", r"^10\.", facts(), 200, True),
        ("request.ip_address", r"^10\.", facts(ip="192.168.1.1"), 200, False),
        ("request.ip_address", ".*", facts(ip=None), 200, False),
        ("response.status", "^5", facts(), 503, True),
        ("response.status", "^5", facts(), 200, False),
        ("response.status", ".*", facts(), None, False),
        ("response.status", 404, facts(), 404, True),  # non-string values are str()-ed
    ],
)
def test_sample_regex_paths(
    path: str, value: Any, request_facts: RequestFacts, status: int | None, matches: bool
) -> None:
    cfg = AppConfig.from_json(
        {"sample_rate": 80, "regex_config": [{"conditions": [cond(path, value)], "sample_rate": 5}]}, []
    )
    assert cfg.sample_rate(request_facts, status) == (5 if matches else 80)


def test_sample_regex_conditions_are_anded() -> None:
    entry = {"conditions": [cond("request.verb", "GET"), cond("response.status", "^2")], "sample_rate": 5}
    cfg = AppConfig.from_json({"regex_config": [entry]}, [])
    assert cfg.sample_rate(facts(), 200) == 5
    assert cfg.sample_rate(facts(), 500) == 100
    assert cfg.sample_rate(facts(verb="POST"), 200) == 100


def test_bad_sample_regex_entries_are_skipped_not_rate_100(caplog: pytest.LogCaptureFixture) -> None:
    config = {
        "sample_rate": 40,
        "regex_config": [
            {"conditions": [cond("request.route", "(")], "sample_rate": 100},  # invalid regex
            {"conditions": [cond("request.nope", ".*")], "sample_rate": 100},  # unknown path
            {"conditions": [cond("request.route", ".*")], "sample_rate": "all"},  # invalid rate
            {"conditions": [], "sample_rate": 100},  # matches nothing
            "junk",
            {"conditions": [cond("request.verb", "POST")], "sample_rate": 7},
        ],
    }
    cfg = AppConfig.from_json(config, [])
    assert cfg.sample_rate(facts(), 200) == 40
    assert cfg.sample_rate(facts(verb="POST"), 200) == 7
    assert warnings(caplog, "invalid regex")
    assert warnings(caplog, "unknown condition path 'request.nope'")
    assert warnings(caplog, "invalid sample_rate")


@pytest.mark.parametrize(
    ("config", "user_id", "expected"),
    [
        ({"sample_rate": "50"}, None, 100),
        ({"sample_rate": 150}, None, 100),
        ({"sample_rate": True}, None, 100),
        ({"sample_rate": 12.5}, None, 12),
        ({"sample_rate": 0.2}, None, 1),  # a tiny rate must not become "drop everything"
        ({"sample_rate": 30, "user_sample_rate": {"u": -1}}, "u", 30),
        ({"sample_rate": 30, "user_sample_rate": {"u": None}}, "u", 30),
        ({"sample_rate": 30, "user_sample_rate": ["u"]}, "u", 30),
    ],
)
def test_invalid_rates_are_ignored(config: dict, user_id: str | None, expected: int) -> None:
    assert AppConfig.from_json(config, []).sample_rate(facts(user_id=user_id), 200) == expected


@pytest.mark.parametrize(
    ("rate", "weight"), [(100, 1), (50, 2), (33, 3), (25, 4), (10, 10), (1, 100), (0, 1)]
)
def test_weight_for(rate: int, weight: int) -> None:
    assert weight_for(rate) == weight


def test_keep_extremes_and_determinism() -> None:
    rng = random.Random(7)
    ids = [rng.getrandbits(128) for _ in range(500)]
    assert all(keep(t, 100) for t in ids)
    assert not any(keep(t, 0) for t in ids)
    assert [keep(t, 37) for t in ids] == [keep(t, 37) for t in ids]
    # only the low 56 bits count, so the decision is stable whatever the high bits are
    for t in ids:
        assert keep(t, 37) == keep((t & ((1 << 56) - 1)) | (0xABCDEF << 100), 37)
    assert keep(0, 1) is True
    assert keep((1 << 56) - 1, 99) is False


@pytest.mark.parametrize("rate", [1, 10, 33, 50, 90])
def test_keep_fraction_tracks_rate(rate: int) -> None:
    rng = random.Random(rate)
    n = 20_000
    kept = sum(keep(rng.getrandbits(128), rate) for _ in range(n))
    assert abs(kept / n - rate / 100) < 0.03


def test_keep_is_monotonic_in_rate() -> None:
    # A trace kept at a lower rate is kept at every higher rate (incoming and outgoing agree).
    rng = random.Random(3)
    for _ in range(2000):
        t = rng.getrandbits(128)
        kept_at = [r for r in range(101) if keep(t, r)]
        assert kept_at == list(range(kept_at[0], 101))


# --- governance: regex rules ----------------------------------------------------------------------


def test_regex_rule_blocks_with_headers_and_body() -> None:
    raw = rule(
        "r_admin",
        conditions=[cond("request.route", r"^https://api\.example\.com/admin")],
        **blocking(
            403,
            headers={"X-Blocked-Reason": "admin is {{state}}", "Retry-After": 30},
            body={"error": "forbidden {{state}}", "nested": [{"x": "{{state}}"}, 1, None]},
        ),
    )
    cfg = AppConfig.from_json({}, [raw])
    assert cfg.has_rules
    decision = cfg.govern(facts(uri="https://api.example.com/admin/users", path="/admin/users"))
    assert isinstance(decision, GovernanceDecision)
    assert decision.blocked
    assert decision.blocked_by == "r_admin"
    assert decision.status == 403
    assert dict(decision.headers) == {
        "x-blocked-reason": "admin is UNKNOWN",
        "retry-after": "30",
        "content-type": "application/json",
    }
    assert decision.body is not None
    assert json.loads(decision.body) == {"error": "forbidden UNKNOWN", "nested": [{"x": "UNKNOWN"}, 1, None]}
    assert cfg.govern(facts()) is None


def test_non_blocking_rule_adds_headers_only() -> None:
    raw = rule(
        "r_warn",
        conditions=[cond("request.verb", "^DELETE$")],
        response={"status": 200, "headers": {"X-Deprecated": "use archive instead"}, "body": {"x": 1}},
    )
    cfg = AppConfig.from_json({}, [raw])
    decision = cfg.govern(facts(verb="DELETE"))
    assert decision == GovernanceDecision(None, None, (("x-deprecated", "use archive instead"),), None)
    assert not decision.blocked
    assert cfg.govern(facts(verb="GET")) is None


def test_blocking_rule_without_body_has_empty_body_and_no_content_type() -> None:
    cfg = AppConfig.from_json({}, [rule("r", conditions=[cond("request.verb", "GET")], **blocking(429))])
    decision = cfg.govern(facts())
    assert decision is not None
    assert (decision.status, decision.body, decision.headers) == (429, b"", ())


def test_rule_content_type_header_is_kept() -> None:
    raw = rule("r", **blocking(400, headers={"Content-Type": "application/problem+json"}, body={"t": "x"}))
    decision = AppConfig.from_json({}, [raw]).govern(facts())
    assert decision is not None
    assert dict(decision.headers) == {"content-type": "application/problem+json"}


@pytest.mark.parametrize(
    ("regex_config", "request_facts", "matches"),
    [
        (None, facts(), True),  # absent regex_config: every request
        ([], facts(), True),
        ([{"conditions": []}], facts(), False),  # an empty AND-set matches nothing
        ([{"conditions": [cond("request.verb", "GET"), cond("request.ip", r"^10\.")]}], facts(), True),
        (
            [{"conditions": [cond("request.verb", "GET"), cond("request.ip", r"^10\.")]}],
            facts(ip="8.8.8.8"),
            False,
        ),  # AND
        (
            [{"conditions": [cond("request.verb", "POST")]}, {"conditions": [cond("request.ip", "^10")]}],
            facts(),
            True,
        ),  # OR
        ([{"conditions": [cond("request.ip_address", "^10")]}], facts(), True),
        ([{"conditions": [cond("request.ip", ".*")]}], facts(ip=None), False),
        # request.route is the full URI for governance (host and query included)
        ([{"conditions": [cond("request.route", r"page=2$")]}], facts(), True),
        # an unknown path makes only its own set never match
        ([{"conditions": [cond("request.future", ".*")]}], facts(), False),
        (
            [{"conditions": [cond("request.future", ".*")]}, {"conditions": [cond("request.verb", "GET")]}],
            facts(),
            True,
        ),
    ],
)
def test_rule_regex_config_matching(regex_config: Any, request_facts: RequestFacts, matches: bool) -> None:
    raw = rule("r", response={"headers": {"X-Hit": "1"}})
    if regex_config is not None:
        raw["regex_config"] = regex_config
    decision = AppConfig.from_json({}, [raw]).govern(request_facts)
    assert (decision is not None) == matches


@pytest.mark.parametrize(
    ("path", "value", "body", "matches"),
    [
        ("request.body.operationName", "^Delete", {"operationName": "DeleteUser"}, True),
        ("request.body.operationName", "^Delete", {"operationName": "GetUser"}, False),
        ("request.body.operationName", "^Delete", None, False),
        ("request.body.tier", "^gold$", {"tier": "gold"}, True),
        ("request.body.tier", "^gold$", {"tier": "silver"}, False),
        ("request.body.tier", "^gold$", [{"tier": "gold"}], False),  # only top-level keys of a dict
        ("request.body.tier", "^gold$", '{"tier": "gold"}', False),
        ("request.body.count", "^5$", {"count": 5}, True),
        ("request.body.admin", "^true$", {"admin": True}, True),
        ("request.body.user", '"id":1', {"user": {"id": 1}}, True),
        ("request.body.missing", ".*", {"tier": "gold"}, False),
    ],
)
def test_rule_request_body_fields(path: str, value: str, body: Any, matches: bool) -> None:
    cfg = AppConfig.from_json({}, [rule("r", conditions=[cond(path, value)], **blocking(400))])
    assert (cfg.govern(facts(verb="POST", body=body)) is not None) == matches


@pytest.mark.parametrize(
    ("path", "headers", "matches"),
    [
        ("request.headers.X-Api-Version", {"x-api-version": "1"}, True),
        ("request.headers.x-api-version", {"x-api-version": "1"}, True),
        ("request.headers.X-API-VERSION", {"X-Api-Version": "1"}, True),  # even if the map is not lowered
        ("request.headers.X-Api-Version", {"x-api-version": "2"}, False),
        ("request.headers.X-Api-Version", {}, False),
    ],
)
def test_rule_request_headers_case_insensitive(path: str, headers: dict, matches: bool) -> None:
    cfg = AppConfig.from_json({}, [rule("r", conditions=[cond(path, "^1$")], **blocking(400))])
    assert (cfg.govern(facts(headers=headers)) is not None) == matches


def test_header_values_are_sanitised_but_spaces_kept() -> None:
    raw = rule(
        "r",
        response={"headers": {"X-Note": " a b\r\nInjected: 1\x00 ", "X-Price": "5 €", "Bad Name": "x"}},
    )
    decision = AppConfig.from_json({}, [raw]).govern(facts())
    assert decision is not None
    assert dict(decision.headers) == {"x-note": "a bInjected: 1", "x-price": "5 ?"}


# --- governance: user and company cohorts ---------------------------------------------------------

PLAN_RULE = rule(
    "r_plan",
    "user",
    conditions=[cond("request.route", "/items")],
    variables=[{"name": "plan", "path": "user.metadata.plan"}, {"name": "limit", "path": "x.limit"}],
    **blocking(
        429,
        headers={"X-Plan": "{{plan}}", "X-Limit": "{{ limit }}"},
        body={"message": "{{plan}} plan allows {{limit}} calls", "other": "{{missing}}"},
    ),
)


@pytest.mark.parametrize(
    ("values", "plan", "limit"),
    [
        ({"0": "free", "1": "1000"}, "free", "1000"),  # by the variable's position
        ({"plan": "pro", "limit": 5}, "pro", "5"),  # by the variable's name
        ({"0": "free"}, "free", "UNKNOWN"),
        (None, "UNKNOWN", "UNKNOWN"),
    ],
)
def test_user_cohort_rule_with_merge_tags(values: Any, plan: str, limit: str) -> None:
    entry: dict[str, Any] = {"rules": "r_plan"}
    if values is not None:
        entry["values"] = values
    cfg = AppConfig.from_json({"user_rules": {"u1": [entry]}}, [PLAN_RULE])
    decision = cfg.govern(facts(user_id="u1"))
    assert decision is not None
    assert (decision.blocked_by, decision.status) == ("r_plan", 429)
    assert dict(decision.headers) == {"x-plan": plan, "x-limit": limit, "content-type": "application/json"}
    assert decision.body is not None
    assert json.loads(decision.body) == {"message": f"{plan} plan allows {limit} calls", "other": "UNKNOWN"}

    assert cfg.govern(facts(user_id="u2")) is None  # not in the cohort
    assert cfg.govern(facts(user_id=None)) is None  # rule is not applied_to_unidentified
    assert cfg.govern(facts(user_id="u1", uri="https://api.example.com/other")) is None  # regex


def test_not_matching_rule_applies_outside_the_cohort() -> None:
    raw = rule(
        "r_not_paid",
        "user",
        applied_to="not_matching",
        conditions=[cond("request.route", "/items")],
        **blocking(402, body={"msg": "upgrade, {{name}}"}),
    )
    cfg = AppConfig.from_json(
        {"user_rules": {"paid": [{"rules": "r_not_paid", "values": {"name": "x"}}]}}, [raw]
    )
    assert cfg.govern(facts(user_id="paid")) is None
    decision = cfg.govern(facts(user_id="someone"))
    assert decision is not None
    assert decision.blocked_by == "r_not_paid"
    assert json.loads(decision.body or b"") == {"msg": "upgrade, UNKNOWN"}
    # the rule's regex must still match
    assert cfg.govern(facts(user_id="someone", uri="https://api.example.com/health")) is None
    # unidentified users are not "outside the cohort" unless applied_to_unidentified says so
    assert cfg.govern(facts(user_id=None)) is None


@pytest.mark.parametrize("kind", ["user", "company"])
def test_applied_to_unidentified(kind: str) -> None:
    raw = rule("r_anon", kind, applied_to_unidentified=True, **blocking(401, body={"error": "who are you"}))
    key = f"{kind}_id"
    cfg = AppConfig.from_json({}, [raw])
    decision = cfg.govern(facts(**{key: None}))
    assert decision is not None
    assert decision.blocked_by == "r_anon"
    assert decision.status == 401
    assert cfg.govern(facts(**{key: "known"})) is None
    assert cfg.govern(facts(**{key: ""})) is not None  # an empty id is no identity


def test_company_cohort_rule() -> None:
    raw = rule("r_co", "company", response={"headers": {"X-Quota": "{{quota}}"}})
    cfg = AppConfig.from_json(
        {"company_rules": {"acme": [{"rules": "r_co", "values": {"quota": "10k"}}]}}, [raw]
    )
    decision = cfg.govern(facts(company_id="acme"))
    assert decision is not None
    assert decision.headers == (("x-quota", "10k"),)
    assert cfg.govern(facts(company_id="other")) is None
    assert cfg.govern(facts(company_id=None, user_id="acme")) is None  # user ids are not company ids


def test_order_regex_then_company_then_user_later_overwrites() -> None:
    rules = [
        rule("r_regex", **blocking(403, headers={"A": "regex", "B": "regex"}, body={"by": "regex"})),
        rule(
            "r_company",
            "company",
            **blocking(429, headers={"B": "company", "C": "company"}, body={"by": "co"}),
        ),
        rule("r_user", "user", response={"headers": {"C": "user"}}),
        rule("r_user_block", "user", **blocking(451, body={"by": "user"})),
    ]
    config = {
        "company_rules": {"acme": [{"rules": "r_company"}]},
        "user_rules": {"u1": [{"rules": "r_user"}], "u2": [{"rules": "r_user"}, {"rules": "r_user_block"}]},
    }
    cfg = AppConfig.from_json(config, rules)

    decision = cfg.govern(facts(company_id="acme", user_id="u1"))
    assert decision is not None
    assert (decision.blocked_by, decision.status) == ("r_company", 429)
    assert json.loads(decision.body or b"") == {"by": "co"}
    assert dict(decision.headers) == {
        "a": "regex",
        "b": "company",
        "c": "user",
        "content-type": "application/json",
    }

    decision = cfg.govern(facts(company_id="acme", user_id="u2"))
    assert decision is not None
    assert (decision.blocked_by, decision.status) == ("r_user_block", 451)
    assert json.loads(decision.body or b"") == {"by": "user"}

    decision = cfg.govern(facts(company_id="other", user_id="nobody"))
    assert decision is not None
    assert (decision.blocked_by, decision.status) == ("r_regex", 403)


def test_cohort_entries_continue_past_unknown_and_non_matching(caplog: pytest.LogCaptureFixture) -> None:
    rules = [
        rule("r_post_only", "user", conditions=[cond("request.verb", "POST")], **blocking(405)),
        rule("r_hit", "user", response={"headers": {"X-Hit": "{{v}}"}}),
        rule("r_company", "company", response={"headers": {"X-Co": "1"}}),
    ]
    entries = [
        {"rules": "missing_rule"},  # moesifasgi answers 500 here
        {"rules": "r_post_only"},  # moesifasgi stops at this non-matching entry
        {"rules": "r_company"},  # wrong kind of rule for a user cohort
        {"nope": 1},
        "junk",
        {"rules": "r_hit", "values": {"v": "yes"}},
    ]
    cfg = AppConfig.from_json({"user_rules": {"u1": entries}}, rules)
    assert cfg.govern(facts(user_id="u1")) == GovernanceDecision(None, None, (("x-hit", "yes"),), None)
    assert warnings(caplog, "unknown rule 'missing_rule'")
    assert warnings(caplog, "a company rule 'r_company'")


# --- malformed input ------------------------------------------------------------------------------

MALFORMED_RULES: list[Any] = [
    "junk",
    None,
    {"type": "regex", "block": True},  # no _id
    {"_id": "", "type": "regex"},
    {"_id": "bad_regex", "type": "regex", "regex_config": [{"conditions": [cond("request.verb", "(")]}]},
    {"_id": "bad_type", "type": "weird"},
    {"_id": "bad_applied_to", "type": "user", "applied_to": "sometimes"},
    {"_id": "bad_status", "type": "regex", "block": True, "response": {"status": "teapot"}},
    {"_id": "no_status", "type": "regex", "block": True, "response": {"body": {"x": 1}}},
    {"_id": "bad_regex_config", "type": "regex", "regex_config": {"conditions": []}},
    {"_id": "bad_response", "type": "regex", "response": "nope"},
    rule("good", conditions=[cond("request.verb", "GET")], **blocking("418", body="short and stout")),
    {"_id": "good", "type": "regex"},  # a duplicate id must not replace the first
]


def test_malformed_rules_are_skipped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(3):  # the fetcher recompiles every minute: each problem is logged once
        cfg = AppConfig.from_json({"user_rules": {"u": [{"rules": "bad_type"}]}}, MALFORMED_RULES)
        decision = cfg.govern(facts(verb="GET", user_id="u"))
        assert decision is not None
        assert (decision.blocked_by, decision.status, decision.body) == ("good", 418, b'"short and stout"')
        assert cfg.govern(facts(verb="POST")) is None

    for needle in [
        "without a string _id skipped: {'type'",
        "without a string _id skipped: {'_id': ''",
        "'bad_regex': invalid regex '('",
        "'bad_type' skipped: unknown type",
        "'bad_applied_to' skipped",
        "'bad_status' skipped: blocking rule has invalid status",
        "'no_status' skipped: blocking rule has invalid status None",
        "'bad_regex_config' skipped",
        "'bad_response' skipped",
        "'good' appears twice",
        "unknown rule 'bad_type'",
    ]:
        assert len(warnings(caplog, needle)) == 1, needle
    assert len(warnings(caplog, "not an object; skipped")) == 2  # "junk" and None


@pytest.mark.parametrize("config", [None, [], "config", 5, [{"sample_rate": 0}]])
@pytest.mark.parametrize("rules", [None, "rules", {"rules": []}, [None, 3]])
def test_totally_malformed_input_gives_default_behaviour(config: Any, rules: Any) -> None:
    cfg = AppConfig.from_json(config, rules)
    assert cfg.sample_rate(facts(user_id="u", company_id="c"), 500) == 100
    assert cfg.govern(facts()) is None
    assert not cfg.has_rules


def test_malformed_config_sections_are_ignored() -> None:
    config = {
        "sample_rate": 60,
        "regex_config": "nope",
        "user_sample_rate": ["u"],
        "company_sample_rate": "c",
        "user_rules": ["u"],
        "company_rules": {"acme": "r", "beta": [{"rules": "r_co", "values": "not a dict"}]},
    }
    cfg = AppConfig.from_json(config, [rule("r_co", "company", response={"headers": {"X-V": "{{v}}"}})])
    assert cfg.sample_rate(facts(user_id="u", company_id="c"), 200) == 60
    assert cfg.govern(facts(company_id="acme")) is None
    decision = cfg.govern(facts(company_id="beta"))
    assert decision is not None
    assert decision.headers == (("x-v", "UNKNOWN"),)


def test_default_and_tags() -> None:
    cfg = AppConfig.default()
    assert not cfg.has_rules
    assert cfg.govern(facts()) is None
    assert (cfg.etag, cfg.rules_tag) == (None, None)
    cfg = AppConfig.from_json({"sample_rate": 50}, [], etag="e1", rules_tag="t1")
    assert (cfg.etag, cfg.rules_tag) == ("e1", "t1")
    assert not cfg.has_rules


def test_problem_log_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    rules = [{"_id": f"r{i}", "type": "weird"} for i in range(appconfig._MAX_LOGGED_PROBLEMS + 50)]
    AppConfig.from_json({}, rules)
    assert len(appconfig._logged_problems) == appconfig._MAX_LOGGED_PROBLEMS
    assert len(warnings(caplog, "unknown type")) == appconfig._MAX_LOGGED_PROBLEMS
    assert warnings(caplog, "further distinct app config problems are not logged")

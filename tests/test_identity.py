from __future__ import annotations

import base64
import json
import random
import string

import pytest

from moesif_otel.identity import CLIENT_IP_HEADERS, client_ip, user_id_from_authorization


def segment(obj: object, *, urlsafe: bool = True, padded: bool = False) -> str:
    raw = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    text = (base64.urlsafe_b64encode if urlsafe else base64.standard_b64encode)(raw).decode()
    return text if padded else text.rstrip("=")


def jwt(claims: object, **kwargs: bool) -> str:
    return f"{segment({'alg': 'HS256', 'typ': 'JWT'}, **kwargs)}.{segment(claims, **kwargs)}.c2lnbmF0dXJl"


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


# Claims whose base64 needs '-'/'_' (url-safe) or '+'/'/' (standard) and padding.
TRICKY = {"sub": "user>>>???~~", "name": "\u00e9\u00e9"}
assert "-" in segment(TRICKY) or "_" in segment(TRICKY)
assert len(base64.urlsafe_b64encode(json.dumps(TRICKY).encode()).rstrip(b"=")) % 4 != 0

USER_CASES = [
    ("bearer jwt", f"Bearer {jwt({'sub': 'alice'})}", "alice"),
    ("scheme lower case", f"bearer {jwt({'sub': 'alice'})}", "alice"),
    ("scheme upper case, extra spaces", f"  BEARER    {jwt({'sub': 'alice'})}  ", "alice"),
    ("url-safe unpadded", f"Bearer {jwt(TRICKY)}", TRICKY["sub"]),
    ("url-safe padded", f"Bearer {jwt(TRICKY, padded=True)}", TRICKY["sub"]),
    ("standard unpadded", f"Bearer {jwt(TRICKY, urlsafe=False)}", TRICKY["sub"]),
    ("standard padded", f"Bearer {jwt(TRICKY, urlsafe=False, padded=True)}", TRICKY["sub"]),
    ("numeric claim", f"Bearer {jwt({'sub': 12345})}", "12345"),
    ("float claim", f"Bearer {jwt({'sub': 1.5})}", "1.5"),
    ("claim name case-insensitive", f"Bearer {jwt({'SUB': 'bob'})}", "bob"),
    ("unsigned jwt (empty signature)", f"Bearer {segment({'alg': 'none'})}.{segment({'sub': 'u'})}.", "u"),
    (
        "first comma-separated value",
        f"Bearer {jwt({'sub': 'first'})}, Bearer {jwt({'sub': 'second'})}",
        "first",
    ),
    ("bare jwt", jwt({"sub": "carol"}), "carol"),
    ("bare base64 json", segment({"sub": "dave"}, urlsafe=False, padded=True), "dave"),
    ("other scheme with jwt", f"Token {jwt({'sub': 'erin'})}", "erin"),
    ("basic", basic("frank:s3cret"), "frank"),
    ("basic lower case scheme", "basic " + base64.b64encode(b"gina:pw").decode(), "gina"),
    ("basic password with colons", basic("hank:a:b:c"), "hank"),
    ("basic empty password", basic("ivan:"), "ivan"),
    ("basic utf-8 user", basic("j\u00fcrgen:pw"), "j\u00fcrgen"),
    (
        "basic latin-1 user",
        "Basic " + base64.b64encode("k\u00e4the:pw".encode("latin-1")).decode(),
        "k\u00e4the",
    ),
    ("basic unpadded", "Basic " + base64.b64encode(b"lu:pw").decode().rstrip("="), "lu"),
    # Malformed: always None.
    ("missing claim", f"Bearer {jwt({'name': 'x'})}", None),
    ("null claim", f"Bearer {jwt({'sub': None})}", None),
    ("empty claim", f"Bearer {jwt({'sub': ''})}", None),
    ("blank claim", f"Bearer {jwt({'sub': '   '})}", None),
    ("object claim", f"Bearer {jwt({'sub': {'id': 1}})}", None),
    ("list claim", f"Bearer {jwt({'sub': [1]})}", None),
    ("boolean claim", f"Bearer {jwt({'sub': True})}", None),
    ("payload is a list", f"Bearer {jwt(['sub'])}", None),
    ("payload not json", f"Bearer aGVhZA.{segment(b'not json')}.sig", None),
    ("payload not base64", "Bearer aGVhZA.!!!***.sig", None),
    ("payload impossible length", "Bearer aGVhZA.abcde.sig", None),
    ("payload invalid utf-8", "Bearer x." + segment(b"\xff\xfe{") + ".y", None),
    ("opaque bearer token", "Bearer 4f9a0c1e7d2b", None),
    ("bearer without token", "Bearer", None),
    ("bearer with empty payload", "Bearer a..b", None),
    ("basic without colon", basic("nocolon"), None),
    ("basic empty user", basic(":pw"), None),
    ("basic not base64", "Basic %%%", None),
    ("basic without credentials", "Basic", None),
    ("empty", "", None),
    ("whitespace", "   ", None),
    ("only commas", ",,,", None),
    ("digest", 'Digest username="x", realm="r"', None),
    ("plain api key", "sk_live_abcdef", None),
]


@pytest.mark.parametrize(("value", "expected"), [c[1:] for c in USER_CASES], ids=[c[0] for c in USER_CASES])
def test_user_id_from_authorization(value: str, expected: str | None) -> None:
    assert user_id_from_authorization({"authorization": value}) == expected


def test_custom_claim_field_any_case() -> None:
    headers = {"authorization": f"Bearer {jwt({'sub': 'ignored', 'user_id': 'u-42'})}"}
    assert user_id_from_authorization(headers, field="user_id") == "u-42"
    assert user_id_from_authorization(headers, field=" USER_ID ") == "u-42"
    assert user_id_from_authorization(headers, field="missing") is None


def test_exact_claim_name_wins_over_case_insensitive_match() -> None:
    headers = {"authorization": f"Bearer {jwt({'Sub': 'loose', 'sub': 'exact'})}"}
    assert user_id_from_authorization(headers) == "exact"


def test_header_names_in_order_any_case_and_whitespace() -> None:
    headers = {"x-api-key": basic("from-key:pw"), "authorization": f"Bearer {jwt({'sub': 'from-auth'})}"}
    assert user_id_from_authorization(headers, [" X-API-Key ", "Authorization"]) == "from-key"
    assert user_id_from_authorization(headers, ["authorization", "x-api-key"]) == "from-auth"
    # The AUTHORIZATION_HEADER_NAME setting is one comma-separated string.
    assert user_id_from_authorization(headers, "X-Api-Key, Authorization") == "from-key"
    assert user_id_from_authorization(headers, ["x-other"]) is None
    assert user_id_from_authorization(headers, []) is None


def test_a_present_header_that_yields_nothing_falls_through_to_the_next() -> None:
    headers = {"x-api-key": "opaque-key", "authorization": f"Bearer {jwt({'sub': 'from-auth'})}"}
    assert user_id_from_authorization(headers, "x-api-key,authorization") == "from-auth"


def test_header_lookup_tolerates_non_lower_case_keys() -> None:
    assert user_id_from_authorization({"Authorization": basic("mia:pw")}) == "mia"


def test_default_header_is_authorization() -> None:
    assert user_id_from_authorization({"x-api-key": basic("a:b")}) is None
    assert user_id_from_authorization({}) is None


def test_user_id_never_raises_on_hostile_input() -> None:
    class Exploding(dict):
        def get(self, *args: object) -> object:
            raise RuntimeError("boom")

    assert user_id_from_authorization(Exploding()) is None
    assert user_id_from_authorization({"authorization": None}) is None  # type: ignore[dict-item]
    assert user_id_from_authorization({"authorization": 42}) is None  # type: ignore[dict-item]
    assert user_id_from_authorization({"authorization": b"Basic bm86cA=="}) == "no"  # type: ignore[dict-item]
    assert user_id_from_authorization({"authorization": basic("a:b")}, None, None) is None  # type: ignore[arg-type]
    deep = "[" * 100_000 + "]" * 100_000
    assert user_id_from_authorization({"authorization": f"Bearer x.{segment(deep.encode())}.y"}) is None


def test_user_id_fuzz_never_raises() -> None:
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "+/=-_.,: \t\u00e9\x00"
    valid = f"Bearer {jwt({'sub': 'x'})}"
    for _ in range(3000):
        if rng.random() < 0.5:
            value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
        else:
            chars = list(valid)
            for _ in range(rng.randrange(1, 4)):
                chars[rng.randrange(len(chars))] = rng.choice(alphabet)
            value = "".join(chars)
        result = user_id_from_authorization({"authorization": value})
        assert result is None or (isinstance(result, str) and result.strip())


# --- client IP -------------------------------------------------------------------------------------

IP_CASES = [
    ("x-forwarded-for left-most", {"x-forwarded-for": "203.0.113.7, 10.0.0.1, 10.0.0.2"}, "203.0.113.7"),
    ("x-forwarded-for skips unknown", {"x-forwarded-for": "unknown, 198.51.100.4"}, "198.51.100.4"),
    (
        "x-forwarded-for skips garbage",
        {"x-forwarded-for": "not-an-ip,, 999.1.1.1, 198.51.100.5"},
        "198.51.100.5",
    ),
    ("ipv4 with port", {"x-forwarded-for": "198.51.100.6:51234"}, "198.51.100.6"),
    ("bare ipv6", {"x-forwarded-for": "2001:db8::1, 10.0.0.1"}, "2001:db8::1"),
    ("bracketed ipv6 with port", {"x-forwarded-for": "[2001:db8::2]:443"}, "2001:db8::2"),
    ("bracketed ipv6 without port", {"x-real-ip": "[2001:db8::3]"}, "2001:db8::3"),
    ("ipv6 normalised", {"x-real-ip": "2001:DB8:0:0:0:0:0:4"}, "2001:db8::4"),
    ("ipv6 with zone", {"x-real-ip": "fe80::1%eth0"}, "fe80::1%eth0"),
    ("quoted", {"x-real-ip": '"198.51.100.8"'}, "198.51.100.8"),
    ("x-client-ip first", {"x-client-ip": "192.0.2.1", "x-forwarded-for": "192.0.2.2"}, "192.0.2.1"),
    (
        "invalid x-client-ip falls through",
        {"x-client-ip": "garbage", "x-forwarded-for": "192.0.2.2"},
        "192.0.2.2",
    ),
    (
        "cf before true-client-ip",
        {"true-client-ip": "192.0.2.4", "cf-connecting-ip": "192.0.2.3"},
        "192.0.2.3",
    ),
    ("x-cluster-client-ip", {"x-cluster-client-ip": "192.0.2.5"}, "192.0.2.5"),
    ("x-forwarded", {"x-forwarded": "192.0.2.6"}, "192.0.2.6"),
    ("x-forwarded with for=", {"x-forwarded": "for=192.0.2.10"}, "192.0.2.10"),
    ("forwarded-for", {"forwarded-for": "192.0.2.7"}, "192.0.2.7"),
    ("forwarded for=", {"forwarded": "for=192.0.2.60;proto=http;by=203.0.113.43"}, "192.0.2.60"),
    ("forwarded FOR= any case, spaces", {"forwarded": "proto=https; For = 192.0.2.61"}, "192.0.2.61"),
    ("forwarded quoted ipv6 with port", {"forwarded": 'for="[2001:db8:cafe::17]:4711"'}, "2001:db8:cafe::17"),
    (
        "forwarded skips hidden and unknown",
        {"forwarded": "for=_hidden, for=unknown, for=198.51.100.17"},
        "198.51.100.17",
    ),
    ("forwarded bare ip (non-standard)", {"forwarded": "198.51.100.18"}, "198.51.100.18"),
    ("forwarded only by=", {"forwarded": "by=198.51.100.19"}, None),
    ("port out of range", {"x-real-ip": "198.51.100.9:70000"}, None),
    ("port not numeric", {"x-real-ip": "198.51.100.9:http"}, None),
    ("bracket with garbage after", {"x-real-ip": "[2001:db8::5]x"}, None),
    ("unclosed bracket", {"x-real-ip": "[2001:db8::5"}, None),
    ("leading-zero ipv4 rejected", {"x-real-ip": "010.1.1.1"}, None),
    ("non-ascii digits", {"x-real-ip": "\u0661.1.1.1"}, None),
    ("empty", {"x-forwarded-for": ""}, None),
    ("no headers", {}, None),
]


@pytest.mark.parametrize(("headers", "expected"), [c[1:] for c in IP_CASES], ids=[c[0] for c in IP_CASES])
def test_client_ip_from_headers(headers: dict[str, str], expected: str | None) -> None:
    assert client_ip(headers, None) == expected


def test_header_order_is_the_documented_one() -> None:
    headers = {name: f"192.0.2.{i + 1}" for i, name in enumerate(CLIENT_IP_HEADERS)}
    for i, name in enumerate(CLIENT_IP_HEADERS):
        assert client_ip(headers, "127.0.0.1") == f"192.0.2.{i + 1}"
        del headers[name]
    assert client_ip(headers, "127.0.0.1") == "127.0.0.1"


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("testclient", None),
        ("/run/app.sock", None),
        ("", None),
        (None, None),
        (1234, None),
    ],
)
def test_peer_fallback_only_when_valid(peer: object, expected: str | None) -> None:
    assert client_ip({"x-forwarded-for": "unknown"}, peer) == expected  # type: ignore[arg-type]


def test_headers_win_over_peer() -> None:
    assert client_ip({"x-forwarded-for": "203.0.113.9"}, "10.0.0.1") == "203.0.113.9"


def test_client_ip_tolerates_non_lower_case_keys_and_hostile_mappings() -> None:
    assert client_ip({"X-Forwarded-For": "203.0.113.10"}, None) == "203.0.113.10"

    class Exploding(dict):
        def get(self, *args: object) -> object:
            raise RuntimeError("boom")

    assert client_ip(Exploding(), "10.0.0.3") == "10.0.0.3"
    assert client_ip({"x-real-ip": 7}, None) is None  # type: ignore[dict-item]
    assert client_ip({"x-real-ip": b"203.0.113.11"}, None) == "203.0.113.11"  # type: ignore[dict-item]


def test_client_ip_fuzz_never_raises() -> None:
    rng = random.Random(11)
    alphabet = string.hexdigits + ":.[],;=\"' fortunknown\u00e9\x00"
    for _ in range(3000):
        headers = {
            rng.choice(CLIENT_IP_HEADERS): "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
            for _ in range(rng.randrange(0, 4))
        }
        result = client_ip(headers, rng.choice([None, "x", "127.0.0.1"]))
        assert result is None or isinstance(result, str)

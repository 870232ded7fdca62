from __future__ import annotations

import base64
import gzip
import json
import random
import time
import tracemalloc
import zlib
from typing import Any

import pytest

from moesif_otel.body import (
    MULTIPART_MAX_PARTS,
    MULTIPART_VALUE_LIMIT,
    EncodedBody,
    base64_text,
    encode_body,
    remove_keys,
)

FORM = "application/x-www-form-urlencoded"
BOUNDARY = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
FILE_BYTES = b"%PDF-1.7 SECRET-FILE-CONTENT \x00\x01\x02 the end"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


def multipart(*parts: tuple[str, str | None, str | None, bytes], boundary: str = BOUNDARY) -> bytes:
    """parts: (name, filename, content_type, content)."""
    out = b""
    for name, filename, ctype, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


# --- JSON / text / binary --------------------------------------------------------------------------

TEXT_CASES = [
    # (id, raw, content_type, expected EncodedBody)
    (
        "json object",
        b'{"a": 1, "b": [true, null]}',
        "application/json",
        ({"a": 1, "b": [True, None]}, "json"),
    ),
    ("json array, no ctype", b"  [1, 2]", None, ([1, 2], "json")),
    ("json sniffed despite text/plain", b'\n{"x": "y"}', "text/plain", ({"x": "y"}, "json")),
    ("json with charset", b'{"a": "\xc3\xa9"}', "application/json; charset=utf-8", ({"a": "é"}, "json")),
    ("json with BOM", b'\xef\xbb\xbf{"a": 1}', "application/json", ({"a": 1}, "json")),
    ("json with BOM, no ctype", b'\xef\xbb\xbf[{"a": 1}]', None, ([{"a": 1}], "json")),
    ("problem+json", b'{"title": "x"}', "application/problem+json", ({"title": "x"}, "json")),
    ("vendor +json, upper case", b'{"k": 2}', "Application/VND.API+JSON", ({"k": 2}, "json")),
    ("json scalar with json ctype", b"42", "application/json", (42, "json")),
    ("json string with json ctype", b'"hi"', "application/json", ("hi", "json")),
    ("scalar without json ctype is not json", b"42", "text/plain", (b64(b"42"), "base64")),
    ("brace text that is not json", b"{not json", "text/plain", (b64(b"{not json"), "base64")),
    ("text/plain", b"hello world", "text/plain", (b64(b"hello world"), "base64")),
    ("html", b"<html><body>hi</body></html>", "text/html", (b64(b"<html><body>hi</body></html>"), "base64")),
    ("binary", bytes(range(256)), "application/octet-stream", (b64(bytes(range(256))), "base64")),
    ("invalid utf-8 in braces", b'{"a": "\xff\xfe"}', None, (b64(b'{"a": "\xff\xfe"}'), "base64")),
    ("invalid utf-8 text", b"\xff\xfe\xfd", "text/plain", (b64(b"\xff\xfe\xfd"), "base64")),
]


@pytest.mark.parametrize(
    ("raw", "ctype", "expected"), [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES]
)
def test_text_bodies(raw: bytes, ctype: str | None, expected: tuple) -> None:
    result = encode_body(raw, content_type=ctype)
    assert (result.body, result.transfer_encoding) == expected
    assert result.note is None


@pytest.mark.parametrize(
    "raw", [b"not json", b"{'single': 'quotes'}", b"", b"   ", b"NaN", b'{"a": Infinity}', b"\xff{}"]
)
def test_json_content_type_with_invalid_json_is_base64_with_note(raw: bytes) -> None:
    result = encode_body(raw, content_type="application/json")
    if not raw:
        assert result == EncodedBody(None, None)
        return
    assert result == EncodedBody(b64(raw), "base64", "invalid json")


def test_nan_is_never_sent_as_json() -> None:
    # NaN is not JSON: it would make the whole batch invalid JSON.
    assert encode_body(b"[1, NaN]").transfer_encoding == "base64"


def test_deeply_nested_json_does_not_raise() -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    result = encode_body(raw, content_type="application/json")
    assert result.transfer_encoding == "base64"
    assert result.note == "invalid json"


@pytest.mark.parametrize("raw", [None, b"", bytearray()])
def test_empty_body_is_no_body(raw: bytes | None) -> None:
    assert encode_body(raw, content_type="application/json") == EncodedBody(None, None)


def test_bytes_like_input_is_accepted() -> None:
    assert encode_body(memoryview(b'{"a": 1}')).body == {"a": 1}
    assert encode_body(bytearray(b"xyz")).body == b64(b"xyz")


def test_base64_text() -> None:
    assert base64_text(b"\x00\xffhi") == "AP9oaQ=="
    assert base64_text(b"") == ""


# --- truncation and size limits --------------------------------------------------------------------


def test_truncated_body_is_not_sent() -> None:
    raw = b'{"a": "' + b"x" * 100
    result = encode_body(raw, content_type="application/json", total_size=2_000_000)
    assert result.body is None
    assert result.transfer_encoding is None
    assert result.note == f"truncated: 2000000 bytes, capture limit {len(raw)}"


def test_truncated_binary_and_gzip_bodies_are_not_sent() -> None:
    assert encode_body(b"abc", total_size=10).body is None
    packed = gzip.compress(b'{"a": 1}' * 100)
    result = encode_body(packed[:20], content_encoding="gzip", total_size=len(packed))
    assert result.body is None and "truncated" in (result.note or "")


def test_total_size_equal_or_smaller_is_not_truncation() -> None:
    assert encode_body(b"[1]", total_size=3) == EncodedBody([1], "json")
    assert encode_body(b"[1]", total_size=1) == EncodedBody([1], "json")


def test_empty_capture_of_nonempty_body_says_truncated() -> None:
    assert encode_body(b"", total_size=500) == EncodedBody(
        None, None, "truncated: 500 bytes, capture limit 0"
    )


def test_body_over_max_size_is_not_sent() -> None:
    result = encode_body(b"[" + b"1," * 100 + b"1]", max_size=50)
    assert result.body is None
    assert result.note == "body too large: 203 bytes, limit 50"


# --- content encodings -----------------------------------------------------------------------------

JSON_DOC = {"user": "alice", "items": list(range(50))}
JSON_BYTES = json.dumps(JSON_DOC).encode()

ENCODED_CASES = [
    ("gzip", gzip.compress(JSON_BYTES), "gzip"),
    ("x-gzip", gzip.compress(JSON_BYTES), "x-gzip"),
    ("gzip upper case", gzip.compress(JSON_BYTES), " GZIP "),
    ("deflate zlib", zlib.compress(JSON_BYTES), "deflate"),
    ("deflate raw", raw_deflate(JSON_BYTES), "deflate"),
    ("deflate that is really gzip", gzip.compress(JSON_BYTES), "deflate"),
    ("gzip, deflate (deflate applied last)", zlib.compress(gzip.compress(JSON_BYTES)), "gzip, deflate"),
    ("deflate, gzip (gzip applied last)", gzip.compress(zlib.compress(JSON_BYTES)), "deflate,gzip"),
    ("identity ignored", gzip.compress(JSON_BYTES), "identity, gzip"),
    ("multi-member gzip", gzip.compress(JSON_BYTES[:10]) + gzip.compress(JSON_BYTES[10:]), "gzip"),
    ("gzip with trailing zero padding", gzip.compress(JSON_BYTES) + b"\x00" * 16, "gzip"),
]


@pytest.mark.parametrize(("raw", "coding"), [c[1:] for c in ENCODED_CASES], ids=[c[0] for c in ENCODED_CASES])
def test_compressed_json_is_decoded_to_json(raw: bytes, coding: str) -> None:
    assert encode_body(raw, content_type="application/json", content_encoding=coding) == EncodedBody(
        JSON_DOC, "json"
    )


def test_gzip_of_non_json_is_base64_of_the_decoded_bytes() -> None:
    result = encode_body(gzip.compress(b"plain text"), content_type="text/plain", content_encoding="gzip")
    assert result == EncodedBody(b64(b"plain text"), "base64")


def test_gzip_form_is_decoded_and_parsed() -> None:
    result = encode_body(gzip.compress(b"a=1&b=2"), content_type=FORM, content_encoding="gzip")
    assert result == EncodedBody({"a": "1", "b": "2"}, "json")


def test_invalid_gzip_is_sent_as_captured_with_note() -> None:
    raw = b"\x1f\x8b\x08\x00garbage-not-gzip"
    result = encode_body(raw, content_encoding="gzip")
    assert result == EncodedBody(b64(raw), "base64", "undecodable gzip")


def test_gzip_header_on_already_decoded_json_keeps_json() -> None:
    # HTTP clients such as requests decode the body but leave Content-Encoding in place.
    result = encode_body(JSON_BYTES, content_type="application/json", content_encoding="gzip")
    assert result == EncodedBody(JSON_DOC, "json", "undecodable gzip")


def test_gzip_stream_cut_short_without_truncation_is_undecodable() -> None:
    packed = gzip.compress(b"x" * 1000)
    result = encode_body(packed[:-12], content_encoding="gzip")
    assert result.note == "undecodable gzip"
    assert result.body == b64(packed[:-12])


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, br", "compress"])
def test_unknown_coding_is_base64_of_raw_with_note(coding: str) -> None:
    raw = b"\x8b\x05\x80compressed?"
    result = encode_body(raw, content_type="application/json", content_encoding=coding)
    assert result.body == b64(raw)
    assert result.transfer_encoding == "base64"
    assert result.note == f"content-encoding {coding.split(',')[-1].strip()} not decoded"


def test_decompressed_body_over_max_size_is_not_sent() -> None:
    result = encode_body(gzip.compress(b"[" + b"0," * 1000 + b"0]"), content_encoding="gzip", max_size=100)
    assert result == EncodedBody(None, None, "decoded body exceeds 100 bytes")


@pytest.fixture(scope="module")
def zip_bomb() -> bytes:
    """100 MB of zeros, gzipped, built in chunks so the test never holds 100 MB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    packed = b"".join(compressor.compress(chunk) for _ in range(100)) + compressor.flush()
    assert len(packed) < 200_000
    return packed


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_zip_bomb_is_bounded_and_fast(zip_bomb: bytes, coding: str) -> None:
    tracemalloc.start()
    try:
        started = time.perf_counter()
        result = encode_body(zip_bomb, content_type="application/json", content_encoding=coding)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result == EncodedBody(None, None, "decoded body exceeds 1048576 bytes")
    assert peak < 8 * 1_048_576  # a few copies of max_size, never the 100 MB
    assert elapsed < 1.0


def test_multi_member_gzip_bomb_is_bounded() -> None:
    member = gzip.compress(bytes(600_000))
    result = encode_body(member * 4, content_encoding="gzip")
    assert result.body is None and result.note == "decoded body exceeds 1048576 bytes"


# --- form-urlencoded -------------------------------------------------------------------------------

FORM_CASES = [
    ("simple", b"a=1&b=two", {"a": "1", "b": "two"}),
    ("repeated becomes list", b"tag=x&tag=y&tag=z&n=1", {"tag": ["x", "y", "z"], "n": "1"}),
    ("blank values kept", b"a=&b", {"a": "", "b": ""}),
    ("percent and plus", b"q=hello+world%21&e=%C3%A9", {"q": "hello world!", "e": "é"}),
    ("empty fields skipped", b"a=1&&b=2", {"a": "1", "b": "2"}),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in FORM_CASES], ids=[c[0] for c in FORM_CASES])
def test_form_urlencoded(raw: bytes, expected: dict) -> None:
    assert encode_body(raw, content_type=FORM + "; charset=UTF-8") == EncodedBody(expected, "json")


@pytest.mark.parametrize("raw", [b"a=%ff%fe", b"a=\xff\xfe"])
def test_invalid_form_is_base64(raw: bytes) -> None:
    assert encode_body(raw, content_type=FORM) == EncodedBody(b64(raw), "base64", "invalid form data")


def test_form_with_latin1_charset() -> None:
    result = encode_body(b"name=Jos%E9", content_type=FORM + "; charset=ISO-8859-1")
    assert result == EncodedBody({"name": "José"}, "json")


def test_form_with_unknown_charset_is_base64() -> None:
    assert encode_body(b"a=1", content_type=FORM + "; charset=nope").transfer_encoding == "base64"


def test_json_body_under_form_content_type_is_json() -> None:
    assert encode_body(b'{"a": 1}', content_type=FORM) == EncodedBody({"a": 1}, "json")


# --- multipart/form-data ---------------------------------------------------------------------------


def test_multipart_text_fields_and_file_name_never_file_bytes() -> None:
    raw = multipart(
        ("title", None, None, b"Quarterly report"),
        ("file", "report.pdf", "application/pdf", FILE_BYTES),
        ("comment", None, "text/plain; charset=utf-8", "caf\u00e9".encode()),
    )
    result = encode_body(raw, content_type=MULTIPART)
    assert result.body == {"title": "Quarterly report", "file": "report.pdf", "comment": "café"}
    assert result.transfer_encoding == "json"
    assert result.note == f"multipart: file contents omitted (report.pdf: {len(FILE_BYTES)} bytes)"
    assert b"SECRET" not in repr(result).encode()
    assert "SECRET" not in repr(result)


def test_multipart_quoted_boundary_repeated_fields_and_lf_only() -> None:
    raw = multipart(("a", None, None, b"1"), ("a", None, None, b"2"), ("a", None, None, b"3"), boundary="b;x")
    raw = raw.replace(b"\r\n", b"\n")
    result = encode_body(raw, content_type='multipart/form-data; boundary="b;x"; charset=utf-8')
    assert result == EncodedBody({"a": ["1", "2", "3"]}, "json")


def test_multipart_preamble_epilogue_empty_value_and_empty_filename() -> None:
    body = multipart(("empty", None, None, b""), ("upload", "", "application/octet-stream", b""))
    raw = b"This is a preamble.\r\n" + body + b"epilogue"
    result = encode_body(raw, content_type=MULTIPART)
    assert result.body == {"empty": "", "upload": ""}
    assert result.note == "multipart: file contents omitted (upload: 0 bytes)"


def test_multipart_binary_part_without_filename_is_treated_as_a_file() -> None:
    raw = multipart(
        ("blob", None, "application/octet-stream", FILE_BYTES), ("meta", None, "application/json", b"{}")
    )
    result = encode_body(raw, content_type=MULTIPART)
    assert result.body == {"blob": "", "meta": "{}"}
    assert "SECRET" not in repr(result)


def test_multipart_extended_filename_and_value_looking_like_boundary() -> None:
    tricky_value = f"line1\r\n--{BOUNDARY}X not a delimiter".encode()
    raw = (
        f"--{BOUNDARY}\r\n"
        "Content-Disposition: form-data; name=\"doc\"; filename*=UTF-8''%E2%82%AC%20rates.txt\r\n"
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    raw += FILE_BYTES + f"\r\n--{BOUNDARY}\r\n".encode()
    raw += b'Content-Disposition: form-data; name="v"\r\n\r\n' + tricky_value + f"\r\n--{BOUNDARY}--".encode()
    result = encode_body(raw, content_type=MULTIPART)
    assert result.body == {"doc": "\u20ac rates.txt", "v": tricky_value.decode()}


def test_multipart_long_value_is_bounded() -> None:
    value = "é" * MULTIPART_VALUE_LIMIT  # 2 bytes each: the cut falls mid-character
    result = encode_body(multipart(("long", None, None, value.encode())), content_type=MULTIPART)
    assert result.body["long"] == "é" * (MULTIPART_VALUE_LIMIT // 2)
    assert result.note == f"multipart: values cut to {MULTIPART_VALUE_LIMIT} bytes (long)"


def test_multipart_part_count_is_bounded() -> None:
    parts = [(f"f{i}", None, None, b"v") for i in range(MULTIPART_MAX_PARTS + 5)]
    result = encode_body(multipart(*parts), content_type=MULTIPART)
    assert len(result.body) == MULTIPART_MAX_PARTS
    assert f"parts after the first {MULTIPART_MAX_PARTS} omitted" in result.note


def test_multipart_many_files_keep_the_note_short() -> None:
    parts = [(f"f{i}", f"file{i}.bin", "application/octet-stream", FILE_BYTES) for i in range(30)]
    result = encode_body(multipart(*parts), content_type=MULTIPART)
    assert len(result.body) == 30
    assert "and 20 more" in result.note
    assert "SECRET" not in repr(result)


def test_truncated_multipart_reports_complete_fields() -> None:
    raw = multipart(
        ("title", None, None, b"hello"),
        ("file", "big.bin", "application/octet-stream", FILE_BYTES * 50),
        ("after", None, None, b"lost"),
    )
    cut = raw[: raw.index(FILE_BYTES) + 10]
    result = encode_body(cut, content_type=MULTIPART, total_size=len(raw))
    assert result.body == {"title": "hello", "file": "big.bin"}
    assert result.transfer_encoding == "json"
    assert result.note.startswith(f"truncated: {len(raw)} bytes, capture limit {len(cut)}")
    assert "big.bin: cut by the capture limit" in result.note
    assert "SECRET" not in repr(result)


def test_truncated_multipart_omits_a_cut_text_value() -> None:
    raw = multipart(("a", None, None, b"complete"), ("b", None, None, b"partial value"))
    cut = raw[: raw.index(b"partial") + 4]
    assert encode_body(cut, content_type=MULTIPART, total_size=len(raw)).body == {"a": "complete"}
    # Cut right after a boundary that might continue: the value before it is not trusted either.
    cut = raw[: raw.index(b"complete") + len(b"complete\r\n--" + BOUNDARY.encode())]
    result = encode_body(cut, content_type=MULTIPART, total_size=len(raw))
    assert result.body is None and result.note.startswith("truncated:")


def test_truncated_multipart_with_nothing_complete_is_none() -> None:
    raw = multipart(("a", None, None, b"x" * 100))
    result = encode_body(raw[:30], content_type=MULTIPART, total_size=len(raw))
    assert result == EncodedBody(None, None, f"truncated: {len(raw)} bytes, capture limit 30")


def test_gzipped_truncated_multipart_reports_complete_fields() -> None:
    raw = multipart(
        ("title", None, None, b"hello"), ("blob", "x.bin", None, bytes(random.Random(1).randbytes(5000)))
    )
    packed = gzip.compress(raw)
    result = encode_body(
        packed[: len(packed) // 2], content_type=MULTIPART, content_encoding="gzip", total_size=len(packed)
    )
    assert result.body == {"title": "hello", "blob": "x.bin"}


MALFORMED_MULTIPART = [
    ("no boundary param", b"--x\r\n\r\n--x--", "multipart/form-data"),
    ("boundary absent from body", b"just some text", MULTIPART),
    (
        "no closing boundary",
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=a\r\n\r\nv".encode(),
        MULTIPART,
    ),
    (
        "part without header end",
        f"--{BOUNDARY}\r\nContent-Disposition: x\r\n--{BOUNDARY}--".encode(),
        MULTIPART,
    ),
    ("non-ascii boundary", b"--\xc3\xa9\r\n", "multipart/form-data; boundary=\u00e9"),
    ("delimiter line never ends", f"--{BOUNDARY}".encode(), MULTIPART),
]


@pytest.mark.parametrize(
    ("raw", "ctype"), [c[1:] for c in MALFORMED_MULTIPART], ids=[c[0] for c in MALFORMED_MULTIPART]
)
def test_malformed_multipart(raw: bytes, ctype: str) -> None:
    assert encode_body(raw, content_type=ctype) == EncodedBody(None, None, "malformed multipart")


def test_multipart_part_without_name_is_skipped() -> None:
    raw = (
        f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nanonymous\r\n"
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="ok"\r\n\r\nyes\r\n--{BOUNDARY}--\r\n'
    ).encode()
    assert encode_body(raw, content_type=MULTIPART) == EncodedBody({"ok": "yes"}, "json")


# --- fuzz ------------------------------------------------------------------------------------------

FUZZ_TYPES = [
    None,
    "",
    "application/json",
    "application/problem+json",
    FORM,
    MULTIPART,
    "multipart/form-data; boundary=",
    'multipart/form-data; boundary="unterminated',
    "text/plain; charset=utf-16",
    "application/octet-stream",
    ";;;=;",
    "\x00\xff",
]
FUZZ_CODINGS = [None, "", "gzip", "deflate", "br", "gzip, deflate", "x-gzip,,", "identity", ","]


def test_fuzz_never_raises() -> None:
    rng = random.Random(20261123)
    seeds = [
        multipart(("a", None, None, b"1"), ("f", "f.bin", None, b"\x00" * 20)),
        JSON_BYTES,
        b"a=1&b=%zz",
        gzip.compress(JSON_BYTES),
        zlib.compress(b"text"),
    ]
    for _ in range(3000):
        choice = rng.random()
        if choice < 0.4:
            raw = rng.randbytes(rng.randrange(0, 300))
        else:  # mutate a valid body so the parsers get past their first checks
            raw = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(0, 6)):
                if raw:
                    raw[rng.randrange(len(raw))] = rng.randrange(256)
            raw = bytes(raw[: rng.randrange(0, len(raw) + 1)])
        codings = rng.choice(FUZZ_CODINGS)
        if codings and "gzip" in codings and rng.random() < 0.5:
            raw = gzip.compress(raw)
        total = rng.choice([None, len(raw), len(raw) + rng.randrange(1, 100), 0])
        result = encode_body(
            raw,
            content_type=rng.choice(FUZZ_TYPES),
            content_encoding=codings,
            total_size=total,
            max_size=rng.choice([1_048_576, 64, 0]),
        )
        assert isinstance(result, EncodedBody)
        assert result.transfer_encoding in (None, "json", "base64")
        assert (result.body is None) == (result.transfer_encoding is None)
        json.dumps(result.body, allow_nan=False)  # always serialisable into the event


def test_weird_argument_types_do_not_raise() -> None:
    assert encode_body("text str", content_type=123, content_encoding=object()).transfer_encoding == "base64"  # type: ignore[arg-type]
    assert encode_body(b"[1]", total_size="big", max_size=-1) == EncodedBody([1], "json")  # type: ignore[arg-type]
    assert encode_body(12345) == EncodedBody(None, None, "body not encoded: TypeError")  # type: ignore[arg-type]


def test_remove_keys_at_any_depth_without_recursion() -> None:
    deep: Any = {"keep": 0, "secret": 1}
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = {"secret": "x", "child": [deep, {"secret": "y", "other": 2}]}
    remove_keys(deep, frozenset({"secret"}))
    node, depth = deep, 0
    while "child" in node:
        assert "secret" not in node and node["child"][1] == {"other": 2}
        node, depth = node["child"][0], depth + 1
    assert depth == 5000 and node == {"keep": 0}


def test_raw_json_keeps_a_checked_json_body_as_its_text() -> None:
    from moesif_otel.jsoncodec import RawJson

    result = encode_body(bytearray(b'{"a": [1, 2]}'), content_type="application/json", raw_json=True)
    assert result.transfer_encoding == "json" and result.note is None
    assert isinstance(result.body, RawJson) and result.body.text == b'{"a": [1, 2]}'
    # not JSON: base64, as without raw_json; a BOM (the standard library reads it): parsed
    assert encode_body(b"{nope", content_type="application/json", raw_json=True) == EncodedBody(
        b64(b"{nope"), "base64", "invalid json"
    )
    assert encode_body(b"\xef\xbb\xbf[1]", content_type="application/json", raw_json=True) == EncodedBody(
        [1], "json"
    )

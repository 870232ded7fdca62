"""Turn a captured HTTP body into the ``body`` + ``transfer_encoding`` pair of a Moesif event.

This runs on the exporter's worker thread, never on the request path, so it may parse. It must
still be bounded (a zip bomb or a huge multipart stays cheap) and must never raise: a body that is
not what its headers claim is ordinary traffic, not an error. Where a body cannot be sent whole or
as-is, ``EncodedBody.note`` says why, so the event can carry that in its metadata.

Differences from moesifasgi, on purpose: gzip/deflate bodies that hold JSON are sent as JSON (not
base64), form-urlencoded bodies are sent as a JSON object, bodies cut by the capture limit are not
sent as if they were whole, and decompression is bounded.
"""

from __future__ import annotations

import base64
import codecs
import re
import zlib
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote

from moesif_otel import jsoncodec

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MULTIPART_MAX_PARTS",
    "MULTIPART_VALUE_LIMIT",
    "EncodedBody",
    "base64_text",
    "encode_body",
    "remove_keys",
]

DEFAULT_MAX_SIZE = 1_048_576
# A multipart text field is a form value, not a document: keep each one small.
MULTIPART_VALUE_LIMIT = 4096
MULTIPART_MAX_PARTS = 1000
# Names of omitted files listed in a note; more are only counted, so a note stays short.
_MAX_FILES_IN_NOTE = 10

_GZIP_MAGIC = b"\x1f\x8b"
_WBITS_GZIP = 16 + zlib.MAX_WBITS
_WBITS_ZLIB = zlib.MAX_WBITS
_WBITS_RAW = -zlib.MAX_WBITS


class EncodedBody(NamedTuple):
    """A body ready for the event: a JSON value, a base64 string, or None (no body sent).

    A tuple: two are built per event on the exporter's thread, and a frozen dataclass cost
    three times as much to build."""

    body: Any
    transfer_encoding: str | None  # "json" | "base64" | None (when body is None)
    note: str | None = None  # why the body is absent or partial


def base64_text(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_body(
    raw: bytes | None,
    *,
    content_type: str | None = None,
    content_encoding: str | None = None,
    total_size: int | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    raw_json: bool = False,
) -> EncodedBody:
    """Encode a captured body by its headers; never raises.

    ``raw`` is what was captured (at most the capture limit), ``total_size`` the real size of the
    body on the wire (None: ``len(raw)``). ``max_size`` bounds the body after content decoding.
    ``raw_json``: a plain JSON body is kept as its checked text (``jsoncodec.RawJson``), for a
    caller that sends it on without reading it.
    """
    if (
        not content_encoding
        and isinstance(raw, (bytes, bytearray))
        and content_type in _PLAIN_JSON_TYPES
        and (total_size is None or total_size <= len(raw))
        and 0 < len(raw) <= max_size
    ):  # the common case, without the general path's header parsing
        if raw_json:
            text = jsoncodec.raw_json(bytes(raw))
            if text is not None:
                return EncodedBody(text, "json")
        value = _parse_json(raw)
        if value is not _INVALID:
            return EncodedBody(value, "json")
    try:
        return _encode(raw, content_type, content_encoding, total_size, max_size)
    except Exception as exc:  # the rules below handle bad input; this is the last line of defence
        return EncodedBody(None, None, f"body not encoded: {type(exc).__name__}")


def remove_keys(value: Any, keys: frozenset[str]) -> None:
    """Remove, in place and at any depth, every object member named in ``keys``.

    What moesifpythonrequest's ``REQUEST_BODY_MASKS``/``RESPONSE_BODY_MASKS`` do to outgoing JSON
    bodies. Iterative: a parsed body may nest deeper than Python's recursion limit.
    """
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for key in keys.intersection(node):
                del node[key]
            pending.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            pending.extend(v for v in node if isinstance(v, (dict, list)))


# --- top level -------------------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


class _Undecodable(Exception):
    pass


class _Unsupported(Exception):
    pass


def _encode(
    raw: Any, content_type: Any, content_encoding: Any, total_size: Any, max_size: Any
) -> EncodedBody:
    if raw is None:
        data = b""
    elif isinstance(raw, str):
        data = raw.encode("utf-8", "replace")
    else:
        data = bytes(memoryview(raw))
    if not isinstance(max_size, int) or max_size < 0:
        max_size = DEFAULT_MAX_SIZE
    captured = len(data)
    total = total_size if isinstance(total_size, int) and total_size > captured else captured
    truncated = total > captured
    truncated_note = f"truncated: {total} bytes, capture limit {captured}" if truncated else None
    if not data:
        return EncodedBody(None, None, truncated_note)

    media, params = _parse_header_params(content_type if isinstance(content_type, str) else "")
    multipart = media == "multipart/form-data"
    if truncated and not multipart:
        # A cut JSON document or a cut image is not the body; sending it would mislead.
        return EncodedBody(None, None, truncated_note)

    notes: list[str] = [truncated_note] if truncated_note else []
    codings = _parse_codings(content_encoding if isinstance(content_encoding, str) else "")
    if codings:
        try:
            data = _decode_content(data, codings, max_size, partial=truncated)
        except _TooLarge:
            notes.append(f"decoded body exceeds {max_size} bytes")
            return EncodedBody(None, None, _join(notes))
        except _Unsupported as exc:
            notes.append(f"content-encoding {exc} not decoded")
            if truncated or captured > max_size:
                return EncodedBody(None, None, _join(notes))
            return EncodedBody(base64_text(data), "base64", _join(notes))
        except _Undecodable as exc:
            # Often the body was already decoded by an HTTP client that left the header in place
            # (requests does): go on with the bytes as captured.
            notes.append(f"undecodable {exc}")
            if truncated:
                return EncodedBody(None, None, _join(notes))

    if len(data) > max_size:
        notes.append(f"body too large: {len(data)} bytes, limit {max_size}")
        return EncodedBody(None, None, _join(notes))
    if multipart:
        return _encode_multipart(data, params, notes, truncated)
    return _encode_whole(data, media, params, notes)


def _encode_whole(data: bytes, media: str, params: dict[str, str], notes: list[str]) -> EncodedBody:
    if _is_json_media(media):
        value = _parse_json(data)
        if value is _INVALID:
            notes.append("invalid json")
            return EncodedBody(base64_text(data), "base64", _join(notes))
        return EncodedBody(value, "json", _join(notes))
    if _looks_like_json(data):
        value = _parse_json(data)
        if value is not _INVALID:
            return EncodedBody(value, "json", _join(notes))
    if media == "application/x-www-form-urlencoded":
        fields = _parse_form(data, params.get("charset") or "utf-8")
        if fields is not None:
            return EncodedBody(fields, "json", _join(notes))
        notes.append("invalid form data")
    return EncodedBody(base64_text(data), "base64", _join(notes))


def _join(notes: list[str]) -> str | None:
    return "; ".join(notes) if notes else None


# --- header parsing --------------------------------------------------------------------------------

_PARAM_RE = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')


def _parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """``type/sub; a=1; b="x"`` -> ("type/sub", {"a": "1", "b": "x"}); names lower-cased, first wins."""
    main, sep, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM_RE.finditer(sep + rest):
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"'):
            raw = raw[1:-1] if len(raw) > 1 and raw.endswith('"') else raw[1:]
            # Only the escapes browsers could mean; a bare backslash (a Windows path) stays as is.
            raw = raw.replace('\\"', '"').replace("\\\\", "\\")
        params.setdefault(name, raw)
    return main.strip().lower(), params


def _parse_codings(value: str) -> list[str]:
    return [c for c in (part.strip().lower() for part in value.split(",")) if c and c != "identity"]


_PLAIN_JSON_TYPES = frozenset(
    ("application/json", "application/json; charset=utf-8", "application/json;charset=utf-8")
)


def _is_json_media(media: str) -> bool:
    return media in ("application/json", "text/json") or media.endswith("+json")


# --- content decoding ------------------------------------------------------------------------------


def _decode_content(data: bytes, codings: list[str], limit: int, *, partial: bool) -> bytes:
    """Undo Content-Encoding (applied in the listed order, so undone in reverse), bounded by ``limit``."""
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip"):
            data = _inflate(data, _WBITS_GZIP, limit, partial, coding)
        elif coding == "deflate":
            data = _inflate_deflate(data, limit, partial)
        else:
            raise _Unsupported(coding)
    return data


def _inflate_deflate(data: bytes, limit: int, partial: bool) -> bytes:
    # "deflate" is meant to be zlib-wrapped, but servers send raw deflate (and sometimes gzip) too.
    if data[:2] == _GZIP_MAGIC:
        return _inflate(data, _WBITS_GZIP, limit, partial, "deflate")
    if len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0:
        try:
            return _inflate(data, _WBITS_ZLIB, limit, partial, "deflate")
        except _Undecodable:
            pass  # a raw stream can look like a zlib header by chance
    return _inflate(data, _WBITS_RAW, limit, partial, "deflate")


def _inflate(data: bytes, wbits: int, limit: int, partial: bool, coding: str) -> bytes:
    """Decompress at most ``limit`` bytes; more raises _TooLarge, so a zip bomb costs ``limit``."""
    out = bytearray()
    pending = data
    inflater = zlib.decompressobj(wbits)
    try:
        while True:
            chunk = inflater.decompress(pending, limit + 1 - len(out))
            out += chunk
            if len(out) > limit:
                raise _TooLarge
            stalled = not chunk and len(inflater.unconsumed_tail) >= len(pending)
            pending = inflater.unconsumed_tail
            if inflater.eof:
                rest = inflater.unused_data.lstrip(b"\x00")
                if wbits == _WBITS_GZIP and rest[:2] == _GZIP_MAGIC:  # another gzip member
                    inflater = zlib.decompressobj(wbits)
                    pending = rest
                    continue
                return bytes(out)  # trailing garbage after the stream is ignored, as browsers do
            if not pending:
                if partial:  # cut by the capture limit: what was inflated so far is all there is
                    return bytes(out)
                raise _Undecodable(coding)
            if stalled:
                raise _Undecodable(coding)
    except zlib.error:
        raise _Undecodable(coding) from None


# --- JSON and forms --------------------------------------------------------------------------------

_INVALID = object()
_UTF8_BOM = codecs.BOM_UTF8


def _parse_json(data: bytes) -> Any:
    try:
        return jsoncodec.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return _INVALID


def _looks_like_json(data: bytes) -> bool:
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    head = data[:64].lstrip(b" \t\r\n")
    if not head and len(data) > 64:
        head = data.lstrip(b" \t\r\n")[:1]
    return head[:1] in (b"{", b"[")


def _parse_form(data: bytes, charset: str) -> dict[str, Any] | None:
    try:
        codecs.lookup(charset)
        text = data.decode(charset)
        parsed = parse_qs(text, keep_blank_values=True, encoding=charset, errors="strict")
    except (LookupError, ValueError):  # unknown charset, undecodable bytes or escapes
        return None
    return {name: values[0] if len(values) == 1 else values for name, values in parsed.items()}


# --- multipart/form-data ---------------------------------------------------------------------------

_MALFORMED_MULTIPART = "malformed multipart"
_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")


class _Malformed(Exception):
    pass


def _encode_multipart(data: bytes, params: dict[str, str], notes: list[str], truncated: bool) -> EncodedBody:
    """Fields as {name: value}, files as {name: file name}; file bytes never leave this function."""
    boundary = params.get("boundary", "")
    try:
        if not boundary or len(boundary) > 200:
            raise _Malformed
        fields, part_notes = _parse_multipart(data, boundary.encode("ascii"), truncated)
    except (_Malformed, UnicodeEncodeError):
        if truncated:  # the cut may be what makes it unparseable
            return EncodedBody(None, None, _join(notes))
        notes.append(_MALFORMED_MULTIPART)
        return EncodedBody(None, None, _join(notes))
    notes.extend(part_notes)
    if not fields and truncated:
        return EncodedBody(None, None, _join(notes))
    return EncodedBody(fields, "json", _join(notes))


def _parse_multipart(data: bytes, boundary: bytes, truncated: bool) -> tuple[dict[str, Any], list[str]]:
    delimiter = b"--" + boundary
    fields: dict[str, Any] = {}
    files: list[str] = []
    cut_values: list[str] = []
    notes: list[str] = []

    pos = _find_delimiter(data, delimiter, 0)
    if pos < 0:
        raise _Malformed
    parts = 0
    while True:
        after = pos + len(delimiter)
        if data.startswith(b"--", after):
            break  # close delimiter; the epilogue is ignored
        line_end = data.find(b"\n", after)
        if line_end < 0:
            if truncated:
                break
            raise _Malformed
        if parts >= MULTIPART_MAX_PARTS:
            notes.append(f"multipart: parts after the first {MULTIPART_MAX_PARTS} omitted")
            break
        parts += 1
        start = line_end + 1
        nxt = _find_delimiter(data, delimiter, start)
        if nxt < 0:
            if not truncated:
                raise _Malformed  # no closing boundary
            # The last part was cut: its file name is still known if its headers were captured.
            _add_part(data[start:], fields, files, cut_values, complete=False)
            break
        part = data[start:nxt]
        if part.endswith(b"\n"):  # the line break before a delimiter belongs to the delimiter
            part = part[:-2] if part.endswith(b"\r\n") else part[:-1]
        _add_part(part, fields, files, cut_values, complete=True)
        pos = nxt

    if files:
        listed = ", ".join(files[:_MAX_FILES_IN_NOTE])
        more = f" and {len(files) - _MAX_FILES_IN_NOTE} more" if len(files) > _MAX_FILES_IN_NOTE else ""
        notes.insert(0, f"multipart: file contents omitted ({listed}{more})")
    if cut_values:
        names = ", ".join(cut_values[:_MAX_FILES_IN_NOTE])
        notes.append(f"multipart: values cut to {MULTIPART_VALUE_LIMIT} bytes ({names})")
    return fields, notes


def _find_delimiter(data: bytes, delimiter: bytes, start: int) -> int:
    """Index of the next delimiter line at or after ``start`` (a line start), or -1."""
    i = start
    while True:
        j = data.find(delimiter, i)
        if j < 0:
            return -1
        if j == start or data[j - 1 : j] == b"\n":
            # A delimiter is the boundary then "--" or a line end (after optional padding); the
            # boundary followed by anything else, or by the end of a cut body, is part of a value.
            tail = data[j + len(delimiter) : j + len(delimiter) + 80]
            if tail.startswith(b"--") or tail.lstrip(b" \t").startswith((b"\r\n", b"\n")):
                return j
        i = j + 1


def _add_part(
    part: bytes, fields: dict[str, Any], files: list[str], cut_values: list[str], *, complete: bool
) -> None:
    if part.startswith((b"\r\n", b"\n")):
        head, body = b"", part[2 if part.startswith(b"\r\n") else 1 :]
    else:
        match = _HEADER_END_RE.search(part)
        if match is None:
            if complete:
                raise _Malformed
            return
        head, body = part[: match.start()], part[match.end() :]
    headers = _parse_part_headers(head)
    _, disposition = _parse_header_params(headers.get("content-disposition", ""))
    name = disposition.get("name")
    if name is None:
        return  # RFC 7578 requires a name; a nameless part has nowhere to go
    filename = _filename(disposition)
    part_type, _ = _parse_header_params(headers.get("content-type", ""))
    if filename is not None or not _is_text_media(part_type):
        value = filename or ""
        size = f"{len(body)} bytes" if complete else "cut by the capture limit"
        files.append(f"{value or name}: {size}")
    elif complete:
        value = _bounded_text(body)
        if len(body) > MULTIPART_VALUE_LIMIT:
            cut_values.append(name)
    else:
        return  # a text value cut by the capture limit is not reported
    if name not in fields:
        fields[name] = value
    elif isinstance(fields[name], list):
        fields[name].append(value)
    else:
        fields[name] = [fields[name], value]


def _parse_part_headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.split(b"\n"):
        name, sep, value = line.rstrip(b"\r").partition(b":")
        if sep:
            key = name.strip().lower().decode("latin-1")
            headers.setdefault(key, value.strip().decode("utf-8", "replace"))
    return headers


def _filename(disposition: dict[str, str]) -> str | None:
    extended = disposition.get("filename*")
    if extended is not None:  # RFC 5987: charset'language'percent-encoded
        charset, _, rest = extended.partition("'")
        _, _, encoded = rest.partition("'")
        try:
            codecs.lookup(charset or "utf-8")
        except LookupError:
            charset = "utf-8"
        return unquote(encoded, encoding=charset or "utf-8", errors="replace")
    return disposition.get("filename")


def _is_text_media(media: str) -> bool:
    return (
        not media
        or media.startswith("text/")
        or _is_json_media(media)
        or media == "application/x-www-form-urlencoded"
    )


def _bounded_text(body: bytes) -> str:
    if len(body) <= MULTIPART_VALUE_LIMIT:
        return body.decode("utf-8", "replace")
    # Incremental decoding drops a character cut in half at the limit instead of mangling it.
    return codecs.getincrementaldecoder("utf-8")("replace").decode(body[:MULTIPART_VALUE_LIMIT], final=False)

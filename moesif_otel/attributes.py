"""Attribute names used by moesif_otel: the contract between capture and export.

Capture writes them into the record it hands to the pipeline (``event.CapturedRecord``), outgoing
capture onto CLIENT spans; the converter reads both, and plain OTel spans by the same names.

OpenTelemetry semantic-convention names where one exists, ``moesif.*`` where none does.
moesif_otel's own span and record attributes are read and written through these constants. Two
kinds of names are not here: the HTTP attributes of the drop-in's server span, which OTel's
semconv helpers write (see :mod:`moesif_otel.http_semconv`), and the attributes of the
``moesif_otel.*`` metrics, defined with their instruments in :mod:`moesif_otel.self_metrics`.
"""

from __future__ import annotations

# --- semantic conventions (HTTP, user) ---------------------------------------------------------
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
URL_FULL = "url.full"
CLIENT_ADDRESS = "client.address"
HTTP_ROUTE = "http.route"
USER_ID = "user.id"

HTTP_REQUEST_BODY_CONTENT = "http.request.body.content"
HTTP_RESPONSE_BODY_CONTENT = "http.response.body.content"
HTTP_REQUEST_BODY_SIZE = "http.request.body.size"
HTTP_RESPONSE_BODY_SIZE = "http.response.body.size"

# Header maps. OTel's instrumentations write one attribute per header
# (``http.request.header.<name>``, a tuple of values, ``-`` normalised to ``_``) and only for the
# headers a user opted into. Moesif wants every header; one attribute per header would run into the
# SDK's attribute-count limit (128 by default, oldest evicted first) on a request with many headers
# and evict the attributes the event is built from. So a span (CAPTURE_ON_SPAN, outgoing calls)
# carries each complete header map as one string attribute (``moesif.request.headers``,
# ``name:value`` lines), and capture's records carry the server's (name, value) pairs as they came,
# decoded on the exporter's thread; the converter also reads the per-header form.
HTTP_REQUEST_HEADER_PREFIX = "http.request.header."
HTTP_RESPONSE_HEADER_PREFIX = "http.response.header."

# Old (pre-stable) semconv names that OTel instrumentations still emit by default.
OLD_HTTP_METHOD = "http.method"
OLD_HTTP_STATUS_CODE = "http.status_code"
OLD_HTTP_URL = "http.url"
OLD_HTTP_SCHEME = "http.scheme"
OLD_HTTP_HOST = "http.host"
OLD_HTTP_SERVER_NAME = "http.server_name"
OLD_HTTP_TARGET = "http.target"
OLD_NET_PEER_IP = "net.peer.ip"
OLD_NET_PEER_PORT = "net.peer.port"
OLD_NET_HOST_PORT = "net.host.port"
OLD_HTTP_FLAVOR = "http.flavor"
OLD_HTTP_USER_AGENT = "http.user_agent"
URL_SCHEME = "url.scheme"
URL_PATH = "url.path"
URL_QUERY = "url.query"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLIENT_PORT = "client.port"
NETWORK_PROTOCOL_VERSION = "network.protocol.version"
HTTP_REQUEST_METHOD_ORIGINAL = "http.request.method_original"
USER_AGENT_ORIGINAL = "user_agent.original"
ERROR_TYPE = "error.type"

# --- moesif.* (no convention exists) -------------------------------------------------------------
MOESIF_CAPTURED = "moesif.captured"  # bool: this span was prepared by moesif_otel capture
# bool, on a real span: capture handed this call's event to the Moesif pipeline as a record
# (event.CapturedRecord); the span itself is not converted
MOESIF_RECORDED = "moesif.recorded"
MOESIF_DIRECTION = "moesif.direction"  # "Incoming" | "Outgoing"; absent: from the span kind
MOESIF_REQUEST_TIME = "moesif.request.time"  # int, ns since epoch; absent: the span's start
MOESIF_RESPONSE_TIME = "moesif.response.time"  # int, ns since epoch (response complete)
MOESIF_REQUEST_URI = "moesif.request.uri"
# str: "name:value" lines, lower-case names; or (a capture record's) a sequence of (name, value)
MOESIF_REQUEST_HEADERS = "moesif.request.headers"
MOESIF_RESPONSE_HEADERS = "moesif.response.headers"  # as above
MOESIF_REQUEST_BODY_TRUNCATED = "moesif.request.body.truncated"  # bool: the app left part of it unread
MOESIF_REQUEST_BODY_OMITTED = "moesif.request.body.omitted"  # str: why no body (e.g. "multipart")
MOESIF_RESPONSE_BODY_OMITTED = "moesif.response.body.omitted"
# bool: the body bytes are already decoded although a Content-Encoding header is present
# (HTTP clients such as requests hand over decompressed bytes and keep the header)
MOESIF_REQUEST_BODY_DECODED = "moesif.request.body.decoded"
MOESIF_RESPONSE_BODY_DECODED = "moesif.response.body.decoded"
MOESIF_COMPANY_ID = "moesif.company_id"
MOESIF_SESSION_TOKEN = "moesif.session_token"
MOESIF_METADATA = "moesif.metadata"  # str: JSON object
MOESIF_TRANSACTION_ID = "moesif.transaction_id"
MOESIF_SKIP = "moesif.skip"  # bool: SKIP hook said so; the event is not sent
MOESIF_SAMPLED_OUT = "moesif.sampled_out"  # bool: dropped by the app config's sample rate
MOESIF_BLOCKED_BY = "moesif.blocked_by"
MOESIF_WEIGHT = "moesif.weight"  # int, set when sampled
MOESIF_ABORTED = "moesif.aborted"  # bool: client disconnected before the response completed
MOESIF_ERROR = "moesif.error"  # str: exception type when the app raised

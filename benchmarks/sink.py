"""A counting Moesif collector for benchmarks: accepts event batches, keeps only counts.

A collector that stored every event would grow by gigabytes over a benchmark run and spend the CPU
the measured server needs, so this one parses each batch (to count it honestly) and forgets it.
It answers what moesifasgi and moesif_otel call: ``GET /v1/config``, ``GET /v1/rules``,
``POST /v1/events`` and ``POST /v1/events/batch`` (gzip or plain JSON). ``GET /_count`` returns
``{"events", "batches", "bad_batches", "bytes"}``.

Run: ``python benchmarks/sink.py --port N`` (binds 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moesif_otel.collector.server import DEFAULT_CONFIG

_CONFIG = json.dumps({"org_id": "bench", "app_id": "bench", **DEFAULT_CONFIG}).encode()


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events = 0
        self.batches = 0
        self.bad_batches = 0
        self.bytes = 0

    def add(self, events: int, nbytes: int, ok: bool) -> None:
        with self.lock:
            self.events += events
            self.batches += 1
            self.bytes += nbytes
            if not ok:
                self.bad_batches += 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {
                "events": self.events,
                "batches": self.batches,
                "bad_batches": self.bad_batches,
                "bytes": self.bytes,
            }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real collector allows
    counts: Counts

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _reply(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.endswith("/v1/config"):
            self._reply(200, _CONFIG, {"X-Moesif-Config-ETag": "bench-etag"})
        elif path.endswith("/v1/rules"):
            self._reply(200, b"[]", {"X-Moesif-Rules-Tag": "bench-rules"})
        elif path == "/_count":
            self._reply(200, json.dumps(self.counts.snapshot()).encode())
        else:
            self._reply(404, b"{}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        if not (path.endswith("/v1/events/batch") or path.endswith("/v1/events")):
            self._reply(404, b"{}")
            return
        try:
            data = gzip.decompress(raw) if "gzip" in (self.headers.get("Content-Encoding") or "") else raw
            parsed = json.loads(data)
            n = len(parsed) if isinstance(parsed, list) else 1
            self.counts.add(n, len(raw), ok=True)
        except (OSError, ValueError):
            self.counts.add(0, len(raw), ok=False)
            self._reply(400, b'{"error":"bad batch"}')
            return
        self._reply(201, b"", {"X-Moesif-Config-ETag": "bench-etag"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    Handler.counts = Counts()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

"""A counting Moesif collector for benchmarks: accepts event batches, keeps only counts.

It stands for Moesif's collector, which runs elsewhere; here its CPU comes out of the two cores
the measured server uses (parsing every batch on arrival took 23-41 us per event). So while
batches arrive it only checks that they decompress (a corrupt one is answered 400 at once) and
keeps them compressed; it parses each batch, to count its events honestly, when the count is
asked for (after a run, or while the exporter benchmark waits), and then forgets it: a collector
that stored every event would grow by gigabytes.
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
        self.unparsed: list[tuple[bytes, bool]] = []  # batches received, not yet counted: (body, gzip)

    def add(self, raw: bytes, gzipped: bool, ok: bool) -> None:
        with self.lock:
            self.batches += 1
            self.bytes += len(raw)
            if ok:
                self.unparsed.append((raw, gzipped))
            else:
                self.bad_batches += 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            unparsed, self.unparsed = self.unparsed, []
        counted = bad = 0
        for raw, gzipped in unparsed:
            try:
                parsed = json.loads(gzip.decompress(raw) if gzipped else raw)
            except ValueError:
                bad += 1
                continue
            counted += len(parsed) if isinstance(parsed, list) else 1
        with self.lock:
            self.events += counted
            self.bad_batches += bad
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
        gzipped = "gzip" in (self.headers.get("Content-Encoding") or "")
        try:
            if gzipped:
                gzip.decompress(raw)  # a corrupt batch is answered now; parsing waits (see above)
        except (OSError, EOFError, ValueError):
            self.counts.add(raw, gzipped, ok=False)
            self._reply(400, b'{"error":"bad batch"}')
            return
        self.counts.add(raw, gzipped, ok=True)
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

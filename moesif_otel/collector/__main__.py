"""``python -m moesif_otel.collector``: run the local collector and print what arrives."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .server import Collector


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moesif_otel.collector",
        description="A local Moesif-compatible collector that prints the events it receives.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9500, help="port to listen on, 0 for any (default 9500)")
    parser.add_argument("--application-id", help="answer 401 unless X-Moesif-Application-Id equals this")
    parser.add_argument(
        "--max-events",
        type=int,
        default=100_000,
        help="keep only the most recent N events for /_collector/events (default 100000; bounds memory)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--verbose", action="store_true", help="print each event's full JSON too")
    output.add_argument("--quiet", action="store_true", help="print nothing per event")
    args = parser.parse_args(argv)

    collector = Collector(
        args.host,
        args.port,
        application_id=args.application_id,
        out=None if args.quiet else sys.stdout,
        verbose=args.verbose,
        max_events=args.max_events,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        collector.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"Moesif local collector listening on {collector.url}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        collector.stop()
    print("Moesif local collector stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

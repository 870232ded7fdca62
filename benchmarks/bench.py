"""Issue 9 benchmark: throughput/latency of one FastAPI app under seven middleware variants, plus
moesif_otel's exporter delivery rate, RSS while streaming 1 GiB, and RSS over a 100k-request soak.
Issue 14: the drop-in against lean OTel on GET and POST, and what an SDK MeterProvider costs both.

Run through ``bash benchmarks/run.sh [--quick]`` (it builds the environment); ``--help`` lists options.
Every server is a subprocess in its own process group, bound to 127.0.0.1, killed on exit; every
step has a deadline. Results: ``benchmarks/results/{latest,quick}.{json,md,png}``; raw wrk output and
server logs: ``benchmarks/results/raw/<stamp>/`` (not committed).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from app import VARIANTS, make_app, moesif_settings  # noqa: E402

MOESIF_VARIANTS = ("moesifasgi", "moesif_otel", "moesif_otel_metrics")
# Issue 14: each variant with an SDK MeterProvider, next to what it is compared with.
METRICS_PAIRS = (
    ("moesif_otel_metrics", "moesif_otel", "the drop-in: with the provider / without"),
    ("otel_lean_metrics", "otel_lean", "lean OTel: with the provider / without"),
    ("moesif_otel_metrics", "otel_lean_metrics", "with the provider: drop-in / lean OTel"),
)
GIB = 1024**3
MIB = 1024**2

# The POST /echo body: a small, realistic JSON document (~290 bytes).
POST_BODY = json.dumps(
    {
        "order_id": 12345,
        "customer": {"id": "c-981", "name": "Ada Lovelace", "email": "ada@example.com"},
        "items": [{"sku": "A-1", "qty": 2, "price": 9.99}, {"sku": "B-7", "qty": 1, "price": 24.5}],
        "shipping": {"method": "express", "address": "12 St James's Square, London"},
        "note": "leave at the door",
        "gift": False,
    },
    separators=(",", ":"),
)

ENDPOINTS: dict[str, dict[str, str | None]] = {
    "GET": {"path": "/items/42", "script": None},
    "POST": {"path": "/echo", "script": "post.lua"},
}

TARGETS = {
    "post_rps_vs_moesifasgi": (">=", 2.0, "POST /echo req/s: moesif_otel / moesifasgi"),
    # issue 9 asked for 0.9; issue 14: at least lean OTel's throughput on both endpoints
    "post_rps_vs_otel_lean": (">=", 1.0, "POST /echo req/s: moesif_otel / otel_lean"),
    "get_rps_vs_otel_lean": (">=", 1.0, "GET /items req/s: moesif_otel / otel_lean"),
    "post_p99_vs_otel_lean": ("<=", 1.3, "POST /echo p99: moesif_otel / otel_lean"),
    "exporter_events_per_s": (">=", 20_000.0, "exporter delivery to the local collector (events/s)"),
    "stream_rss_growth_mib": ("<=", 32.0, "RSS growth streaming 1 GiB through moesif_otel (MiB)"),
    "soak_rss_growth_mib": ("<=", 20.0, "RSS growth over the soak after warm-up, moesif_otel (MiB)"),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------
# processes


_LIVE: set[subprocess.Popen[bytes]] = set()


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    _LIVE.discard(proc)


def _kill_all() -> None:
    for proc in list(_LIVE):
        _kill_group(proc, grace=2)


def _on_signal(signum: int, frame: object) -> None:
    _kill_all()
    raise SystemExit(128 + signum)


def spawn(cmd: list[str], env: dict[str, str] | None, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _LIVE.add(proc)
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """utime+stime of all the process's threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Collector:
    """The local Moesif collector (benchmarks/sink.py: counts events, keeps none)."""

    def __init__(self, raw_dir: Path, tag: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, str(HERE / "sink.py"), "--port", str(self.port)]
        self.proc = spawn(cmd, None, raw_dir / f"collector-{tag}.log")
        deadline = time.monotonic() + 15
        while True:
            try:
                self.count()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"collector did not start; see {raw_dir}/collector-{tag}.log"
                    ) from None
                time.sleep(0.05)

    def count(self) -> int:
        status, body = http_get(self.port, "/_count", timeout=5)
        if status != 200:
            raise OSError(f"collector /_count answered {status}")
        return int(json.loads(body)["events"])

    def settle(self, want: int, quiet_for: float = 0.5, limit: float = 5.0) -> int:
        """The count once it reaches ``want`` or has not changed for ``quiet_for`` s (at most ``limit`` s)."""
        deadline = time.monotonic() + limit
        last, last_change = self.count(), time.monotonic()
        while last < want and time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.count()
            if now != last:
                last, last_change = now, time.monotonic()
            elif time.monotonic() - last_change >= quiet_for:
                break
        return last

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        _kill_group(self.proc, grace=3)


class Server:
    """One uvicorn worker serving benchmarks/app.py for one variant."""

    def __init__(
        self, variant: str, opts: argparse.Namespace, raw_dir: Path, tag: str, collector_url: str | None
    ):
        self.variant = variant
        self.port = free_port()
        env = dict(os.environ)
        env.update({"BENCH_VARIANT": variant, "PYTHONUNBUFFERED": "1"})
        if collector_url:
            env["BENCH_COLLECTOR_URL"] = collector_url
        cmd = [
            sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(HERE),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--no-access-log", "--log-level", "warning", "--loop", opts.loop, "--http", opts.http,
        ]  # fmt: skip
        if opts.pin:
            cmd = ["taskset", "-c", "0", *cmd]
        self.log_path = raw_dir / f"server-{tag}.log"
        self.proc = spawn(cmd, env, self.log_path)
        self.probes = 0
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = http_get(self.port, "/items/1", timeout=5)
                self.probes += 1
                if status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.variant} server did not start:\n{tail}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        # SIGTERM: uvicorn's graceful shutdown, so lifespan shutdown hooks (and exporter flushes) run.
        _kill_group(self.proc, grace=15)


@contextlib.contextmanager
def serving(
    variant: str, opts: argparse.Namespace, raw_dir: Path, tag: str
) -> Iterator[tuple[Server, Collector | None]]:
    collector = Collector(raw_dir, tag) if variant in MOESIF_VARIANTS else None
    try:
        server = Server(variant, opts, raw_dir, tag, collector.url if collector else None)
        try:
            yield server, collector
        finally:
            server.stop()
    finally:
        if collector:
            collector.stop()


class RssSampler:
    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append((time.monotonic() - self._t0, rss_kib(self.pid)))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------------------------------
# wrk


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    seconds: float
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    wrk_cpu_s: float = 0.0


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+(\S+)\s*$", out, re.M)
        return _ms(m.group(1)) if m else float("nan")

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m),", out, re.M)
    if not rps or not total:
        raise ValueError(f"unparsable wrk output:\n{out}")
    result = WrkResult(
        rps=float(rps.group(1)),
        p50_ms=pct("50"),
        p99_ms=pct("99"),
        requests=int(total.group(1)),
        seconds=_ms(total.group(2) + total.group(3)) / 1e3,
    )
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result.non_2xx = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        result.socket_errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True)
        )
    return result


def run_wrk(
    opts: argparse.Namespace,
    port: int,
    endpoint: str,
    seconds: float,
    out_path: Path | None,
    script: Path | None = None,
) -> WrkResult:
    url = f"http://127.0.0.1:{port}{ENDPOINTS[endpoint]['path']}"
    cmd = [
        "wrk",
        f"-t{opts.wrk_threads}",
        f"-c{opts.connections}",
        f"-d{int(seconds)}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if opts.pin:
        cmd = ["taskset", "-c", "1", *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out_path is not None:
        out_path.write_text(" ".join(cmd) + "\n" + done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = parse_wrk(done.stdout)
    result.wrk_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


def write_scripts(raw_dir: Path) -> dict[str, Path]:
    """wrk Lua for POST /echo: static (method, body, header only), so wrk stays on its fast path."""
    path = raw_dir / "post.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{POST_BODY}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return {"post.lua": path}


# --------------------------------------------------------------------------------------------------
# measurements


def _one_run(
    opts: argparse.Namespace, rnd: int, endpoint: str, variant: str, raw_dir: Path, script: Path | None
) -> dict[str, Any]:
    tag = f"r{rnd}-{endpoint}-{variant}"
    with serving(variant, opts, raw_dir, tag) as (server, collector):
        warm = run_wrk(opts, server.port, endpoint, opts.warmup, None, script)
        cpu0 = cpu_seconds(server.pid)
        res = run_wrk(opts, server.port, endpoint, opts.duration, raw_dir / f"wrk-{tag}.txt", script)
        server_cpu = cpu_seconds(server.pid) - cpu0
        rss = rss_kib(server.pid)
        served = server.probes + warm.requests + res.requests
        run: dict[str, Any] = {
            "round": rnd,
            "endpoint": endpoint,
            "variant": variant,
            **asdict(res),
            "warmup_errors": warm.non_2xx + sum(warm.socket_errors.values()),
            "server_cpu_fraction": server_cpu / res.seconds,
            "wrk_cpu_fraction": res.wrk_cpu_s / res.seconds,
            "server_rss_mib": rss / 1024,
            "served": served,
        }
        server.stop()  # before counting: a graceful stop is when queued events are flushed
        if collector is not None:  # the server is gone: nothing more can arrive
            run["events_delivered"] = collector.settle(want=served, quiet_for=0.2)
    return run


def run_errors(run: dict[str, Any]) -> int:
    return int(run["non_2xx"] + sum(run["socket_errors"].values()) + run.get("warmup_errors", 0))


def measure_throughput(
    opts: argparse.Namespace, variants: list[str], raw_dir: Path, scripts: dict[str, Path], notes: list[str]
) -> list[dict[str, Any]]:
    """Interleaved rounds: each round runs every endpoint x variant once, in a rotated order."""
    runs: list[dict[str, Any]] = []
    total = opts.rounds * len(ENDPOINTS) * len(variants)
    k = 0
    for rnd in range(opts.rounds):
        shift = rnd % len(variants)
        order = variants[shift:] + variants[:shift]
        endpoints = list(ENDPOINTS) if rnd % 2 == 0 else list(reversed(ENDPOINTS))
        for endpoint in endpoints:
            script_name = ENDPOINTS[endpoint]["script"]
            script = scripts[script_name] if script_name else None
            for variant in order:
                k += 1
                try:
                    run = _one_run(opts, rnd, endpoint, variant, raw_dir, script)
                except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
                    notes.append(
                        f"round {rnd} {endpoint} {variant} failed: {type(exc).__name__}: {exc}"[:2000]
                    )
                    log(f"[{k}/{total}] " + notes[-1])
                    continue
                runs.append(run)
                bad = run_errors(run)
                delivered = (
                    f" events {run['events_delivered']}/{run['served']}" if "events_delivered" in run else ""
                )
                log(
                    f"[{k}/{total}] round {rnd} {endpoint:4} {variant:19} {run['rps']:8.0f} req/s "
                    f"p50 {run['p50_ms']:6.2f} ms p99 {run['p99_ms']:6.2f} ms "
                    f"server cpu {run['server_cpu_fraction']:.0%} wrk cpu {run['wrk_cpu_fraction']:.0%}"
                    + (f" ERRORS {bad}" if bad else "")
                    + delivered
                )
    return runs


def aggregate(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Medians over rounds per endpoint and variant, and ratios (of medians) to bare."""
    agg: dict[str, dict[str, dict[str, Any]]] = {}
    for endpoint in ENDPOINTS:
        agg[endpoint] = {}
        for variant in variants:
            rs = [r for r in runs if r["endpoint"] == endpoint and r["variant"] == variant]
            if not rs:
                continue
            entry: dict[str, Any] = {
                "rps": statistics.median(r["rps"] for r in rs),
                "rps_min": min(r["rps"] for r in rs),
                "rps_max": max(r["rps"] for r in rs),
                "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                "server_cpu_fraction": statistics.median(r["server_cpu_fraction"] for r in rs),
                "wrk_cpu_fraction": statistics.median(r["wrk_cpu_fraction"] for r in rs),
                "errors": sum(run_errors(r) for r in rs),
                "rounds": len(rs),
            }
            if all("events_delivered" in r for r in rs):
                entry["delivered_fraction"] = sum(r["events_delivered"] for r in rs) / sum(
                    r["served"] for r in rs
                )
            agg[endpoint][variant] = entry
        bare = agg[endpoint].get("bare")
        for entry in agg[endpoint].values():
            entry["rps_ratio_to_bare"] = entry["rps"] / bare["rps"] if bare else None
            entry["p99_ratio_to_bare"] = entry["p99_ms"] / bare["p99_ms"] if bare else None
    return agg


def _stream_once(port: int, size: int, timeout: float) -> int:
    """GET /stream?size=N on a raw socket, discarding the body; returns bytes received (with framing)."""
    received = 0
    buf = bytearray(1024 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(
            f"GET /stream?size={size} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = sock.recv_into(buf)
            if n == 0:
                return received
            received += n
    raise TimeoutError(f"stream of {size} bytes not done in {timeout} s")


def measure_stream(opts: argparse.Namespace, variant: str, raw_dir: Path) -> dict[str, Any]:
    """Max RSS growth of the server while one client streams ``opts.stream_bytes`` through it."""
    with serving(variant, opts, raw_dir, f"stream-{variant}") as (server, _collector):
        for _ in range(3):  # warm the stream path (and the capture path) before the baseline
            _stream_once(server.port, 4 * MIB, timeout=30)
        time.sleep(0.5)
        baseline = rss_kib(server.pid)
        result: dict[str, int] = {}

        def reader() -> None:
            result["bytes"] = _stream_once(server.port, opts.stream_bytes, timeout=opts.stream_timeout)

        t0 = time.monotonic()
        with RssSampler(server.pid, 0.02) as sampler:
            thread = threading.Thread(target=reader, daemon=True)
            thread.start()
            thread.join(opts.stream_timeout + 5)
            elapsed = time.monotonic() - t0
            time.sleep(1.0)  # keep sampling a second after the response: the capture finishes
        if "bytes" not in result or result["bytes"] < opts.stream_bytes:
            raise RuntimeError(f"{variant}: stream incomplete ({result.get('bytes')} bytes)")
        peak = max(kib for _, kib in sampler.samples)
    out = {
        "variant": variant,
        "bytes": opts.stream_bytes,
        "seconds": elapsed,
        "mib_per_s": opts.stream_bytes / MIB / elapsed,
        "baseline_rss_mib": baseline / 1024,
        "peak_rss_mib": peak / 1024,
        "growth_mib": (peak - baseline) / 1024,
        "samples": len(sampler.samples),
    }
    log(
        f"stream {variant:12} {opts.stream_bytes / GIB:.2f} GiB in {elapsed:5.1f} s: "
        f"RSS {out['baseline_rss_mib']:.1f} -> peak {out['peak_rss_mib']:.1f} MiB (+{out['growth_mib']:.1f})"
    )
    return out


def _wrk_count(
    opts: argparse.Namespace, port: int, requests: int, rps_guess: float, out_prefix: Path, script: Path
) -> tuple[int, float, float, int]:
    """About ``requests`` POSTs (wrk has no request count: runs sized from the measured rate, whole
    seconds, so it overshoots by under a second of load). Returns (requests, seconds, req/s)."""
    done, seconds, k, errors = 0, 0.0, 0, 0
    rps = rps_guess
    while done < requests:
        chunk = max(1, min(20, -(-(requests - done) // max(1, int(rps)))))
        res = run_wrk(opts, port, "POST", chunk, out_prefix.with_name(f"{out_prefix.name}-{k}.txt"), script)
        if res.requests == 0:
            raise RuntimeError("wrk completed no requests")
        done, seconds, k = done + res.requests, seconds + res.seconds, k + 1
        errors += res.non_2xx + sum(res.socket_errors.values())
        rps = res.rps
    return done, seconds, done / seconds, errors


def measure_soak(
    opts: argparse.Namespace, variant: str, raw_dir: Path, scripts: dict[str, Path]
) -> dict[str, Any]:
    """RSS over a fixed number of POST /echo requests: baseline after warm-up, then growth to the end."""
    script = scripts["post.lua"]
    with serving(variant, opts, raw_dir, f"soak-{variant}") as (server, collector):
        warm, _, rps, warm_errors = _wrk_count(
            opts, server.port, opts.soak_warmup, 1000, raw_dir / f"wrk-soak-warm-{variant}", script
        )
        served = server.probes + warm
        if collector:  # let the exporter drain so queued events are not in the baseline
            collector.settle(want=served, quiet_for=3.0, limit=15)
        baseline = rss_kib(server.pid)
        with RssSampler(server.pid, 0.5) as sampler:
            n, seconds, rps, errors = _wrk_count(
                opts, server.port, opts.soak_requests - warm, rps, raw_dir / f"wrk-soak-{variant}", script
            )
            at_end = rss_kib(server.pid)
            served += n
            delivered = collector.settle(want=served, quiet_for=3.0, limit=15) if collector else None
            settled = rss_kib(server.pid)
        peak = max(kib for _, kib in sampler.samples)
    out = {
        "variant": variant,
        "requests": warm + n,
        "warmup_requests": warm,
        "seconds": seconds,
        "rps": rps,
        "baseline_rss_mib": baseline / 1024,
        "end_rss_mib": at_end / 1024,
        "settled_rss_mib": settled / 1024,
        "peak_rss_mib": peak / 1024,
        "growth_mib": (settled - baseline) / 1024,
        "peak_growth_mib": (peak - baseline) / 1024,
        "events_delivered": delivered,
        "served": served,
        "errors": warm_errors + errors,
        "rss_series_mib": [(round(t, 2), round(kib / 1024, 2)) for t, kib in sampler.samples],
    }
    log(
        f"soak {variant:12} {out['requests']} requests ({rps:.0f} req/s): RSS after warm-up "
        f"{out['baseline_rss_mib']:.1f} -> end {out['settled_rss_mib']:.1f} MiB (+{out['growth_mib']:.1f}; "
        f"peak +{out['peak_growth_mib']:.1f})"
        + (f", events {delivered}/{served}" if collector else "")
        + (f", ERRORS {out['errors']}" if out["errors"] else "")
    )
    return out


# ------------------------------- WIRE-UP: moesif_otel's API -------------------------------------
# The exporter measurement uses only moesif_otel's public API: MoesifMiddleware(app, settings,
# tracer_provider=...) to capture real spans, and Settings, MoesifSpanExporter and MoesifSpanProcessor
# wired as the drop-in middleware wires them. Adjust here if that API changes.


def capture_real_spans(count: int, collector_url: str) -> list[Any]:
    """Finished server spans exactly as capture writes them: ``count`` requests (half GET /items,
    half POST /echo with the benchmark's JSON body) through MoesifMiddleware, in-process."""
    import asyncio

    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

    from moesif_otel import MoesifMiddleware, MoesifSpanExporter, MoesifSpanProcessor
    from moesif_otel.event import is_api_call

    class Keep(MoesifSpanProcessor):
        """A Moesif processor already on the provider: the middleware hands it each captured call
        (capture's records, not the spans) instead of building its own."""

        def __init__(self) -> None:
            super().__init__(MoesifSpanExporter(moesif_settings(collector_url)))
            self.spans: list[ReadableSpan] = []

        def on_end(self, span: ReadableSpan) -> None:
            if is_api_call(span):  # the records; the spans themselves are marked as recorded
                self.spans.append(span)

    keep = Keep()
    provider = TracerProvider()
    provider.add_span_processor(keep)
    asgi = MoesifMiddleware(make_app("bare"), moesif_settings(collector_url), tracer_provider=provider)
    post_body = POST_BODY.encode()

    async def one(i: int) -> None:
        headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk/4.1.0"), (b"accept", b"*/*")]
        if i % 2:
            method, path, body = "POST", "/echo", post_body
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        else:
            method, path, body = "GET", f"/items/{i}", b""
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000 + i % 20000),
            "server": ("127.0.0.1", 8000),
        }  # fmt: skip
        done = asyncio.Event()
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()  # like a server: a disconnect only after the response
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await asgi(scope, receive, send)

    async def run() -> None:
        for i in range(count):
            await one(i)

    asyncio.run(run())
    asgi.pipeline.shutdown()
    keep.exporter.shutdown()
    if len(keep.spans) < count:
        raise RuntimeError(f"captured {len(keep.spans)} spans for {count} requests")
    return keep.spans


def build_pipeline(collector_url: str, queue_size: int) -> tuple[Any, Any]:
    """(processor, exporter) configured from the app's settings dict, as the drop-in middleware does.
    EVENT_QUEUE_SIZE and EVENT_QUEUE_BYTES (64 MiB held ~18,000 of these spans) are raised to hold the
    whole burst, so the number is delivery speed, not the bounds."""
    from moesif_otel import MoesifSpanExporter, MoesifSpanProcessor, Settings

    settings = Settings.from_mapping(
        {
            **moesif_settings(collector_url),
            "EVENT_QUEUE_SIZE": queue_size,
            "EVENT_QUEUE_BYTES": queue_size * 64 * 1024,  # a bound, not an allocation
        }
    )
    exporter = MoesifSpanExporter(settings)
    return MoesifSpanProcessor.for_exporter(exporter), exporter


def measure_exporter(opts: argparse.Namespace, raw_dir: Path) -> dict[str, Any]:
    """Events/s through MoesifSpanProcessor -> MoesifSpanExporter -> the collector: from handing the
    first of ``n`` finished spans to the processor until the collector has counted the last event."""
    n = opts.exporter_events
    collector = Collector(raw_dir, "exporter")
    try:
        log(f"exporter: capturing {opts.exporter_distinct} real spans through MoesifMiddleware")
        real = capture_real_spans(opts.exporter_distinct, collector.url)
        spans = (real * (n // len(real) + 1))[:n]  # re-exporting a span is converting it again: same work
        base = collector.settle(want=len(real), quiet_for=2.0, limit=30)
        processor, exporter = build_pipeline(collector.url, queue_size=n + 1000)
        cpu0, ccpu0 = time.process_time(), collector.cpu_seconds()
        t0 = time.monotonic()
        for span in spans:
            processor.on_end(span)
        fed = time.monotonic() - t0
        deadline = t0 + opts.exporter_timeout
        got, last_change = 0, t0
        while got < n and time.monotonic() < deadline and time.monotonic() - last_change < 10:
            time.sleep(0.02)
            now = collector.count() - base
            if now != got:
                got, last_change = now, time.monotonic()
        elapsed = last_change - t0
        cpu, ccpu = time.process_time() - cpu0, collector.cpu_seconds() - ccpu0
        processor.shutdown()
        stats = {**processor.stats(), **exporter.stats()}
    finally:
        collector.stop()
    out = {
        "events": n,
        "delivered": got,
        "distinct_spans": len(real),
        "seconds": elapsed,
        "feed_seconds": fed,
        "events_per_s": got / elapsed if elapsed > 0 else 0.0,
        "bench_process_cpu_fraction": cpu / elapsed if elapsed > 0 else 0.0,
        "collector_cpu_fraction": ccpu / elapsed if elapsed > 0 else 0.0,
        "stats": stats,
    }
    log(
        f"exporter: {got}/{n} events in {elapsed:.2f} s = {out['events_per_s']:.0f} events/s "
        f"(exporter process cpu {out['bench_process_cpu_fraction']:.0%}, "
        f"collector cpu {out['collector_cpu_fraction']:.0%}); stats {stats}"
    )
    return out


# --------------------------------------------------------------------------------------------------
# reporting


def machine_info(opts: argparse.Namespace) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    versions = {}
    for dist in (
        "moesif-otel", "moesifasgi", "moesifapi", "fastapi", "starlette", "uvicorn", "uvloop", "httptools",
        "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-instrumentation-asgi",
        "opentelemetry-instrumentation-fastapi", "matplotlib",
    ):  # fmt: skip
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": (wrk.stdout or wrk.stderr or "?").splitlines()[0].split(" Copyright")[0].strip(),
        "packages": versions,
    }


def evaluate_targets(
    agg: dict[str, dict[str, dict[str, Any]]],
    exporter: dict[str, Any] | None,
    streams: list[dict[str, Any]],
    soaks: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    post, get = agg.get("POST", {}), agg.get("GET", {})
    mo, ma, lean = post.get("moesif_otel"), post.get("moesifasgi"), post.get("otel_lean")
    get_mo, get_lean = get.get("moesif_otel"), get.get("otel_lean")
    values: dict[str, float | None] = {
        "post_rps_vs_moesifasgi": mo["rps"] / ma["rps"] if mo and ma else None,
        "post_rps_vs_otel_lean": mo["rps"] / lean["rps"] if mo and lean else None,
        "get_rps_vs_otel_lean": get_mo["rps"] / get_lean["rps"] if get_mo and get_lean else None,
        "post_p99_vs_otel_lean": mo["p99_ms"] / lean["p99_ms"] if mo and lean else None,
        "exporter_events_per_s": exporter["events_per_s"] if exporter else None,
        "stream_rss_growth_mib": next(
            (s["growth_mib"] for s in streams if s["variant"] == "moesif_otel"), None
        ),
        "soak_rss_growth_mib": next((s["growth_mib"] for s in soaks if s["variant"] == "moesif_otel"), None),
    }
    # A number measured on a server that answered errors, or an exporter that lost events, proves nothing.
    broken_post = [v for v, e in post.items() if e["errors"]]
    broken_get = [v for v, e in get.items() if e["errors"]]
    soak = next((s for s in soaks if s["variant"] == "moesif_otel"), None)
    invalid: dict[str, str | None] = {
        "post_rps_vs_moesifasgi": _broken(broken_post, ("moesif_otel", "moesifasgi")),
        "post_rps_vs_otel_lean": _broken(broken_post, ("moesif_otel", "otel_lean")),
        "get_rps_vs_otel_lean": _broken(broken_get, ("moesif_otel", "otel_lean")),
        "post_p99_vs_otel_lean": _broken(broken_post, ("moesif_otel", "otel_lean")),
        "exporter_events_per_s": (
            f"only {exporter['delivered']} of {exporter['events']} events delivered"
            if exporter and exporter["delivered"] < exporter["events"]
            else None
        ),
        "stream_rss_growth_mib": None,
        "soak_rss_growth_mib": f"{soak['errors']} failed requests" if soak and soak["errors"] else None,
    }
    out = {}
    for key, (op, bound, desc) in TARGETS.items():
        v = values[key]
        ok = None if v is None else (v >= bound if op == ">=" else v <= bound)
        status = "N/A" if ok is None else ("PASS" if ok else "FAIL")
        if ok is not None and invalid[key]:
            status = "INVALID"
        out[key] = {"description": desc, "value": v, "target": f"{op} {bound:g}", "status": status}
        if status == "INVALID":
            out[key]["reason"] = invalid[key]
    return out


def metrics_cost(agg: dict[str, dict[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Issue 14: req/s and p99 ratios (of medians) of each pair in METRICS_PAIRS, per endpoint."""
    out: dict[str, list[dict[str, Any]]] = {}
    for endpoint, rows in agg.items():
        for variant, baseline, description in METRICS_PAIRS:
            a, b = rows.get(variant), rows.get(baseline)
            if a and b:
                out.setdefault(endpoint, []).append(
                    {
                        "variant": variant,
                        "baseline": baseline,
                        "description": description,
                        "rps_ratio": a["rps"] / b["rps"],
                        "p99_ratio": a["p99_ms"] / b["p99_ms"],
                        "errors": a["errors"] + b["errors"],
                    }
                )
    return out


def _broken(broken: list[str], involved: tuple[str, ...]) -> str | None:
    bad = [v for v in involved if v in broken]
    return f"HTTP/socket errors during the runs of {', '.join(bad)}" if bad else None


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def render_markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [
        f"# Benchmark results ({res['mode']} run, {m['date']})",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory']} RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['wrk']}.",
        "",
        f"Load: wrk -t{cfg['wrk_threads']} -c{cfg['connections']} -d{cfg['duration']}s --latency after a "
        f"{cfg['warmup']} s warm-up, one uvicorn worker (--loop {cfg['loop']} --http {cfg['http']}), "
        f"{cfg['rounds']} interleaved rounds, medians; CPU pinning: "
        f"{'server cpu0, wrk cpu1' if cfg['pin'] else 'none'}.",
        "",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
        "",
        "## Targets",
        "",
        "| target | value | bound | status |",
        "|---|---:|---:|:---:|",
    ]
    for t in res["targets"].values():
        status = t["status"] + (f" ({t['reason']})" if t.get("reason") else "")
        lines.append(f"| {t['description']} | {_fmt(t['value'])} | {t['target']} | {status} |")
    for endpoint, label in (("GET", "GET /items/42 (small JSON)"), ("POST", "POST /echo (JSON body)")):
        rows = res["throughput"].get(endpoint, {})
        if not rows:
            continue
        lines += [
            "",
            f"## {label}",
            "",
            "| variant | req/s (median) | min-max | ratio to bare | p50 ms | p99 ms "
            "| server CPU | wrk CPU | events delivered | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for variant, e in rows.items():
            delivered = f"{e['delivered_fraction']:.1%}" if "delivered_fraction" in e else "—"
            lines.append(
                f"| {variant} | {e['rps']:,.0f} | {e['rps_min']:,.0f}-{e['rps_max']:,.0f} | "
                f"{_fmt(e['rps_ratio_to_bare'])} | {e['p50_ms']:.2f} | {e['p99_ms']:.2f} | "
                f"{e['server_cpu_fraction']:.0%} | {e['wrk_cpu_fraction']:.0%} | {delivered} | "
                f"{e['errors']} |"
            )
    if res.get("metrics_cost"):
        lines += [
            "",
            "## With an SDK MeterProvider (issue 14)",
            "",
            "Both `_metrics` variants get an SDK `MeterProvider` whose `PeriodicExportingMetricReader` "
            "collects every second into an exporter that drops: lean OTel records its HTTP server "
            "metrics, the drop-in the same ones plus its own `moesif_otel.*` counters.",
            "",
            "| endpoint | comparison | req/s ratio | p99 ratio | errors |",
            "|---|---|---:|---:|---:|",
        ]
        for endpoint, pairs in res["metrics_cost"].items():
            for c in pairs:
                lines.append(
                    f"| {endpoint} | {c['variant']} / {c['baseline']} ({c['description']}) | "
                    f"{c['rps_ratio']:.2f} | {c['p99_ratio']:.2f} | {c['errors']} |"
                )
    if res.get("exporter"):
        e = res["exporter"]
        lines += [
            "",
            "## Exporter delivery",
            "",
            f"{e['delivered']:,} of {e['events']:,} events in {e['seconds']:.2f} s = "
            f"**{e['events_per_s']:,.0f} events/s** "
            f"(MoesifSpanProcessor -> MoesifSpanExporter as the middleware wires them, BATCH_SIZE 100, "
            f"{e['distinct_spans']:,} real captured spans reused; exporter process CPU "
            f"{e['bench_process_cpu_fraction']:.0%}, "
            f"collector CPU {e['collector_cpu_fraction']:.0%}).",
        ]
    elif res.get("exporter_error"):
        lines += ["", "## Exporter delivery", "", f"Not measured: {res['exporter_error']}"]
    if res.get("stream"):
        lines += [
            "",
            f"## Streaming {res['config']['stream_bytes'] / GIB:g} GiB",
            "",
            "| variant | seconds | MiB/s | RSS before MiB | peak MiB | growth MiB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for s in res["stream"]:
            lines.append(
                f"| {s['variant']} | {s['seconds']:.1f} | {s['mib_per_s']:,.0f} | "
                f"{s['baseline_rss_mib']:.1f} | {s['peak_rss_mib']:.1f} | {s['growth_mib']:+.1f} |"
            )
    if res.get("soak"):
        lines += [
            "",
            "## Soak (POST /echo)",
            "",
            "| variant | requests | req/s | RSS after warm-up MiB | end MiB | growth MiB "
            "| peak growth MiB | events delivered |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in res["soak"]:
            ev = f"{s['events_delivered']:,}/{s['served']:,}" if s["events_delivered"] is not None else "—"
            lines.append(
                f"| {s['variant']} | {s['requests']:,} (warm-up {s['warmup_requests']:,}) | "
                f"{s['rps']:,.0f} | "
                f"{s['baseline_rss_mib']:.1f} | {s['settled_rss_mib']:.1f} | {s['growth_mib']:+.1f} | "
                f"{s['peak_growth_mib']:+.1f} | {ev} |"
            )
    if res.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def render_chart(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thr = res["throughput"]
    variants = [v for v in VARIANTS if any(v in thr.get(e, {}) for e in ENDPOINTS)]
    soak = next((s for s in res.get("soak", []) if s["variant"] == "moesif_otel"), None)
    fig, axes = plt.subplots(1, 3 if soak else 2, figsize=(16 if soak else 12, 4.8))
    width = 0.38
    colors = {"GET": "#4C72B0", "POST": "#DD8452"}

    ax = axes[0]
    for k, endpoint in enumerate(ENDPOINTS):
        ys = [(thr.get(endpoint, {}).get(v) or {}).get("rps_ratio_to_bare") or 0 for v in variants]
        xs = [i + (k - 0.5) * width for i in range(len(variants))]
        bars = ax.bar(xs, ys, width, label=endpoint, color=colors[endpoint])
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    post = thr.get("POST", {})
    if post.get("moesifasgi", {}).get("rps_ratio_to_bare") and post.get("otel_lean", {}).get(
        "rps_ratio_to_bare"
    ):
        need = max(
            TARGETS["post_rps_vs_moesifasgi"][1] * post["moesifasgi"]["rps_ratio_to_bare"],
            TARGETS["post_rps_vs_otel_lean"][1] * post["otel_lean"]["rps_ratio_to_bare"],
        )
        ax.axhline(need, color="#C44E52", ls="--", lw=1.2, label=f"moesif_otel POST target ({need:.2f})")
    ax.set_xticks(range(len(variants)), variants, rotation=15)
    ax.set_ylabel("throughput / bare (median req/s)")
    ax.set_title("Throughput relative to the bare app")
    ax.set_ylim(0, 1.15)
    ax.legend(fontsize=8, loc="upper right")

    ax = axes[1]
    for k, endpoint in enumerate(ENDPOINTS):
        ys = [(thr.get(endpoint, {}).get(v) or {}).get("p99_ms") or 0 for v in variants]
        xs = [i + (k - 0.5) * width for i in range(len(variants))]
        bars = ax.bar(xs, ys, width, label=endpoint, color=colors[endpoint])
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    if "otel_lean" in post:
        lim = 1.3 * post["otel_lean"]["p99_ms"]
        ax.axhline(lim, color="#C44E52", ls="--", lw=1.2, label=f"moesif_otel POST p99 target ({lim:.1f} ms)")
    ax.set_xticks(range(len(variants)), variants, rotation=15)
    ax.set_ylabel("p99 latency (ms, median of rounds)")
    ax.set_title("p99 latency")
    ax.legend(fontsize=8, loc="upper left")

    if soak:
        ax = axes[2]
        ts = [t for t, _ in soak["rss_series_mib"]]
        ms = [m for _, m in soak["rss_series_mib"]]
        ax.plot(ts, ms, color="#55A868", label="moesif_otel server RSS")
        ax.axhline(
            soak["baseline_rss_mib"] + 20, color="#C44E52", ls="--", lw=1.2, label="after warm-up + 20 MiB"
        )
        ax.set_xlabel("seconds into soak (after warm-up)")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title(f"Soak: {soak['requests']:,} POST /echo")
        ax.set_ylim(0, max([*ms, soak["baseline_rss_mib"] + 20]) * 1.2)
        ax.legend(fontsize=8, loc="lower right")

    m = res["machine"]
    fig.suptitle(
        f"moesif_otel benchmark ({res['mode']}, {m['date']}): "
        f"{m['nproc']} CPU {m['cpu_model']}, Python {m['python']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(res: dict[str, Any]) -> None:
    print()
    print(
        f"{'endpoint':8} {'variant':19} {'req/s':>8} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'delivered':>9}"
    )
    for endpoint, rows in res["throughput"].items():
        for variant, e in rows.items():
            d = f"{e['delivered_fraction']:.0%}" if "delivered_fraction" in e else "-"
            print(
                f"{endpoint:8} {variant:19} {e['rps']:8.0f} {_fmt(e['rps_ratio_to_bare']):>6} "
                f"{e['p50_ms']:7.2f} {e['p99_ms']:7.2f} {d:>9}"
                + (f"  ERRORS {e['errors']}" if e["errors"] else "")
            )
    print()
    for endpoint, pairs in res.get("metrics_cost", {}).items():
        for c in pairs:
            print(
                f"{endpoint:8} {c['variant'] + ' / ' + c['baseline']:42} req/s {c['rps_ratio']:5.2f}  "
                f"p99 {c['p99_ratio']:5.2f}" + (f"  ERRORS {c['errors']}" if c["errors"] else "")
            )
    print()
    for t in res["targets"].values():
        print(
            f"{t['status']:7}  {t['description']:58} {_fmt(t['value']):>10}  (target {t['target']})"
            + (f"  [{t['reason']}]" if t.get("reason") else "")
        )
    print()


# --------------------------------------------------------------------------------------------------


def available_variants(wanted: list[str], notes: list[str]) -> list[str]:
    out = []
    for v in wanted:
        if v.startswith("moesif_otel"):
            try:
                from moesif_otel import MoesifMiddleware  # noqa: F401
            except Exception as exc:
                notes.append(
                    f"{v} variant skipped: `from moesif_otel import MoesifMiddleware` failed ({exc!r})"
                )
                log(notes[-1])
                continue
        out.append(v)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="moesif_otel benchmark (issue 9)")
    p.add_argument(
        "--quick", action="store_true", help="2 rounds of 5 s, smaller soak; writes results/quick.*"
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 2)")
    p.add_argument("--duration", type=int, help="seconds of measured load per run (default 10; quick 5)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up load per run (default 2; quick 1)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--wrk-threads", type=int, default=1, help="1 leaves the other core to the server")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    p.add_argument("--loop", default="uvloop", help="uvicorn --loop")
    p.add_argument("--http", default="httptools", help="uvicorn --http")
    p.add_argument("--pin", action="store_true", help="taskset: server on cpu0, wrk on cpu1")
    p.add_argument("--stream-bytes", type=int, default=GIB)
    p.add_argument("--stream-timeout", type=float, default=300)
    p.add_argument("--stream-variants", default="bare,otel_lean,moesif_otel")
    p.add_argument("--soak-requests", type=int, help="default 100000; quick 30000")
    p.add_argument("--soak-warmup", type=int, help="default 10000; quick 5000")
    p.add_argument("--soak-variants", default="moesif_otel")
    p.add_argument("--exporter-events", type=int, default=100_000)
    p.add_argument("--exporter-distinct", type=int, default=2000, help="real spans captured, then reused")
    p.add_argument("--exporter-timeout", type=float, default=120)
    p.add_argument("--skip", default="", help="comma-separated: throughput,exporter,stream,soak")
    p.add_argument("--output", help="results basename (default latest; quick: quick)")
    opts = p.parse_args(argv)
    q = opts.quick
    opts.rounds = opts.rounds or (2 if q else 5)
    opts.duration = opts.duration or (5 if q else 10)
    opts.warmup = opts.warmup or (1 if q else 2)
    opts.soak_requests = opts.soak_requests or (30_000 if q else 100_000)
    opts.soak_warmup = opts.soak_warmup or (5_000 if q else 10_000)
    opts.output = opts.output or ("quick" if q else "latest")
    return opts


def estimate_seconds(opts: argparse.Namespace, n_variants: int) -> float:
    per_run = opts.warmup + opts.duration + 1.5  # start, readiness, graceful stop, collector
    extras = 60 + opts.exporter_events / 7000 + opts.soak_requests / 1200  # exporter, streams, soak
    return opts.rounds * len(ENDPOINTS) * n_variants * per_run + extras


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk not found: run through benchmarks/run.sh (it installs the Debian package)", file=sys.stderr
        )
        return 2
    atexit.register(_kill_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    skip = {s for s in opts.skip.split(",") if s}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    raw_dir = RESULTS / "raw" / f"{stamp}-{opts.output}"
    raw_dir.mkdir(parents=True, exist_ok=True)
    scripts = write_scripts(raw_dir)
    notes: list[str] = []
    variants = available_variants([v for v in opts.variants.split(",") if v], notes)
    log(
        f"{opts.output} run: variants {variants}; {opts.rounds} rounds x {len(ENDPOINTS)} endpoints; "
        f"expected ~{estimate_seconds(opts, len(variants)) / 60:.0f} min; raw output in {raw_dir}"
    )
    started = time.monotonic()

    runs = measure_throughput(opts, variants, raw_dir, scripts, notes) if "throughput" not in skip else []
    agg = aggregate(runs, variants)

    exporter, exporter_error = None, None
    if "exporter" not in skip:
        if "moesif_otel" not in variants:
            exporter_error = "moesif_otel is not importable"
        else:
            try:
                exporter = measure_exporter(opts, raw_dir)
            except Exception as exc:  # the API may not exist yet: report, do not lose the rest
                exporter_error = f"{type(exc).__name__}: {exc}"
                log(f"exporter measurement failed: {exporter_error}")
    if exporter_error:
        notes.append(f"exporter delivery not measured: {exporter_error}")

    streams = []
    if "stream" not in skip:
        for v in [v for v in opts.stream_variants.split(",") if v in variants]:
            try:
                streams.append(measure_stream(opts, v, raw_dir))
            except Exception as exc:
                notes.append(f"stream {v} failed: {type(exc).__name__}: {exc}")
                log(notes[-1])

    soaks = []
    if "soak" not in skip:
        for v in [v for v in opts.soak_variants.split(",") if v in variants]:
            try:
                soaks.append(measure_soak(opts, v, raw_dir, scripts))
            except Exception as exc:
                notes.append(f"soak {v} failed: {type(exc).__name__}: {exc}")
                log(notes[-1])

    if opts.quick:
        notes.append("quick run: fewer and shorter rounds and a smaller soak than the documented full run")
    res = {
        "mode": "quick" if opts.quick else "full",
        "machine": machine_info(opts),
        "config": {
            k: getattr(opts, k)
            for k in (
                "rounds",
                "duration",
                "warmup",
                "connections",
                "wrk_threads",
                "loop",
                "http",
                "pin",
                "stream_bytes",
                "soak_requests",
                "soak_warmup",
                "exporter_events",
                "exporter_distinct",
            )
        },
        "post_body_bytes": len(POST_BODY),
        "variants": variants,
        "throughput": agg,
        "exporter": exporter,
        "exporter_error": exporter_error,
        "stream": streams,
        "soak": soaks,
        "metrics_cost": metrics_cost(agg),
        "targets": evaluate_targets(agg, exporter, streams, soaks),
        "runs": runs,
        "wall_seconds": time.monotonic() - started,
        "notes": notes,
    }
    RESULTS.mkdir(exist_ok=True)
    base = RESULTS / opts.output
    base.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    base.with_suffix(".md").write_text(render_markdown(res))
    if agg:
        render_chart(res, base.with_suffix(".png"))
    print_summary(res)
    log(f"done in {res['wall_seconds'] / 60:.1f} min; wrote {base}.json, .md" + (", .png" if agg else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

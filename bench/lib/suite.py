#!/usr/bin/env python3
"""The benchmark suite: runs every scenario of realtide-loadgen against a fresh
realtide per run, the fan-out and connections scenarios also against the raw-socket ceiling
and the Socket.IO 4 peer, and renders the tables of docs/BENCHMARKS.md.

Called by bench/run.sh (which builds the binaries and installs the peer). Every process it
starts is stopped on exit; load runs on loopback only and stops by itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
if not TARGET.is_absolute():
    TARGET = ROOT / TARGET
SERVER = TARGET / "release" / "realtide"
LOADGEN = TARGET / "release" / "realtide-loadgen"
PEER = ROOT / "bench" / "peers" / "socketio" / "server.js"
SECRET = "realtide-bench-secret-" + os.urandom(8).hex()

# (quick, full) parameters.
PLAN = {
    "fanout_subscribers": (2000, 10000),
    # Full: 280 000 deliveries/s offered (the target is 250 000); the latency run is at 80 % of
    # the 250 000 target (200 000/s).
    "fanout_rate": (50, 28),
    "fanout_rate_80": (40, 20),
    "fanout_duration": (3, 10),
    # 18 000: this machine caps open files at 20 000 per process (hard limit, no
    # CAP_SYS_RESOURCE), for the server and the load generator alike.
    "connections": (2000, 18000),
    "chat_users": (600, 4000),
    "chat_duration": (3, 15),
    "joins_rate": (1000, 20000),
    "private_joins_rate": (500, 2000),
    "joins_duration": (2, 5),
    "presence_members": (200, 1000),
    "db_subscribers": (200, 1000),
    "db_rate": (50, 200),
    "db_duration": (3, 10),
}


class Proc:
    """A started process whose readiness line names its address."""

    def __init__(self, argv: list[str], env: dict[str, str], ready: str, cwd: Path | None = None):
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=cwd
        )
        deadline = time.monotonic() + 30
        self.addr = None
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(ready + r" (\S+)", line)
            if m:
                self.addr = m.group(1)
                break
        if not self.addr:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not report its address")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def realtide(extra: dict[str, str] | None = None) -> Proc:
    env = {
        "JWT_SECRET": SECRET,
        "PORT": "0",
        "HOST": "127.0.0.1",
        "RUST_LOG": "warn",
        "MAX_CONNECTIONS": "0",
        "TENANT_MAX_CHANNELS_PER_CLIENT": "1000",
        **(extra or {}),
    }
    return Proc([str(SERVER), "serve"], env, "realtide listening on")


def ceiling() -> Proc:
    return Proc([str(LOADGEN), "ceiling-server", "--port", "0"], {}, "ceiling listening on")


def socketio() -> Proc:
    return Proc(["node", str(PEER)], {"PORT": "0"}, "socketio listening on", cwd=PEER.parent)


def loadgen(url: str, scenario: list[str], timeout: int = 600) -> dict:
    out = subprocess.run(
        [str(LOADGEN), "--server-url", url, "--secret", SECRET, "--max-runtime", str(timeout), *scenario],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    if out.returncode not in (0, 3):
        raise RuntimeError(f"loadgen {' '.join(scenario)} failed:\n{out.stderr[-3000:]}")
    brief = [l for l in out.stderr.splitlines() if l.startswith("scenario=")]
    print("   ", brief[-1] if brief else out.stderr.strip().splitlines()[-1:], flush=True)
    return json.loads(out.stdout)


def ws_url(proc: Proc, realtide_path: bool = True) -> str:
    return f"ws://{proc.addr}/socket/websocket" if realtide_path else f"ws://{proc.addr}/"


def run_fanout(kind: str, subs: int, rate: float, duration: float) -> dict:
    server = {"realtide": realtide, "ceiling": ceiling, "socketio": socketio}[kind]()
    try:
        protocol = "socketio" if kind == "socketio" else "realtide"
        report = loadgen(
            ws_url(server, kind != "socketio"),
            ["fanout", "--protocol", protocol, "--subscribers", str(subs), "--rate", str(rate),
             "--duration", str(duration), "--server-pid", str(server.pid)],
        )
        report["server"] = kind
        return report
    finally:
        server.stop()


def run_connections(kind: str, count: int) -> dict:
    server = {"realtide": realtide, "socketio": socketio}[kind]()
    try:
        protocol = "socketio" if kind == "socketio" else "realtide"
        report = loadgen(
            ws_url(server, kind != "socketio"),
            ["connections", "--protocol", protocol, "--count", str(count), "--server-pid", str(server.pid)],
        )
        report["server"] = kind
        return report
    finally:
        server.stop()


def cluster() -> tuple[str, str]:
    out = subprocess.run([str(ROOT / "tests" / "pg" / "cluster.sh"), "start"], capture_output=True, text=True, check=True)
    url = re.search(r"^DB_URL=(.+)$", out.stdout, re.M).group(1)
    pg_dir = re.search(r"^PG_DIR=(.+)$", out.stdout, re.M).group(1)
    return url, pg_dir


def psql(url: str, sql: str) -> None:
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    psql_bin = str(bindir[-1] / "psql") if bindir else "psql"
    subprocess.run([psql_bin, url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "suite.json"))
    ap.add_argument("--no-peer", action="store_true", help="skip the Socket.IO peer (no node)")
    args = ap.parse_args()
    q = 0 if args.quick else 1
    p = {k: v[q] for k, v in PLAN.items()}
    runs: dict[str, object] = {}
    started = time.monotonic()

    print("== fan-out: ceiling, realtide, socket.io", flush=True)
    for kind in ["ceiling", "realtide"] + ([] if args.no_peer else ["socketio"]):
        runs[f"fanout_{kind}"] = run_fanout(kind, p["fanout_subscribers"], p["fanout_rate"], p["fanout_duration"])
    print("== fan-out at 80% of the rate (latency)", flush=True)
    runs["fanout_realtide_80"] = run_fanout("realtide", p["fanout_subscribers"], p["fanout_rate_80"], p["fanout_duration"])

    print("== chat", flush=True)
    server = realtide()
    try:
        runs["chat"] = loadgen(ws_url(server), ["chat", "--users", str(p["chat_users"]), "--duration",
                                                str(p["chat_duration"]), "--server-pid", str(server.pid)])
    finally:
        server.stop()

    print("== connections", flush=True)
    for kind in ["realtide"] + ([] if args.no_peer else ["socketio"]):
        runs[f"connections_{kind}"] = run_connections(kind, p["connections"])

    print("== presence", flush=True)
    server = realtide({"CLIENT_PRESENCE_MAX_CALLS": "0"})
    try:
        runs["presence"] = loadgen(ws_url(server), ["presence", "--members", str(p["presence_members"]),
                                                    "--server-pid", str(server.pid)])
    finally:
        server.stop()

    print("== joins (public)", flush=True)
    server = realtide()
    try:
        runs["joins_public"] = loadgen(ws_url(server), ["joins", "--rate", str(p["joins_rate"]), "--duration",
                                                        str(p["joins_duration"]), "--server-pid", str(server.pid)])
    finally:
        server.stop()

    print("== database: private joins and db-broadcast", flush=True)
    url, pg_dir = cluster()
    try:
        server = realtide({"DB_URL": url, "SLOT_NAME": "bench"})
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    psql(url, "select 1 from realtime.messages limit 0")
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.2)
            psql(url, "create policy bench_read on realtime.messages for select to authenticated "
                      "using (realtime.topic() like 'join-%' or realtime.topic() like 'dbb-%')")
            runs["joins_private"] = loadgen(ws_url(server), ["joins", "--private", "--rate", str(p["private_joins_rate"]),
                                                             "--duration", str(p["joins_duration"]),
                                                             "--server-pid", str(server.pid)])
            runs["db_broadcast"] = loadgen(ws_url(server), ["db-broadcast", "--db-url", url, "--private",
                                                            "--subscribers", str(p["db_subscribers"]),
                                                            "--rate", str(p["db_rate"]), "--duration", str(p["db_duration"]),
                                                            "--server-pid", str(server.pid)])
        finally:
            server.stop()
    finally:
        subprocess.run([str(ROOT / "tests" / "pg" / "cluster.sh"), "stop", pg_dir], capture_output=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {
        "mode": "quick" if args.quick else "full",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit,
        "machine": runs.get("fanout_realtide", {}).get("machine"),
        "os": platform.platform(),
        "seconds": round(time.monotonic() - started, 1),
        "runs": runs,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

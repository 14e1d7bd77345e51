#!/usr/bin/env python3
"""The cluster benchmark: the same load against one realtide and against a cluster of NODES
realtide nodes joined through a NATS server (JetStream, loopback, temporary store).

Called by bench/cluster.sh (which builds the release binaries). Runs:
  - broadcast, single node: `realtide-loadgen cluster` with SUBSCRIBERS subscribers on one
    topic and one publisher, at RATE messages/s (full) and RATE/2 (half);
  - broadcast, cluster: the same subscribers spread round robin over the nodes, the publisher
    on node 0; latency of the subscribers on the publisher's node and on the others, the
    inter-node messages and bytes per broadcast (deltas of realtide_cluster_*_total in every
    node's /metrics), CPU of every node (and of nats-server) from /proc;
  - postgres_changes with RLS (unless --no-pg): PG_USERS subscribers in PG_TEAMS teams at
    PG_RATE inserts/s, against one node and spread over the cluster (one node consumes the
    slot, every node checks RLS for its own subscribers): end-to-end p95, per-node deliveries
    and CPU, and the per-node /metrics deltas.
Every process it starts is stopped on exit; every wait is bounded; load runs on loopback only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
if not TARGET.is_absolute():
    TARGET = ROOT / TARGET
SERVER = Path(os.environ.get("SERVER_BIN", TARGET / "release" / "realtide"))
LOADGEN = TARGET / "release" / "realtide-loadgen"
SECRET = "realtide-bench-secret-" + os.urandom(8).hex()
CLK_TCK = os.sysconf("SC_CLK_TCK")

# (quick, full) defaults; each can be overridden by the environment variable of the same
# name in upper case (e.g. SUBSCRIBERS=5000).
PLAN = {
    "nodes": (3, 3),
    "subscribers": (2000, 10000),
    # Full: 28 msgs/s to 10 000 subscribers = 280 000 deliveries/s offered, as the suite's
    # fan-out; the half phase runs at 14 msgs/s.
    "rate": (20, 28),
    "duration": (3, 10),
    "drain": (5, 10),
    "pg_users": (300, 1000),
    "pg_teams": (10, 10),
    "pg_rate": (50, 150),
    "pg_duration": (3, 10),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, in seconds (0 when it is gone)."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def peak_rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Proc:
    """A started process with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name = name
        self.log = log
        self.handle = open(log, "wb")
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=self.handle, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_line(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log.read_text(errors="replace"), re.M)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{self.name}: no line matching {pattern!r} within {timeout} s:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.handle.close()

    def warnings(self) -> list[str]:
        return [l for l in self.log.read_text(errors="replace").splitlines() if " WARN " in l or " ERROR " in l][:20]


class Bench:
    def __init__(self, work: Path):
        self.work = work
        self.procs: list[Proc] = []
        self.pg_dir: str | None = None
        self.db_url: str | None = None

    def close(self) -> None:
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception as e:  # keep stopping the others
                print(f"stopping {p.name}: {e}", file=sys.stderr)
        self.procs.clear()
        if self.pg_dir:
            subprocess.run([str(ROOT / "tests" / "pg" / "cluster.sh"), "stop", self.pg_dir], capture_output=True, timeout=60)
            self.pg_dir = None

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        p = Proc(name, argv, env, self.work / f"{name}.log")
        self.procs.append(p)
        return p

    def stop(self, p: Proc) -> None:
        p.stop()
        if p in self.procs:
            self.procs.remove(p)

    # ---- NATS
    def nats(self) -> tuple[Proc, str]:
        binary = os.environ.get("NATS_SERVER") or shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(binary).exists():
            raise RuntimeError("nats-server not found (NATS_SERVER, PATH, /usr/sbin): apt-get install nats-server")
        port, monitor = free_port(), free_port()
        store = self.work / "jetstream"
        store.mkdir(exist_ok=True)
        # Run it under its own name, so that a `pkill -x nats-server` elsewhere on the machine
        # does not stop this run's server.
        alias = self.work / "realtide-bench-nats"
        alias.symlink_to(Path(binary).resolve())
        p = self.start("nats", [str(alias), "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)], {})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true", timeout=2) as r:
                    if r.status == 200:
                        return p, f"nats://127.0.0.1:{port}"
            except OSError:
                pass
            if p.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("nats-server did not become healthy:\n" + p.log.read_text(errors="replace")[-2000:])

    # ---- PostgreSQL
    def postgres(self) -> str:
        if self.db_url:
            return self.db_url
        out = subprocess.run([str(ROOT / "tests" / "pg" / "cluster.sh"), "start"], capture_output=True, text=True,
                             check=True, timeout=120)
        self.db_url = re.search(r"^DB_URL=(.+)$", out.stdout, re.M).group(1)
        self.pg_dir = re.search(r"^PG_DIR=(.+)$", out.stdout, re.M).group(1)
        return self.db_url

    def drop_slot(self, slot: str) -> None:
        if self.db_url:
            subprocess.run(["psql", "-X", "-q", self.db_url, "-c",
                            f"select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                            f"where slot_name = '{slot}' and not active"],
                           capture_output=True, timeout=30)

    # ---- realtide
    def realtide(self, name: str, extra: dict[str, str]) -> tuple[Proc, str]:
        env = {
            "JWT_SECRET": SECRET,
            "PORT": "0",
            "HOST": "127.0.0.1",
            "RUST_LOG": os.environ.get("SERVER_RUST_LOG", "warn"),
            "MAX_CONNECTIONS": "0",
            "TENANT_MAX_CHANNELS_PER_CLIENT": "1000",
            "CHANGES_DIR": str(self.work / f"changes-{name}"),
            **extra,
        }
        p = self.start(name, [str(SERVER), "serve"], env)
        m = p.wait_for_line(r"^realtide listening on (\S+)$")
        return p, m.group(1)

    def nodes(self, count: int, extra: dict[str, str], nats_url: str | None) -> list[tuple[Proc, str]]:
        out = []
        for k in range(count):
            env = dict(extra)
            if nats_url:
                env.update({"CLUSTER_NATS_URL": nats_url, "CLUSTER_NODE_NAME": f"bench-{k + 1}"})
            out.append(self.realtide(f"node-{k + 1}" if nats_url else "single", env))
        return out


def health(addr: str) -> dict:
    try:
        with urllib.request.urlopen(f"http://{addr}/api/health", timeout=3) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503 degraded still has a body
        try:
            return json.loads(e.read())
        except ValueError:
            return {}
    except (OSError, ValueError):
        return {}


def wait_cluster(addrs: list[str], names: list[str], need_slot: bool, timeout: float = 30) -> dict:
    """Waits until every node sees every node (and, with a database, a slot holder)."""
    start = time.monotonic()
    views: list[dict] = []
    while time.monotonic() - start < timeout:
        views = [health(a).get("cluster") or {} for a in addrs]
        ok = all(sorted(v.get("nodes") or []) == sorted(names) and v.get("nats") == "connected" for v in views)
        if ok and need_slot:
            ok = all(v.get("slot_holder") for v in views)
        if ok:
            return {"ready": True, "seconds": round(time.monotonic() - start, 2), "views": views}
        if not any(views) and time.monotonic() - start > 5:
            # No "cluster" in /api/health: this build has no cluster mode.
            return {"ready": False, "no_cluster_mode": True, "views": views}
        time.sleep(0.2)
    return {"ready": False, "views": views}


def metrics(addr: str) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    keep = ("realtide_cluster_", "realtide_database_events_total", "realtide_events_out_total",
            "realtide_authorization_seconds_count", "realtide_bytes_out_total")
    return {k: round(v - before.get(k, 0.0) if "_total" in k or k.endswith("_count") else v, 3)
            for k, v in after.items() if k.startswith(keep)}


def loadgen(args: list[str], timeout: int) -> dict:
    out = subprocess.run([str(LOADGEN), "--secret", SECRET, "--max-runtime", str(timeout), *args],
                         capture_output=True, text=True, timeout=timeout + 30)
    if out.returncode not in (0, 3):
        raise RuntimeError(f"loadgen {' '.join(args[:3])} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    lines = out.stderr.strip().splitlines()
    print("   ", lines[-1] if lines else "(no output)", flush=True)
    report = json.loads(out.stdout)
    report["loadgen_exit"] = out.returncode
    return report


def ws(addr: str) -> str:
    return f"ws://{addr}/socket/websocket"


def broadcast_run(bench: Bench, label: str, count: int, nats: tuple[Proc, str] | None, p: dict) -> dict:
    nodes = bench.nodes(count, {}, nats[1] if nats else None)
    try:
        cluster_view = None
        if nats:
            cluster_view = wait_cluster([a for _, a in nodes], [f"bench-{k + 1}" for k in range(count)], False)
            if cluster_view.get("no_cluster_mode"):
                print("   skipped: /api/health has no \"cluster\" (a build without cluster mode)", file=sys.stderr)
                return {"skipped": "no cluster mode in this build", "cluster_view": cluster_view}
            if not cluster_view["ready"]:
                print(f"   cluster not formed within 30 s: {cluster_view['views']}", file=sys.stderr)
        args = ["--output", "-", "--label", label, "cluster",
                "--nodes", ",".join(ws(a) for _, a in nodes),
                "--subscribers", str(p["subscribers"]), "--rate", str(p["rate"]),
                "--duration", str(p["duration"]), "--drain", str(p["drain"]),
                "--server-pids", ",".join(str(proc.pid) for proc, _ in nodes)]
        if nats:
            args += ["--aux-pids", str(nats[0].pid)]
        report = loadgen(args, 600)
        report["cluster_view"] = cluster_view
        report["server_log"] = {proc.name: proc.warnings() for proc, _ in nodes}
        return report
    finally:
        for proc, _ in nodes:
            bench.stop(proc)


def pg_run(bench: Bench, label: str, count: int, nats: tuple[Proc, str] | None, p: dict) -> dict:
    db_url = bench.postgres()
    slot = f"bench_{label.replace('-', '_')}"
    nodes = bench.nodes(count, {"DB_URL": db_url, "SLOT_NAME": slot, "DB_POOL_SIZE": "4"}, nats[1] if nats else None)
    try:
        addrs = [a for _, a in nodes]
        cluster_view = None
        if nats:
            cluster_view = wait_cluster(addrs, [f"bench-{k + 1}" for k in range(count)], True)
            if cluster_view.get("no_cluster_mode"):
                print("   skipped: /api/health has no \"cluster\" (a build without cluster mode)", file=sys.stderr)
                return {"skipped": "no cluster mode in this build", "cluster_view": cluster_view}
            if not cluster_view["ready"]:
                print(f"   cluster not formed within 30 s: {cluster_view['views']}", file=sys.stderr)
        else:
            time.sleep(1)  # the replication task attaches to the slot
        before = [metrics(a) for a in addrs]
        cpu0 = [cpu_seconds(proc.pid) for proc, _ in nodes]
        aux0 = cpu_seconds(nats[0].pid) if nats else None
        report = loadgen(["--output", "-", "--label", label, "postgres-changes",
                          "--nodes", ",".join(ws(a) for a in addrs),
                          "--db-url", db_url, "--users", str(p["pg_users"]), "--teams", str(p["pg_teams"]),
                          "--rate", str(p["pg_rate"]), "--duration", str(p["pg_duration"]),
                          "--drain", str(p["drain"]), "--rls", "on"], 600)
        cpu1 = [cpu_seconds(proc.pid) for proc, _ in nodes]
        after = [metrics(a) for a in addrs]
        delivered = (report.get("deliveries") or {}).get("delivered") or 0
        per_node_cpu = [round(b - a, 3) for a, b in zip(cpu0, cpu1)]
        report["server"] = {
            "cpu_s": round(sum(per_node_cpu), 3),
            "cpu_s_per_node": per_node_cpu,
            "cpu_us_per_delivery": round(sum(per_node_cpu) * 1e6 / delivered, 3) if delivered else None,
            "peak_rss_kb_per_node": [peak_rss_kb(proc.pid) for proc, _ in nodes],
            "metrics_delta_per_node": [delta(b, a) for b, a in zip(before, after)],
            "nats_cpu_s": round(cpu_seconds(nats[0].pid) - aux0, 3) if nats else None,
        }
        report["cluster_view"] = cluster_view
        report["server_log"] = {proc.name: proc.warnings() for proc, _ in nodes}
        return report
    finally:
        for proc, _ in nodes:
            bench.stop(proc)
        bench.drop_slot(slot)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-pg", action="store_true", help="skip the postgres_changes runs")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    q = 0 if args.quick else 1
    p = {k: type(v[q])(os.environ.get(k.upper(), v[q])) for k, v in PLAN.items()}
    output = Path(args.output or ROOT / "bench" / "results" / ("cluster-quick.json" if args.quick else "cluster.json"))
    started = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, dict] = {}
    work = Path(tempfile.mkdtemp(prefix="realtide-cluster-bench."))
    bench = Bench(work)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        nats = bench.nats()

        def nats_alive() -> None:
            if nats[0].proc.poll() is not None:
                raise RuntimeError(f"nats-server exited ({nats[0].proc.returncode}): {nats[0].log.read_text(errors='replace')[-500:]}")

        print(f"== nats-server {nats[1]} (JetStream in {work / 'jetstream'})", flush=True)
        print(f"== broadcast, single node: {p['subscribers']} subscribers, {p['rate']} and {p['rate'] / 2} msgs/s", flush=True)
        runs["broadcast_single"] = broadcast_run(bench, "broadcast-single", 1, None, p)
        print(f"== broadcast, {p['nodes']} nodes", flush=True)
        nats_alive()
        runs["broadcast_cluster"] = broadcast_run(bench, "broadcast-cluster", p["nodes"], nats, p)
        if not args.no_pg:
            print(f"== postgres_changes (RLS), single node: {p['pg_users']} users, {p['pg_rate']} inserts/s", flush=True)
            runs["pg_single"] = pg_run(bench, "pg-single", 1, None, p)
            nats_alive()
            print(f"== postgres_changes (RLS), {p['nodes']} nodes", flush=True)
            runs["pg_cluster"] = pg_run(bench, "pg-cluster", p["nodes"], nats, p)
    finally:
        bench.close()
        logs = work
        if os.environ.get("KEEP_LOGS"):
            print(f"logs kept in {logs}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    nats_version = subprocess.run([os.environ.get("NATS_SERVER") or shutil.which("nats-server") or "/usr/sbin/nats-server",
                                   "--version"], capture_output=True, text=True).stdout.strip()
    result = {
        "benchmark": "cluster",
        "mode": "quick" if args.quick else "full",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit + ("+dirty" if dirty else ""),
        "machine": runs.get("broadcast_single", {}).get("machine"),
        "os": platform.platform(),
        "nats": nats_version,
        "params": p,
        "seconds": round(time.monotonic() - started, 1),
        # 1, 5 and 15 minute load averages: other work on the machine shares the cores.
        "loadavg_before": load_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

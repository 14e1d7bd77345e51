#!/usr/bin/env python3
"""The tenants benchmark: one realtide serving TENANTS tenants (one database each, in one
PostgreSQL), against a single-project realtide in the same run.

Called by bench/tenants.sh (which builds the release binaries). Measures:
  - memory: the server's RSS with TENANTS tenants configured and none running, then after
    every tenant started (pools, replication stream, journal, registry) and went idle (no
    socket): the difference per tenant;
  - start latency: for each tenant, the first request that names it (`GET /t/<id>/api/ping`,
    which starts it) and the time until its replication streams (`/t/<id>/api/health` 200);
  - fan-out and joins: `realtide-loadgen fanout` and `joins` against one tenant of the
    many-tenant server (through `/t/<id>`) and against a single-project server, same shape.
Every process it starts is stopped on exit; every wait is bounded; load runs on loopback only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import ROOT, SECRET, Bench, loadgen  # noqa: E402

# (quick, full) defaults; each can be overridden by the environment variable of the same
# name in upper case.
PLAN = {
    "tenants": (10, 100),
    "subscribers": (2000, 10000),
    "rate": (20, 28),
    "duration": (3, 10),
    "joins_rate": (2000, 20000),
    "joins_duration": (2, 5),
}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    quick = 0 if args.quick else 1
    p = {k: type(v[quick])(os.environ.get(k.upper(), v[quick])) for k, v in PLAN.items()}
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="realtide-bench-tenants-"))
    # Every tenant holds a replication connection and its pools.
    os.environ["PG_EXTRA_OPTS"] = (
        f"-c max_connections={p['tenants'] * 8 + 100} -c max_replication_slots={p['tenants'] + 20} "
        f"-c max_wal_senders={p['tenants'] + 20}"
    )
    bench = Bench(work)
    results: dict = {"params": p}
    try:
        db_url = bench.postgres()
        base = db_url.rsplit("/", 1)[0]
        names = [f"t{k:03}" for k in range(1, p["tenants"] + 1)]
        print(f"== {len(names)} databases", flush=True)
        for name in names:
            subprocess.run(["psql", "-X", "-q", db_url, "-c", f"create database {name}"], check=True,
                           capture_output=True, timeout=60)
        file = work / "tenants.toml"
        file.write_text("".join(
            f'[[tenant]]\nexternal_id = "{n}"\njwt_secret = "{SECRET}"\ndb_url = "{base}/{n}"\n\n' for n in names))

        print("== many tenants: memory and start latency", flush=True)
        many, addr = bench.realtide("tenants", {"TENANTS_FILE": str(file), "TENANT_IDLE_STOP_SECS": "3600",
                                                "DB_POOL_SIZE": "4"})
        time.sleep(1)
        rss_none = rss_kb(many.pid)
        first, ready = [], []
        for name in names:
            t0 = time.monotonic()
            status, body = get(f"http://{addr}/t/{name}/api/ping")
            if status != 200:
                raise RuntimeError(f"ping {name}: {status} {body[:200]!r}")
            first.append((time.monotonic() - t0) * 1000)
            deadline = time.monotonic() + 60
            while True:
                status, _ = get(f"http://{addr}/t/{name}/api/health")
                if status == 200:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tenant {name} not ready within 60 s")
                time.sleep(0.01)
            ready.append((time.monotonic() - t0) * 1000)
        time.sleep(2)
        rss_all = rss_kb(many.pid)
        status, body = get(f"http://{addr}/api/health")
        running = len(json.loads(body)["tenants"]["running"])
        results["memory"] = {
            "rss_kb_none_running": rss_none,
            "rss_kb_all_running_idle": rss_all,
            "running": running,
            "kb_per_idle_tenant": round((rss_all - rss_none) / len(names), 1),
        }
        results["start_ms"] = {
            "first_answer_p50": round(percentile(first, 0.5), 2),
            "first_answer_p99": round(percentile(first, 0.99), 2),
            "first_answer_max": round(max(first), 2),
            "ready_p50": round(percentile(ready, 0.5), 2),
            "ready_p99": round(percentile(ready, 0.99), 2),
            "ready_max": round(max(ready), 2),
        }
        print("   ", results["memory"], results["start_ms"], flush=True)

        fanout = ["fanout", "--subscribers", str(p["subscribers"]), "--rate", str(p["rate"]),
                  "--duration", str(p["duration"])]
        joins = ["joins", "--rate", str(p["joins_rate"]), "--duration", str(p["joins_duration"])]
        print("== fan-out and joins through one tenant of the many", flush=True)
        tenant_url = f"ws://{addr}/t/{names[0]}/socket/websocket"
        results["fanout_tenant"] = loadgen(["--server-url", tenant_url, *fanout, "--server-pid", str(many.pid)], 600)
        results["joins_tenant"] = loadgen(["--server-url", tenant_url, *joins], 300)
        bench.stop(many)

        print("== the same through a single-project server", flush=True)
        single, addr = bench.realtide("single", {})
        single_url = f"ws://{addr}/socket/websocket"
        results["fanout_single"] = loadgen(["--server-url", single_url, *fanout, "--server-pid", str(single.pid)], 600)
        results["joins_single"] = loadgen(["--server-url", single_url, *joins], 300)
        bench.stop(single)
    finally:
        bench.close()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    doc = {
        "benchmark": "tenants",
        "mode": "quick" if args.quick else "full",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "loadavg_before": os.getloadavg()[0],
        "seconds": round(time.monotonic() - started, 1),
        "runs": results,
    }
    Path(args.output).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.output} ({doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

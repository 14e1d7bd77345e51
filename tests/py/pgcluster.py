"""A throwaway PostgreSQL for the postgres_changes tests: tests/pg/cluster.sh
starts it (logical WAL, free port, Supabase-like roles), psql runs SQL
against it. One cluster per test module; `stop()` removes it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO_ROOT / "tests" / "pg" / "cluster.sh"


def psql_bin() -> str:
    """psql next to pg_ctl (as cluster.sh finds it), else the newest
    /usr/lib/postgresql/N/bin, else PATH."""
    ctl = shutil.which("pg_ctl")
    if ctl:
        candidate = Path(os.path.realpath(ctl)).parent / "psql"
        if candidate.exists():
            return str(candidate)
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        versions = sorted(
            (d for d in base.iterdir() if (d / "bin" / "psql").exists()),
            key=lambda d: int(d.name) if d.name.isdigit() else 0,
            reverse=True,
        )
        if versions:
            return str(versions[0] / "bin" / "psql")
    return "psql"


class Cluster:
    def __init__(self) -> None:
        try:
            out = subprocess.run(
                [str(CLUSTER_SH), "start"], check=True, capture_output=True, text=True, timeout=60
            ).stdout
        except subprocess.CalledProcessError as e:
            raise RuntimeError(
                f"tests/pg/cluster.sh start failed (PostgreSQL with wal_level=logical is required): {e.stderr}"
            ) from e
        url = re.search(r"^DB_URL=(.+)$", out, re.M)
        pg_dir = re.search(r"^PG_DIR=(.+)$", out, re.M)
        if not url or not pg_dir:
            raise RuntimeError(f"unexpected cluster.sh output:\n{out}")
        self.db_url = url.group(1)
        self.dir = pg_dir.group(1)
        self.psql = psql_bin()

    def sql(self, text: str) -> str:
        """Runs `text` through psql, statement by statement in autocommit
        (each statement outside BEGIN is its own transaction); returns stdout
        unaligned and tuples-only."""
        r = subprocess.run(
            [self.psql, self.db_url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}\nSQL:\n{text}")
        return r.stdout

    def json(self, query: str) -> Any:
        out = self.sql(query).strip()
        return None if out == "" else json.loads(out)

    def wait_for_slot(self, slot: str, timeout: float = 20) -> None:
        """Wait until a walsender streams `slot` (the server's replication runs)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.sql(f"select active from pg_replication_slots where slot_name = '{slot}'").strip() == "t":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"replication slot {slot} not active after {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run([str(CLUSTER_SH), "stop", self.dir], check=False, capture_output=True, timeout=60)


def slot_name(prefix: str = "realtide_py") -> str:
    return f"{prefix}_{os.getpid()}_{os.urandom(4).hex()}"

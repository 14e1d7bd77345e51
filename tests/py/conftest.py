"""Shared fixtures: start the realtide binary on a free port, sign tokens,
open real `realtime` clients, and poll for conditions."""

from __future__ import annotations

import asyncio
import contextlib
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from realtime import AsyncRealtimeClient

REPO_ROOT = Path(__file__).resolve().parents[2]
JWT_SECRET = "realtide-e2e-test-secret-with-enough-bytes-0123456789"
WAIT_S = float(os.environ.get("E2E_WAIT_S", "10"))


def realtide_bin() -> str:
    if os.environ.get("REALTIDE_BIN"):
        return os.environ["REALTIDE_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    if not target.is_absolute():
        target = REPO_ROOT / target
    return str(target / "debug" / "realtide")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_token(claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64url(sig)}"


def make_token(ttl_s: int = 3600, role: str = "anon", **extra: Any) -> str:
    now = int(time.time())
    return sign_token({"role": role, "exp": now + ttl_s, "iat": now, **extra})


class Server:
    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        binary = realtide_bin()
        if not os.path.exists(binary):
            raise RuntimeError(
                f"realtide binary not found at {binary}: run `cargo build -p realtide-server` or set REALTIDE_BIN"
            )
        # Database settings come only from `extra_env`: a DB_URL in the caller's
        # environment must not turn the database-less tests into database ones.
        inherited = {k: v for k, v in os.environ.items() if k not in ("DB_URL", "SLOT_NAME", "PUBLICATION")}
        env = {
            **inherited,
            "PORT": "0",
            "HOST": "127.0.0.1",
            "JWT_SECRET": JWT_SECRET,
            "CHANNEL_ERROR_BACKOFF_MS": "100",
            "CONNECT_ERROR_BACKOFF_MS": "100",
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
            **(extra_env or {}),
        }
        # The change journal of a server with a database lives in a directory of that
        # database (its URL names a test cluster's unique port): a restarted server finds its
        # journal and parallel tests never share one.
        if env.get("DB_URL") and not (extra_env or {}).get("CHANGES_DIR"):
            digest = hashlib.sha1(env["DB_URL"].encode()).hexdigest()[:16]
            env["CHANGES_DIR"] = os.path.join(tempfile.gettempdir(), "realtide-test-changes", digest)
        self.proc = subprocess.Popen(
            [binary, "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        ready = threading.Event()
        self.port: int | None = None

        def read_stdout() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.stdout.append(line)
                m = re.fullmatch(r"realtide listening on 127\.0\.0\.1:(\d+)", line.strip())
                if m and self.port is None:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        def read_stderr() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                del self.stderr[:-300]

        threading.Thread(target=read_stdout, daemon=True).start()
        threading.Thread(target=read_stderr, daemon=True).start()
        ready.wait(20)
        if self.port is None:
            self.stop()
            raise RuntimeError(
                "realtide did not print its readiness line within 20 s\n"
                f"stdout:\n{''.join(self.stdout)}\nstderr:\n{''.join(self.stderr)}"
            )

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/realtime/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


async def wait_for(cond: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll `cond` until truthy (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def open_clients(server: Server):
    """A factory of connected AsyncRealtimeClients of `server` (token optional); every client
    it opened is closed on exit."""
    opened: list[AsyncRealtimeClient] = []

    async def make(token: str | None = None) -> AsyncRealtimeClient:
        c = AsyncRealtimeClient(server.ws_url, token or make_token(), auto_reconnect=False)
        await c.connect()
        opened.append(c)
        return c

    try:
        yield make
    finally:
        for c in opened:
            try:
                await c.close()
            except Exception:
                pass


@pytest.fixture
async def clients(server):
    """Factory for connected AsyncRealtimeClients; all are closed afterwards."""
    async with open_clients(server) as make:
        yield make


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


class SubscribeRecorder:
    """Records every subscribe callback call: [(status, str(error))]."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, status, err) -> None:
        self.calls.append((str(getattr(status, "value", status)), None if err is None else str(err)))

    def statuses(self) -> list[str]:
        return [s for s, _ in self.calls]

"""The files in deploy/: each parses, names only settings the real binary
knows (from `realtide serve --help`), and points its health checks at routes the real binary
answers with 200."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, Server, realtide_bin

DEPLOY = REPO_ROOT / "deploy"


@pytest.fixture(scope="module")
def settings() -> set[str]:
    """Every environment variable `realtide serve` reads."""
    out = subprocess.run([realtide_bin(), "serve", "--help"], capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"\[env: ([A-Z0-9_]+)", out))
    assert {"PORT", "JWT_SECRET", "DB_URL", "DB_HOST", "SLOT_NAME"} <= names, names
    return names


@pytest.fixture(scope="module")
def live():
    """The real binary, to check that probe paths answer 200."""
    server = Server()
    yield server
    server.stop()


def get_status(server: Server, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
        return response.status


def route_of(url: str) -> str:
    m = re.match(r"https?://[^/]+(/[^\s\"']*)", url)
    assert m, url
    return m.group(1)


def test_dockerfile(settings, live):
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.strip().startswith("#")]
    stages = [l for l in lines if l.upper().startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage"
    build_stage = stages[0].split()[-1]
    assert any(l.startswith(f"COPY --from={build_stage} ") for l in lines), "runtime copies the built binary"
    env_names = set()
    for line in lines:
        if line.startswith("ENV "):
            env_names |= {part.split("=", 1)[0] for part in shlex.split(line[4:])}
    assert env_names and env_names <= settings, env_names - settings
    port = next(part.split("=", 1)[1] for l in lines if l.startswith("ENV ") for part in shlex.split(l[4:]) if part.startswith("PORT="))
    assert f"EXPOSE {port}" in lines
    healthcheck = next(l for l in lines if l.startswith("HEALTHCHECK "))
    url = re.search(r"http://[^\s\"]+", healthcheck)
    assert url, healthcheck
    assert get_status(live, route_of(url.group(0).replace("${PORT}", port))) == 200
    assert any(l == "STOPSIGNAL SIGTERM" for l in lines)
    # The files the build copies exist.
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for source in shlex.split(line)[1:-1]:
                assert (REPO_ROOT / source).exists(), source


def test_compose(settings, live):
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    services = compose["services"]
    db, realtide = services["db"], services["realtide"]
    command = " ".join(db["command"])
    assert "wal_level=logical" in command
    for volume in db.get("volumes", []):
        source = volume.split(":", 1)[0]
        if source.startswith("."):
            assert (DEPLOY / source).resolve().exists(), source
    build = realtide["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve().exists()
    assert realtide["depends_on"]["db"]["condition"] == "service_healthy"
    env = set(realtide["environment"])
    assert env <= settings, env - settings
    url = next(part for part in realtide["healthcheck"]["test"] if part.startswith("http"))
    assert get_status(live, route_of(url)) == 200
    assert realtide["stop_signal"] == "SIGTERM"
    container_port = realtide["ports"][0].split(":")[-1]
    assert container_port == str(realtide["environment"]["PORT"])


def test_kubernetes(settings, live):
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "realtide.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"ConfigMap", "Secret", "Deployment", "Service"}
    config_keys = set(by_kind["ConfigMap"]["data"])
    secret_keys = set(by_kind["Secret"]["stringData"])
    assert config_keys | secret_keys <= settings, (config_keys | secret_keys) - settings
    assert "JWT_SECRET" in secret_keys
    pod = by_kind["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert refs == {by_kind["ConfigMap"]["metadata"]["name"], by_kind["Secret"]["metadata"]["name"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert str(ports["http"]) == by_kind["ConfigMap"]["data"]["PORT"]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ports
        assert get_status(live, get["path"]) == 200, probe
    assert pod["spec"]["terminationGracePeriodSeconds"] > 10, "longer than the 10 s drain"
    service = by_kind["Service"]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert all(p["targetPort"] in ports for p in service["ports"])


def test_systemd_unit(settings):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((DEPLOY / "realtide.service").read_text())
    service = parser["Service"]
    exec_start = shlex.split(service["ExecStart"])
    assert Path(exec_start[0]).name == "realtide" and exec_start[1] == "serve", exec_start
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 10
    for assignment in shlex.split(service.get("Environment", "")):
        assert assignment.split("=", 1)[0] in settings
    assert parser["Install"]["WantedBy"] == "multi-user.target"

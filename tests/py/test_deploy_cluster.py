"""The cluster files in deploy/ (compose.cluster.yml, nginx.cluster.conf,
k8s/realtide-cluster.yaml), checked like test_deploy.py checks the single-node ones: each
parses, names only settings the real binary knows (`realtide serve --help`), points its probes
at routes the real binary answers with 200, and the pieces line up: NATS runs JetStream with its
store on a volume, CLUSTER_NATS_URL names the NATS service and its client port, every node has
its own CLUSTER_NODE_NAME and its own CHANGES_DIR volume while sharing the database, slot and
JWT secret, and the load balancer passes WebSocket upgrades to every node's port."""

from __future__ import annotations

import re
import subprocess
from urllib.parse import urlparse

import pytest
import yaml

from conftest import REPO_ROOT, realtide_bin
from test_deploy import get_status, live, route_of, settings  # noqa: F401 (fixtures)

DEPLOY = REPO_ROOT / "deploy"
CLUSTER_SETTINGS = {"CLUSTER_NATS_URL", "CLUSTER_NODE_NAME"}
SHARED = {"JWT_SECRET", "SLOT_NAME", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "PUBLICATION", "PORT"}


def nats_conf(text: str) -> dict[str, str]:
    """The top-level settings of a NATS config file, and `jetstream.<key>` for its jetstream
    block (`jetstream: enabled` → {"jetstream": "enabled"})."""
    out: dict[str, str] = {}
    block: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([\w.]+)\s*[:=]?\s*\{$", line)
        if m:
            block.append(m.group(1))
            out.setdefault(m.group(1), "block")
            continue
        if line == "}":
            block.pop()
            continue
        m = re.match(r"^([\w.]+)\s*[:=]\s*(.+?)\s*,?$", line)
        assert m, f"cannot read NATS config line {raw!r}"
        out[".".join([*block, m.group(1)])] = m.group(2).strip("\"'")
    assert not block, "unbalanced braces"
    return out


def size_bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]?B?)", value.upper())
    assert m, value
    return int(m.group(1)) * {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}[m.group(2)]


def nats_settings(args: list[str], config_text) -> dict:
    """JetStream on or off, store directory, client and monitoring ports and max payload of a
    nats-server started with `args` (flags, or `-c <file>` whose text `config_text(path)`
    returns; flags win)."""
    flags = nats_flags(args)
    conf = nats_conf(config_text(flags.get("-c") or flags.get("--config"))) if ("-c" in flags or "--config" in flags) else {}
    jetstream = "-js" in flags or "--jetstream" in flags or conf.get("jetstream") not in (None, "false", "disabled")
    return {
        "jetstream": jetstream,
        "store_dir": flags.get("-sd") or flags.get("--store_dir") or conf.get("jetstream.store_dir"),
        "port": int(flags.get("-p") or flags.get("--port") or conf.get("port") or 4222),
        "monitor": int(flags.get("-m") or flags.get("--http_port") or conf.get("http_port") or conf.get("monitor_port") or 0),
        "max_payload": size_bytes(conf.get("max_payload", "1MB")),
    }


@pytest.fixture(scope="module")
def largest_broadcast() -> int:
    """Bytes of the largest payload the binary accepts by default (TENANT_MAX_PAYLOAD_SIZE_IN_KB:
    value × 1000 + 500)."""
    out = subprocess.run([realtide_bin(), "serve", "--help"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"\[env: TENANT_MAX_PAYLOAD_SIZE_IN_KB=[^\]]*\] \[default: (\d+)\]", out)
    assert m, "TENANT_MAX_PAYLOAD_SIZE_IN_KB and its default in --help"
    return int(m.group(1)) * 1000 + 500


def nats_flags(args: list[str]) -> dict[str, str | None]:
    """`-js -sd /data -p 4222` → {"-js": None, "-sd": "/data", "-p": "4222"}."""
    flags: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        flag = args[i]
        if i + 1 < len(args) and not args[i + 1].startswith("-"):
            flags[flag] = args[i + 1]
            i += 2
        else:
            flags[flag] = None
            i += 1
    return flags


def nats_endpoints(url_setting: str) -> list[tuple[str, int]]:
    out = []
    for url in url_setting.split(","):
        parsed = urlparse(url.strip())
        assert parsed.scheme in ("nats", "tls"), url
        out.append((parsed.hostname, parsed.port or 4222))
    return out


def mount_covering(path: str, mounts: list[tuple[str, str]]) -> str | None:
    """The source of the mount (source, target) whose target holds `path`."""
    best = None
    for source, target in mounts:
        if path == target or path.startswith(target.rstrip("/") + "/"):
            if best is None or len(target) > len(best[1]):
                best = (source, target)
    return best[0] if best else None


def test_compose_cluster(settings, live, largest_broadcast):
    compose = yaml.safe_load((DEPLOY / "compose.cluster.yml").read_text())
    services = compose["services"]
    declared_volumes = set(compose.get("volumes") or {})
    nodes = {name: s for name, s in services.items() if "CLUSTER_NATS_URL" in (s.get("environment") or {})}
    assert len(nodes) >= 3, sorted(nodes)

    # NATS: JetStream on, its store on a declared volume, the port the nodes dial.
    nats = services["nats"]
    assert nats["image"].startswith("nats:")
    nats_mounts = [tuple(v.split(":")[:2]) for v in nats.get("volumes", [])]

    def mounted_text(path: str) -> str:
        source = next(s for s, t in nats_mounts if t == path)
        assert source.startswith("./"), source
        return (DEPLOY / source).read_text()

    conf = nats_settings(nats["command"], mounted_text)
    assert conf["jetstream"], conf
    assert mount_covering(conf["store_dir"], nats_mounts) in declared_volumes, (conf, nats_mounts)
    assert conf["max_payload"] >= largest_broadcast, conf
    nats_port = conf["port"]
    nats_check = " ".join(nats["healthcheck"]["test"])
    assert f"127.0.0.1:{conf['monitor']}/healthz" in nats_check, nats_check

    db = services["db"]
    assert "wal_level=logical" in " ".join(db["command"])

    names, journals = set(), set()
    shared_values = None
    for name, node in nodes.items():
        env = node["environment"]
        assert set(env) <= settings, set(env) - settings
        assert CLUSTER_SETTINGS <= set(env)
        for host, port in nats_endpoints(env["CLUSTER_NATS_URL"]):
            assert host == "nats" and port == nats_port, env["CLUSTER_NATS_URL"]
        names.add(env["CLUSTER_NODE_NAME"])
        # Its own journal on its own declared volume.
        mounts = [tuple(v.split(":")[:2]) for v in node.get("volumes", [])]
        source = mount_covering(env["CHANGES_DIR"], mounts)
        assert source in declared_volumes, (name, env["CHANGES_DIR"], mounts)
        journals.add(source)
        values = {k: env.get(k) for k in SHARED}
        assert all(values.values()), (name, values)
        assert shared_values in (None, values), (name, values, shared_values)
        shared_values = values
        assert node["depends_on"]["db"]["condition"] == "service_healthy"
        assert node["depends_on"]["nats"]["condition"] == "service_healthy"
        build = node["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve().exists()
        assert node["stop_signal"] == "SIGTERM"
        url = next(part for part in node["healthcheck"]["test"] if part.startswith("http"))
        assert urlparse(url).port == int(env["PORT"])
        assert get_status(live, route_of(url)) == 200
    assert len(names) == len(nodes), "distinct CLUSTER_NODE_NAME"
    assert len(journals) == len(nodes), "one CHANGES_DIR volume per node"

    # The load balancer: its config mounted from deploy/, in front of every node.
    lb = services["lb"]
    config_mount = next(v for v in lb["volumes"] if v.startswith("./"))
    config_path = (DEPLOY / config_mount.split(":", 1)[0]).resolve()
    assert config_path == (DEPLOY / "nginx.cluster.conf").resolve()
    assert config_mount.split(":")[1] == "/etc/nginx/nginx.conf"
    for node in nodes:
        assert lb["depends_on"][node]["condition"] == "service_healthy"
    container_port = int(lb["ports"][0].split(":")[-1])
    conf = nginx_conf()
    assert conf["listen"] == container_port
    assert conf["servers"] == {(name, int(nodes[name]["environment"]["PORT"])) for name in nodes}
    url = next(part for part in lb["healthcheck"]["test"] if part.startswith("http"))
    assert urlparse(url).port == container_port
    assert get_status(live, route_of(url)) == 200


def nginx_conf() -> dict:
    """The parts of deploy/nginx.cluster.conf the test relies on."""
    text = re.sub(r"#[^\n]*", "", (DEPLOY / "nginx.cluster.conf").read_text())
    assert text.count("{") == text.count("}"), "balanced braces"
    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", text)
    assert upstream, "an upstream block"
    servers = {(host, int(port)) for host, port in re.findall(r"^\s*server\s+([\w.-]+):(\d+)", upstream.group(2), re.M)}
    listen = re.search(r"^\s*listen\s+(\d+)\s*;", text, re.M)
    assert listen
    assert re.search(rf"proxy_pass\s+http://{upstream.group(1)}\s*;", text)
    # The WebSocket upgrade is passed on.
    assert re.search(r"proxy_http_version\s+1\.1\s*;", text)
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade\s*;", text)
    connection = re.search(r"proxy_set_header\s+Connection\s+(\S+)\s*;", text)
    assert connection
    if connection.group(1).startswith("$"):
        assert re.search(rf"map\s+\$http_upgrade\s+\{connection.group(1)}\s*\{{", text)
    else:
        assert connection.group(1).strip('"').lower() == "upgrade"
    timeout = re.search(r"proxy_read_timeout\s+(\d+)([smh]?)\s*;", text)
    assert timeout, "proxy_read_timeout longer than the clients' 30 s heartbeat"
    seconds = int(timeout.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[timeout.group(2)]
    assert seconds > 60
    return {"listen": int(listen.group(1)), "servers": servers}


def test_kubernetes_cluster(settings, live, largest_broadcast):
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "realtide-cluster.yaml").read_text()) if d]
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    assert {"ConfigMap", "Secret", "StatefulSet", "Deployment", "Service"} <= set(by_kind), sorted(by_kind)
    (secret,), (nats,), (deployment,) = (by_kind[k] for k in ("Secret", "StatefulSet", "Deployment"))
    config_maps = {c["metadata"]["name"]: c for c in by_kind["ConfigMap"]}
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    env_from = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    (config,) = (config_maps[r["configMapRef"]["name"]] for r in env_from if "configMapRef" in r)

    config_keys, secret_keys = set(config["data"]), set(secret["stringData"])
    assert config_keys | secret_keys <= settings, (config_keys | secret_keys) - settings
    assert "JWT_SECRET" in secret_keys and "CLUSTER_NATS_URL" in config_keys

    # NATS: JetStream, its store on the claim template, reached through its Service.
    nats_pod = nats["spec"]["template"]
    nats_container = nats_pod["spec"]["containers"][0]
    claims = {t["metadata"]["name"] for t in nats["spec"]["volumeClaimTemplates"]}
    nats_mounts = [(m["name"], m["mountPath"]) for m in nats_container["volumeMounts"]]
    nats_volumes = {v["name"]: v for v in nats_pod["spec"].get("volumes", [])}

    def mounted_text(path: str) -> str:
        directory, _, key = path.rpartition("/")
        volume = nats_volumes[mount_covering(path, nats_mounts)]
        assert mount_covering(path, nats_mounts) == next(n for n, t in nats_mounts if t == directory)
        text = config_maps[volume["configMap"]["name"]]["data"][key]
        # The same configuration as the compose file's.
        assert text == (DEPLOY / "nats.cluster.conf").read_text()
        return text

    conf = nats_settings(nats_container.get("command", []) + nats_container.get("args", []), mounted_text)
    assert conf["jetstream"], conf
    assert mount_covering(conf["store_dir"], nats_mounts) in claims, (conf, nats_mounts)
    assert conf["max_payload"] >= largest_broadcast, conf
    nats_ports = {p["name"]: p["containerPort"] for p in nats_container["ports"]}
    assert nats_ports["client"] == conf["port"]
    monitor = conf["monitor"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert nats_ports[nats_container[probe]["httpGet"]["port"]] == monitor
    nats_service = services[nats["spec"]["serviceName"]]
    assert nats_service["spec"]["selector"].items() <= nats_pod["metadata"]["labels"].items()
    for host, port in nats_endpoints(config["data"]["CLUSTER_NATS_URL"]):
        assert host == nats_service["metadata"]["name"], host
        service_port = next(p for p in nats_service["spec"]["ports"] if p["port"] == port)
        assert service_port["targetPort"] in nats_ports

    # realtide: 3 replicas, each named after its pod, its journal on an emptyDir.
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert refs == {config["metadata"]["name"], secret["metadata"]["name"]}
    env = {e["name"]: e for e in container.get("env", [])}
    assert set(env) <= settings, set(env) - settings
    assert env["CLUSTER_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = [(m["name"], m["mountPath"]) for m in container["volumeMounts"]]
    journal = mount_covering(config["data"]["CHANGES_DIR"], mounts)
    assert journal and "emptyDir" in volumes[journal], (journal, volumes)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert str(ports["http"]) == config["data"]["PORT"]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ports
        assert get_status(live, get["path"]) == 200, probe
    assert pod["spec"]["terminationGracePeriodSeconds"] > 10, "longer than the 10 s drain"
    realtide_services = [s for name, s in services.items() if name != nats_service["metadata"]["name"]]
    assert realtide_services
    for service in realtide_services:
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    for budget in by_kind.get("PodDisruptionBudget", []):
        assert budget["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()

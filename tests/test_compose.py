"""docker-compose.yml describes a real deployment (no Docker engine here: it is parsed, not run)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WORKERS = ("worker-1", "worker-2")


def metrics_port(worker: str) -> str:
    command = SERVICES[worker]["command"]
    return command[command.index("--metrics-port") + 1]


def test_nothing_is_published_beyond_the_host_and_grafana_asks_who_you_are():
    published = [port for s in SERVICES.values() for port in s.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published)
    grafana = SERVICES["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GRAFANA_ADMIN_PASSWORD" in grafana["GF_SECURITY_ADMIN_PASSWORD"]


def test_the_simulated_shop_is_a_live_one_stamped_with_the_wall_clock():
    assert "--wall-clock" in SERVICES["producer"]["command"]


def test_kafka_runs_in_kraft_mode_as_a_single_node():
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "healthcheck" in kafka


def test_topics_are_initialised_before_the_service_starts():
    init = SERVICES["kafka-init"]
    script = "\n".join(init["command"])
    for topic in ("events", "items", "scores", "events.dlq", "control"):
        assert f"--topic {topic} " in script
    assert script.count("cleanup.policy=compact") == 2
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_producer_and_worker_are_built_from_the_project_and_pointed_at_kafka():
    assert (ROOT / "Dockerfile").is_file()
    for name, command in (("producer", "produce"), *((w, "worker") for w in WORKERS)):
        service = SERVICES[name]
        assert service["build"] == "."
        assert service["command"][0] == command
        assert service["environment"]["RECSTREAM_BROKER"] == "kafka:9092"
        assert service["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


def test_each_worker_exposes_its_own_metrics_port_and_keeps_checkpoints_on_its_own_volume():
    ports = [metrics_port(worker) for worker in WORKERS]
    assert len(set(ports)) == len(WORKERS)
    volumes = set()
    for worker, port in zip(WORKERS, ports, strict=True):
        assert f"127.0.0.1:{port}:{port}" in SERVICES[worker]["ports"]
        (volume,) = (v for v in SERVICES[worker]["volumes"] if v.endswith(":/data"))
        volumes.add(volume)
    assert len(volumes) == len(WORKERS)


def test_the_image_installs_the_cpu_torch_build_before_the_project():
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    torch = next(i for i, line in enumerate(lines) if "torch==2.13.0" in line)
    project = next(i for i, line in enumerate(lines) if "pip install --no-cache-dir ." in line)
    assert torch < project


def test_prometheus_scrapes_every_worker_and_grafana_is_provisioned():
    prometheus = SERVICES["prometheus"]
    assert any(v.startswith("./deploy/prometheus.yml:") for v in prometheus["volumes"])
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"{worker}:{metrics_port(worker)}" for worker in WORKERS]
    grafana = SERVICES["grafana"]
    assert "127.0.0.1:3000:3000" in grafana["ports"]
    assert any("provisioning" in v for v in grafana["volumes"])


def test_dashboards_and_alerts_use_only_metrics_the_worker_exposes():
    from streams.metrics import Metrics

    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    exposed = {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes[family.type]
    }
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/recstream.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [
        r["expr"]
        for g in yaml.safe_load((ROOT / "deploy/alerts.yml").read_text())["groups"]
        for r in g["rules"]
    ]
    used = {name for expr in expressions for name in re.findall(r"recstream_[a-z_]+", expr)}
    assert used and used <= exposed, used - exposed


def test_prometheus_config_and_alert_rules_pass_promtool():
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: apt-get install prometheus (make test does, as root)")
    for args in (
        ["check", "config", "deploy/prometheus.yml"],
        ["check", "rules", "deploy/alerts.yml"],
    ):
        result = subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr

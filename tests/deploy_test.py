"""Deployment files: hadolint, the compose stack and the Kubernetes manifests agree with the
exporter; the exporter runs under exactly the README's read-only role, and cannot write."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, text

from exporter.cli import parse_args
from exporter.config import load_config
from exporter.webconfig import load_web_config  # noqa: F401 - the flags it serves exist
from tests.support import pg
from tests.support.expo import assert_counts, parse, sample
from tests.support.procs import Exporter, wait_until

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
PORT = 9653


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {PORT}" in dockerfile and "/healthz" in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.M)
    assert dockerfile.count("FROM ") >= 2  # multi-stage
    assert "install --no-cache-dir '.[mysql]'" in dockerfile  # MySQL/MariaDB driver
    for line in dockerfile.splitlines():  # no secret baked in
        assert not re.match(r"^(ENV|ARG).*(PASSWORD|DATABASE_URL)", line), line


def _env_is_understood(env: dict[str, str], base: Path) -> None:
    """Every CONVRS_EXPORTER_* variable names a setting the exporter knows."""
    resolved = {}
    for name, value in env.items():
        assert name.startswith("CONVRS_EXPORTER_"), name
        if name.endswith("_FILE"):
            assert value.startswith("/run/secrets/") or Path(value).exists(), value
            value = str(base / "secrets" / Path(value).name)
        resolved[name] = value
    ignored: list[str] = []
    load_config(None, resolved, ignored=ignored)
    assert ignored == []


def test_compose_agrees_with_the_exporter() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services: dict[str, Any] = compose["services"]
    assert {"postgres", "seed", "convrs-exporter", "prometheus", "alertmanager", "grafana"} <= set(
        services
    )
    for name, svc in services.items():  # every mounted file exists
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            assert (DEPLOY / source).resolve().exists(), f"{name}: {source} missing"
        if "build" in svc:
            build = svc["build"]
            assert (DEPLOY / build["context"] / build["dockerfile"]).exists()
    for secret in compose["secrets"].values():
        assert (DEPLOY / secret["file"]).exists()

    exporter = services["convrs-exporter"]
    args = parse_args(exporter["command"])
    assert args.listen_address == f":{PORT}" and exporter["ports"] == [f"{PORT}:{PORT}"]
    config_mount = next(v for v in exporter["volumes"] if v.split(":")[1] == args.config_file)
    load_config(DEPLOY / config_mount.split(":")[0], {})
    _env_is_understood(exporter["environment"], DEPLOY)
    seed = services["seed"]
    assert parse_args(seed["command"]).demo_seed
    _env_is_understood(seed["environment"], DEPLOY)
    # the exporter reads as the read-only role the init script creates
    url = (DEPLOY / "secrets" / "exporter-database-url").read_text().strip()
    role_sql = (DEPLOY / "postgres" / "10-exporter-role.sql").read_text()
    assert url.startswith("postgresql://convrs_exporter:") and "@postgres:5432/convrs" in url
    assert "CREATE ROLE convrs_exporter" in role_sql
    assert "default_transaction_read_only = on" in role_sql

    # Prometheus scrapes the exporter by its service name and loads the rules
    prom = services["prometheus"]
    mounts = dict(v.split(":")[:2] for v in prom["volumes"])
    prom_config = yaml.safe_load(
        (
            DEPLOY / next(s for s, t in mounts.items() if t == "/etc/prometheus/prometheus.yml")
        ).read_text()
    )
    targets = prom_config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"convrs-exporter:{PORT}"]
    for rule_file in prom_config["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounts.values()
    am = prom_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["alertmanager:9093"] and "9093:9093" in services["alertmanager"]["ports"]

    # Grafana: provisioning where Grafana reads it, dashboards where the provider looks
    grafana = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/convrs.yml").read_text())[
        "providers"
    ][0]
    assert grafana["../grafana/provisioning"] == "/etc/grafana/provisioning"
    assert grafana["../grafana/dashboards"] == provider["options"]["path"]
    datasource = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"


def _manifests(variant: str = "kubernetes") -> dict[str, dict[str, Any]]:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / variant)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(rendered)}


def test_kubernetes_manifests_agree_with_the_exporter(tmp: Path) -> None:
    docs = _manifests()
    deployment = docs["Deployment/convrs-exporter"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (port,) = container["ports"]
    assert port["containerPort"] == PORT
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["enableServiceLinks"] is False
    args = parse_args(container["args"])
    env = container["env"]
    assert [e["name"] for e in env] == ["CONVRS_EXPORTER_DATABASE_URL"]
    assert env[0]["valueFrom"]["secretKeyRef"]["name"] == "convrs-exporter-db"
    # the config file it names is the ConfigMap mounted where the args say
    mount = next(
        m for m in container["volumeMounts"] if args.config_file.startswith(m["mountPath"])
    )
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = docs[f"ConfigMap/{volume['configMap']['name']}"]
    (tmp / "config.yml").write_text(configmap["data"][Path(args.config_file).name])
    load_config(tmp / "config.yml", {})
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])  # noqa: S108

    service = docs["Service/convrs-exporter"]
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["port"] == PORT and svc_port["targetPort"] == port["name"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    monitor = docs["ServiceMonitor/convrs-exporter"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == svc_port["name"] and endpoint["path"] == "/metrics"
    assert monitor["spec"]["selector"]["matchLabels"] == service["metadata"]["labels"]

    dashboard = docs["ConfigMap/convrs-exporter-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_the_sharded_variant_runs_one_shard_per_pod_with_its_own_state(tmp: Path) -> None:
    """kubectl kustomize deploy/kubernetes-sharded: the base with a StatefulSet for the
    Deployment; each pod's shard index is its ordinal, the total its replicas, and its state
    file on a volume of its own; otherwise the same pod as the base's."""
    base, docs = _manifests(), _manifests("kubernetes-sharded")
    assert "Deployment/convrs-exporter" not in docs
    sts = docs["StatefulSet/convrs-exporter"]
    assert set(docs) - {"StatefulSet/convrs-exporter"} == set(base) - {"Deployment/convrs-exporter"}
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CONVRS_EXPORTER_SHARD_TOTAL"]["value"] == str(sts["spec"]["replicas"]) == "3"
    assert env["CONVRS_EXPORTER_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    state = env["CONVRS_EXPORTER_COLLECTION_STATE_FILE"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert state.startswith(mounts["state"] + "/")
    assert [v["metadata"]["name"] for v in sts["spec"]["volumeClaimTemplates"]] == ["state"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    base_pod = base["Deployment/convrs-exporter"]["spec"]["template"]["spec"]
    (base_container,) = base_pod["containers"]
    for key in ("image", "args", "ports", "livenessProbe", "readinessProbe", "resources"):
        assert container[key] == base_container[key], key
    # the environment names settings the exporter knows
    from exporter.config import load_config

    config = load_config(
        None,
        {
            "CONVRS_EXPORTER_SHARD_TOTAL": "3",
            "CONVRS_EXPORTER_SHARD_INDEX": "2",
            "CONVRS_EXPORTER_COLLECTION_STATE_FILE": state,
        },
    )
    assert (config.shard.index, config.shard.total) == (2, 3)
    assert str(config.collection.state_file) == state


def test_generated_manifests_are_in_step_with_their_sources(tmp: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "kubernetes" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    rule = _manifests()["PrometheusRule/convrs-exporter"]
    source = yaml.safe_load((ROOT / "config/prometheus/rules.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"]
    (tmp / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run(
        ["promtool", "check", "rules", str(tmp / "rules.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def readme_role_sql(database: str, role: str, password: str) -> str:
    readme = (ROOT / "README.md").read_text()
    sql = re.search(
        r"```sql\n(-- convrs-exporter: read-only role\n.*?-- end of role)\n```", readme, re.S
    )
    assert sql, "README lacks the read-only role snippet"
    return (
        sql.group(1)
        .replace("convrs_exporter", role)
        .replace("'change-me'", f"'{password}'")
        .replace("DATABASE convrs ", f'DATABASE "{database}" ')
    )


@pytest.fixture
def readonly_url(seeded: Engine) -> Any:
    role = f"convrs_exporter_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with seeded.begin() as conn:
        for statement in readme_role_sql(str(seeded.url.database), role, password).split(";\n"):
            if statement.strip() and not statement.strip().startswith("-- end"):
                conn.execute(text(statement))
    yield f"postgresql://{role}:{password}@127.0.0.1:5432/{seeded.url.database}", password
    with seeded.begin() as conn:
        conn.execute(text(f"DROP OWNED BY {role}"))
        conn.execute(text(f"DROP ROLE {role}"))


def test_exporter_runs_as_the_readme_read_only_role(
    seeded: Engine, readonly_url: tuple[str, str], tmp: Path
) -> None:
    url, password = readonly_url
    config = {"collection": {"interval": "1s"}, "database": {"statement_timeout": "500ms"}}
    exp = Exporter(tmp, config, env={"CONVRS_EXPORTER_DATABASE_URL": url}).start()
    try:
        assert_counts(parse(exp.metrics()), pg.reference_counts(seeded))
    finally:
        assert exp.stop() == 0, exp.log()
    assert password not in exp.log()


CTE_WRITE = (
    "WITH x AS (INSERT INTO flows (org_id, name) VALUES (1, 'pwned') RETURNING org_id) "
    "SELECT org_id AS org, count(*) AS value FROM x GROUP BY org_id"
)
SELECT_WRITE = (
    "SELECT org_id AS org, count(*) AS value FROM flows, "
    "LATERAL (SELECT nextval('flows_id_seq')) n GROUP BY org_id"
)


def _flows_unchanged(seeded: Engine) -> tuple[dict[tuple[str, ...], float], int]:
    with seeded.connect() as conn:
        seq = int(conn.execute(text("SELECT last_value FROM flows_id_seq")).scalar_one())
    return pg.reference_counts(seeded)["convrs_flows"], seq


def test_a_mapping_with_a_writing_cte_is_refused_at_start(
    seeded: Engine, readonly_url: tuple[str, str], tmp: Path
) -> None:
    url, password = readonly_url
    path = tmp / "writes.yml"
    path.write_text(yaml.safe_dump({"mapping": {"flows": {"query": CTE_WRITE}}}))
    before = _flows_unchanged(seeded)
    for env_url in (url, seeded.url.render_as_string(hide_password=False)):  # role, superuser
        result = subprocess.run(
            [sys.executable, "-m", "exporter.cli", "--config.file", str(path), "--config.check"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "CONVRS_EXPORTER_DATABASE_URL": env_url},
        )
        assert result.returncode == 2, result.stderr
        line = result.stderr.strip()
        assert "\n" not in line and "mapping.flows" in line
        assert "data-modifying statement" in line, line
        assert password not in result.stderr
    assert _flows_unchanged(seeded) == before


@pytest.mark.parametrize("who", ["readme role", "superuser"])
def test_a_mapping_that_writes_when_it_runs_fails_clearly(
    seeded: Engine, readonly_url: tuple[str, str], tmp: Path, who: str
) -> None:
    """A write the start-up check cannot see (it runs each query on no rows) fails on every
    collection, for lack of privilege (the README's role) or because the transaction is
    read-only (even a superuser); the other metrics go on."""
    role_url, password = readonly_url
    url = role_url if who == "readme role" else seeded.url.render_as_string(hide_password=False)
    expected = {
        "readme role": "permission denied for sequence flows_id_seq",
        "superuser": "cannot execute nextval() in a read-only transaction",
    }[who]
    config = {
        "collection": {"interval": "1s"},
        "database": {"statement_timeout": "500ms"},
        "mapping": {"flows": {"query": SELECT_WRITE}},
    }
    before = _flows_unchanged(seeded)
    exp = Exporter(tmp, config, env={"CONVRS_EXPORTER_DATABASE_URL": url}).start(wait_ready=False)
    try:

        def collected() -> str | None:
            # the failure is counted at the end of a collection; its values are served once
            # the render that follows has run
            body = exp.metrics()
            failed = sample(body, "convrs_exporter_query_errors_total", query="flows")
            return body if failed and parse(body)["convrs_users"] else None

        body = wait_until(collected, what="the flows query to fail, the others served")
        assert sample(body, "convrs_exporter_query_success", query="flows") == 0
        assert sample(body, "convrs_exporter_query_success", query="users") == 1
        assert sample(body, "convrs_up") == 0
        assert parse(body)["convrs_users"] == pg.reference_counts(seeded)["convrs_users"]
    finally:
        assert exp.stop() == 0, exp.log()
    log = exp.log()
    assert f'msg="query failed" query=flows err="{expected}"' in log, log
    assert password not in log
    assert _flows_unchanged(seeded) == before

"""The Kubernetes manifests (config/kubernetes/), checked without a cluster.

``kubernetes-validate --strict`` holds every object to the API schema of a pinned Kubernetes version;
the tests after it check what a schema cannot: that the shard count in the environment is the Job's,
that pods run unprivileged and read-only with their state on an emptyDir, that the ConfigMap's TOML
loads with our settings, and that each CronJob's command line works, run against the fake exchange.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_schemas

from extractor.cli import cli
from extractor.klines import Series
from extractor.markets import SPOT
from extractor.pipeline.shards import shard_series
from extractor.settings import Shard, load_settings
from tests.fake_exchange import FakeExchange

KUBERNETES_VERSION = "1.33.0"
"""The oldest release with backoffLimitPerIndex GA; kubernetes-validate ships its schemas."""
MANIFESTS = Path(__file__).resolve().parent.parent / "config" / "kubernetes"
FILES = sorted(MANIFESTS.glob("*.yaml"))
OUR_PREFIXES = ("EXTRACTOR_", "CIRCUIT_BREAKER_", "BINANCE_", "DATABASE_URL", "LOG_", "JOB_COMPLETION_INDEX")


def objects() -> list[dict[str, Any]]:
    return [doc for path in FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects() if obj["kind"] == kind]


def job_specs() -> list[tuple[str, dict[str, Any]]]:
    """(name, Job spec) of every Job and of every CronJob's job template."""
    out = [(obj["metadata"]["name"], obj["spec"]) for obj in of_kind("Job")]
    out += [(obj["metadata"]["name"], obj["spec"]["jobTemplate"]["spec"]) for obj in of_kind("CronJob")]
    return out


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def the_container(spec: dict[str, Any]) -> dict[str, Any]:
    containers = spec["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


JOBS = job_specs()
JOB_IDS = [name for name, _ in JOBS]


# -- the API schema -----------------------------------------------------------------------------------


def test_the_pinned_kubernetes_version_ships_with_kubernetes_validate() -> None:
    assert KUBERNETES_VERSION in kubernetes_schemas.all_versions()


def test_every_manifest_passes_kubernetes_validate_strict() -> None:
    assert {"ConfigMap", "CronJob", "Job", "Secret"} <= {obj["kind"] for obj in objects()}
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION, *map(str, FILES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(objects())


def test_strict_validation_refuses_a_field_the_api_does_not_have(tmp_path: Path) -> None:
    """What makes the test above worth having: a misspelled field fails it."""
    broken = (MANIFESTS / "cronjob-1m.yaml").read_text().replace("completionMode:", "completionMod:")
    path = tmp_path / "broken.yaml"
    path.write_text(broken)
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "'completionMod' was unexpected" in result.stdout


# -- what the schema does not catch -------------------------------------------------------------------


@pytest.mark.parametrize("spec", [spec for _, spec in JOBS], ids=JOB_IDS)
def test_each_job_is_indexed_with_as_many_shards_as_completions(spec: dict[str, Any]) -> None:
    assert spec["completionMode"] == "Indexed"
    shards = int(env_of(the_container(spec))["EXTRACTOR_SHARDS"]["value"])
    assert spec["completions"] == spec["parallelism"] == shards
    assert spec["backoffLimitPerIndex"] >= 1
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["ttlSecondsAfterFinished"] > 0
    assert (
        spec["template"]["spec"]["restartPolicy"] == "Never"
    )  # podFailurePolicy and per-index backoff need it


def test_cronjobs_never_overlap_and_each_group_has_its_own_config() -> None:
    cronjobs = of_kind("CronJob")
    assert len(cronjobs) >= 2
    configs = set()
    for cronjob in cronjobs:
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
        configs.add(
            env_of(the_container(cronjob["spec"]["jobTemplate"]["spec"]))["EXTRACTOR_CONFIG"]["value"]
        )
    assert len(configs) == len(cronjobs)


@pytest.mark.parametrize("spec", [spec for _, spec in JOBS], ids=JOB_IDS)
def test_the_container_runs_unprivileged_on_a_read_only_root(spec: dict[str, Any]) -> None:
    pod = spec["template"]["spec"]
    container = the_container(spec)
    context = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and context["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for bound in ("requests", "limits"):
        assert set(container["resources"][bound]) == {"cpu", "memory"}


@pytest.mark.parametrize("spec", [spec for _, spec in JOBS], ids=JOB_IDS)
def test_the_state_directory_is_an_empty_dir_and_secrets_and_config_exist(spec: dict[str, Any]) -> None:
    pod = spec["template"]["spec"]
    container = the_container(spec)
    env = env_of(container)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[env["EXTRACTOR_STATE_DIR"]["value"]]]
    secret_ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    secrets = {obj["metadata"]["name"]: obj for obj in of_kind("Secret")}
    assert secret_ref["key"] in secrets[secret_ref["name"]]["stringData"]
    config = Path(env["EXTRACTOR_CONFIG"]["value"])
    config_map = volumes[mounts[str(config.parent)]]["configMap"]["name"]
    maps = {obj["metadata"]["name"]: obj for obj in of_kind("ConfigMap")}
    assert config.name in maps[config_map]["data"]


# -- the config and the command line, as our CLI reads them -------------------------------------------


def container_run(spec: dict[str, Any], tmp_path: Path, index: int) -> tuple[list[str], dict[str, str]]:
    """The container's arguments and environment on this machine: the ConfigMap's files in ``tmp_path``,
    the state dir in it too, and the Job's JOB_COMPLETION_INDEX."""
    container = the_container(spec)
    config = Path(env_of(container)["EXTRACTOR_CONFIG"]["value"])
    data = of_kind("ConfigMap")[0]["data"]
    local = tmp_path / "config" / config.name
    local.parent.mkdir(exist_ok=True)
    local.write_text(data[config.name])
    env = {name: item["value"] for name, item in env_of(container).items() if "value" in item}
    env.update(
        EXTRACTOR_CONFIG=str(local),
        EXTRACTOR_STATE_DIR=str(tmp_path / "state"),
        JOB_COMPLETION_INDEX=str(index),
    )
    return list(container["args"]), env


@pytest.mark.parametrize("spec", [spec for _, spec in JOBS], ids=JOB_IDS)
def test_the_command_line_and_its_config_file_load_as_our_cli_reads_them(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    last = spec["completions"] - 1
    args, env = container_run(spec, tmp_path, last)
    command = cli.get_command(click.Context(cli), args[0])
    assert command is not None, f"binance-extractor has no {args[0]} command"
    command.make_context(args[0], args[1:])  # refuses unknown options, bad values, missing --start
    settings = load_settings(environ=env)
    assert settings.shard == Shard(last + 1, spec["completions"])
    assert settings.specs and all(spec.symbols and spec.intervals for spec in settings.specs)
    assert settings.log_format == "json"


@pytest.mark.parametrize(
    "spec",
    [cronjob["spec"]["jobTemplate"]["spec"] for cronjob in of_kind("CronJob")],
    ids=[cronjob["metadata"]["name"] for cronjob in of_kind("CronJob")],
)
def test_each_cronjob_s_command_runs_as_its_first_pod_would(
    spec: dict[str, Any], tmp_path: Path, fake_exchange: FakeExchange
) -> None:
    """Shard 1, against the fake and SQLite in place of Binance and the Secret's database: it asks
    for its own series of every TRADING USDT symbol, and for no other."""
    args, env = container_run(spec, tmp_path, 0)
    settings = load_settings(environ=env)
    trading = sorted(s for s, info in fake_exchange.symbols.items() if info.status == "TRADING")
    fleet = [Series(SPOT, s, i) for s in trading if s.endswith("USDT") for i in settings.specs[0].intervals]
    mine = {(one.symbol, one.interval.name) for one in shard_series(fleet, 1, spec["completions"])}
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(OUR_PREFIXES)}
    env = {
        **inherited,
        **env,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}",
        "BINANCE_API_URL": fake_exchange.url,
    }
    done = subprocess.run(
        [sys.executable, "-m", "extractor", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    asked = {
        (p["symbol"], p["interval"]) for _, path, p, _ in fake_exchange.requests if path.endswith("/klines")
    }
    assert mine and asked == mine

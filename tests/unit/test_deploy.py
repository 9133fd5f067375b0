"""The deployment files in ``deploy/`` parse and carry the settings a fleet of workers depends on.

No Docker engine, cluster or network is needed: every file is read as text or YAML and checked for the settings
that matter (durable Redis, a password from the environment, a GPU per GPU worker, a non-root image, the worker
command line the CLI accepts).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"

WORKER_FLAGS = {"--queues", "--gpus", "--concurrency"}
URL_KEYS = {"LSTMDET_BROKER_URL", "LSTMDET_RESULT_URL"}
WORKER_SERVICES = ("worker-gpu", "worker-cpu")
EXPECTED_FILES = (
    "README.md",
    "Dockerfile",
    "docker-compose.yml",
    "redis.conf",
    "k8s/secret.yaml",
    "k8s/redis.yaml",
    "k8s/data-pvc.yaml",
    "k8s/worker-gpu.yaml",
    "k8s/worker-cpu.yaml",
)


# --------------------------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    """Every YAML file under ``deploy/``, sorted."""
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def _documents(path: Path) -> list[Any]:
    """The non-empty YAML documents of one file."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def _compose() -> dict[str, Any]:
    """The compose file as a mapping (anchors and merge keys resolved by the YAML loader)."""
    (doc,) = _documents(DEPLOY / "docker-compose.yml")
    return doc


def _service(name: str) -> dict[str, Any]:
    return _compose()["services"][name]


def _argv(value: str | list[str] | None) -> list[str]:
    """A compose ``command``/``entrypoint`` or a Kubernetes ``args`` list, as a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(item) for item in value]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment, whether written as a mapping or as ``KEY=value`` items."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _k8s_objects() -> list[dict[str, Any]]:
    """Every Kubernetes object under ``deploy/k8s/``, in ``kubectl apply -f`` order (file names sorted)."""
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _documents(path)]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [obj for obj in _k8s_objects() if obj.get("kind") == kind]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def _pod_spec_labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj["spec"]["template"]["metadata"]["labels"]


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return _pod_spec(obj)["containers"]


def _is_worker(container: dict[str, Any]) -> bool:
    """A container that runs ``lstmdet worker`` through the image's entrypoint."""
    return not container.get("command") and _argv(container.get("args"))[:1] == ["worker"]


def _worker_deployments() -> list[dict[str, Any]]:
    return [d for d in _of_kind("Deployment") if any(_is_worker(c) for c in _containers(d))]


def _gpu_limit(container: dict[str, Any]) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def _redis_conf(text: str) -> dict[str, list[str]]:
    """Directives of a redis.conf: lower-cased name -> arguments of its last occurrence (quotes removed)."""
    directives: dict[str, list[str]] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, *args = shlex.split(stripped)
        directives[name.lower()] = args
    return directives


def _dockerfile() -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def _instruction(keyword: str) -> list[str]:
    return [rest for key, rest in _dockerfile() if key == keyword]


def _worker_commands() -> Iterator[tuple[str, list[str]]]:
    """Every ``lstmdet worker`` command line in compose, Kubernetes and the Dockerfile, as (where, argv)."""
    for name, service in _compose()["services"].items():
        entrypoint = _argv(service.get("entrypoint"))
        argv = entrypoint + _argv(service.get("command"))
        if argv[:1] == ["lstmdet"]:
            argv = argv[1:]
        if argv[:1] == ["worker"]:
            yield f"compose service {name}", argv
    for obj in _k8s_objects():
        if obj.get("kind") not in {"Deployment", "StatefulSet", "DaemonSet"}:
            continue
        for container in _containers(obj):
            argv = _argv(container.get("command")) + _argv(container.get("args"))
            if argv[:1] == ["lstmdet"]:
                argv = argv[1:]
            if argv[:1] == ["worker"]:
                yield f"k8s {obj['metadata']['name']}/{container['name']}", argv
    (cmd,) = _instruction("CMD")
    yield "Dockerfile CMD", json.loads(cmd)


def _flags(argv: list[str]) -> dict[str, str]:
    """Options of a command line (``--name value`` or ``--name=value``) -> value."""
    found: dict[str, str] = {}
    tokens = iter(argv)
    for token in tokens:
        if not token.startswith("--"):
            continue
        name, eq, value = token.partition("=")
        found[name] = value if eq else next(tokens, "")
    return found


# --------------------------------------------------------------------------------------------------------------------
# Every file
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_expected_file_exists(name: str) -> None:
    path = DEPLOY / name
    assert path.is_file(), f"{path} is missing"
    assert path.read_text(encoding="utf-8").strip()


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = _documents(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs)


# --------------------------------------------------------------------------------------------------------------------
# redis.conf
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directive", "value"),
    [
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("maxmemory-policy", "noeviction"),
        ("dir", "/data"),
        # The AOF is the only persistence; RDB snapshots are switched off.
        ("save", ""),
    ],
)
def test_redis_conf_setting(directive: str, value: str) -> None:
    conf = _redis_conf((DEPLOY / "redis.conf").read_text(encoding="utf-8"))
    assert conf.get(directive) == [value], f"redis.conf: {directive} is {conf.get(directive)}, expected {value!r}"


def test_redis_conf_has_a_password_placeholder() -> None:
    conf = _redis_conf((DEPLOY / "redis.conf").read_text(encoding="utf-8"))
    assert len(conf.get("requirepass", [])) == 1
    assert conf["requirepass"][0], "requirepass must not be empty"
    assert conf.get("protected-mode") == ["yes"]
    assert "bind" in conf


# --------------------------------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------------------------------


def test_compose_has_the_four_services_and_named_volumes() -> None:
    compose = _compose()
    assert set(compose["services"]) == {"redis", "worker-gpu", "worker-cpu", "flower"}
    assert {"redis-data", "lstmdet-data"} <= set(compose["volumes"])


def test_compose_redis_loads_the_conf_and_takes_the_password_from_the_environment() -> None:
    redis = _service("redis")
    assert str(redis["image"]).split(":")[0] == "redis"
    assert str(redis["image"]).startswith("redis:7")
    argv = _argv(redis["command"])
    assert argv[0] == "redis-server"
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in redis["volumes"]}
    conf_in_container = argv[1]
    assert conf_in_container in mounts, "the conf file on the command line is not mounted"
    assert (DEPLOY / mounts[conf_in_container]).resolve() == (DEPLOY / "redis.conf").resolve()
    assert mounts.get("/data") == "redis-data"
    password = _flags(argv)["--requirepass"]
    assert password.startswith("${REDIS_PASSWORD:?"), "compose must refuse to start without REDIS_PASSWORD"
    # appendonly comes from the mounted conf unless the command line overrides it.
    conf = _redis_conf((DEPLOY / "redis.conf").read_text(encoding="utf-8"))
    assert _flags(argv).get("--appendonly", conf["appendonly"][0]) == "yes"


def test_compose_redis_healthcheck_authenticates() -> None:
    redis = _service("redis")
    test = " ".join(_argv(redis["healthcheck"]["test"]))
    assert "redis-cli" in test
    assert "-a" in test.split()
    assert "REDIS_PASSWORD" in test
    assert "REDIS_PASSWORD" in _environment(redis)


def test_compose_gpu_worker_reserves_an_nvidia_gpu() -> None:
    devices = _service("worker-gpu")["deploy"]["resources"]["reservations"]["devices"]
    nvidia = [d for d in devices if d.get("driver") == "nvidia"]
    assert len(nvidia) == 1
    assert "gpu" in nvidia[0]["capabilities"]
    assert nvidia[0].get("count") or nvidia[0].get("device_ids")


def test_compose_cpu_worker_and_flower_reserve_no_gpu() -> None:
    for name in ("worker-cpu", "flower"):
        reservations = _service(name).get("deploy", {}).get("resources", {}).get("reservations", {})
        assert not reservations.get("devices"), name


@pytest.mark.parametrize("name", [*WORKER_SERVICES, "flower"])
def test_compose_service_gets_urls_with_the_password(name: str) -> None:
    env = _environment(_service(name))
    for key in URL_KEYS:
        url = env[key]
        assert url.split("://")[0] in {"redis", "rediss"}, f"{name}: {key}={url}"
        assert "${REDIS_PASSWORD" in url, f"{name}: {key} does not carry the password variable"
    assert env["LSTMDET_BROKER_URL"] != env["LSTMDET_RESULT_URL"], "broker and results should use separate dbs"
    assert env["LSTMDET_DATA_ROOTS"] == "/data"


@pytest.mark.parametrize("name", WORKER_SERVICES)
def test_compose_worker_runs_the_image_with_shared_data(name: str) -> None:
    service = _service(name)
    assert "entrypoint" not in service, "workers use the image's lstmdet entrypoint"
    assert "lstmdet-data:/data" in service["volumes"]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service.get("stop_grace_period"), "workers need time to finish or checkpoint a job on shutdown"


@pytest.mark.parametrize("name", [*WORKER_SERVICES, "flower"])
def test_compose_builds_the_image_from_the_repository_root(name: str) -> None:
    build = _service(name)["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()


def test_compose_flower_runs_the_app_on_port_5555() -> None:
    flower = _service("flower")
    argv = _argv(flower.get("entrypoint")) + _argv(flower["command"])
    assert argv[0] == "celery"
    assert "flower" in argv
    assert _flags(argv).get("--app") == "lstmdet.workers.app:app"
    assert _flags(argv).get("--port") == "5555"
    assert any(str(port).endswith(":5555") for port in flower["ports"])


# --------------------------------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------------------------------


def test_dockerfile_starts_from_a_cuda_runtime_image() -> None:
    (base,) = _instruction("FROM")
    image = base.split()[0]
    assert image.startswith("nvidia/cuda:"), image
    assert "runtime" in image.split(":", 1)[1], image


def test_dockerfile_installs_the_built_wheel_and_smoke_tests_it() -> None:
    """The image follows CI's path (.ci/wheel-check): build the wheel, install it, run deploy/smoke-test.sh."""
    instructions = _dockerfile()
    runs = [(i, rest) for i, (key, rest) in enumerate(instructions) if key == "RUN"]
    (install,) = [i for i, run in runs if "pip wheel --no-deps --wheel-dir /tmp/wheels ." in run]
    assert "pip install /tmp/wheels/lstmdet-*.whl" in instructions[install][1]
    assert not any("pip install ." in run or "pip install -e" in run for _, run in runs)
    (smoke,) = [i for i, run in runs if run.strip() == "lstmdet-smoke-test"]
    users = [i for i, (key, _) in enumerate(instructions) if key == "USER"]
    assert install < users[-1] < smoke, "the smoke test runs after the install, as the unprivileged user"
    assert "deploy/smoke-test.sh /usr/local/bin/lstmdet-smoke-test" in _instruction("COPY")
    wheel_check = (REPO / ".ci" / "wheel-check").read_text()
    assert "deploy/smoke-test.sh" in wheel_check and "pip wheel" in wheel_check
    assert "bash .ci/wheel-check" in (REPO / ".ci" / "run").read_text()


def test_dockerfile_copies_only_paths_that_exist() -> None:
    """The build context is the repository root; every COPY source must be there."""
    copies = _instruction("COPY")
    assert copies
    for copy in copies:
        parts = [p for p in copy.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    copied = {p for copy in copies for p in copy.split()[:-1]}
    assert {"pyproject.toml", "README.md", "lstmdet", "plugins", "workers"} <= copied | {"."}


def test_dockerfile_switches_to_a_non_root_user_after_installing() -> None:
    instructions = _dockerfile()
    users = [i for i, (key, _) in enumerate(instructions) if key == "USER"]
    assert users, "no USER instruction"
    last_user = users[-1]
    user = instructions[last_user][1].split(":")[0]
    assert user.isdigit(), "use a numeric uid so that Kubernetes can verify runAsNonRoot"
    assert int(user) != 0
    installs = [i for i, (key, rest) in enumerate(instructions) if key == "RUN" and "install " in rest]
    assert installs
    assert last_user > max(installs), "USER must come after the install steps"


def test_dockerfile_entrypoint_cmd_and_environment() -> None:
    (entrypoint,) = _instruction("ENTRYPOINT")
    assert json.loads(entrypoint) == ["lstmdet"]
    (cmd,) = _instruction("CMD")
    assert json.loads(cmd) == ["worker", "--queues", "gpu", "--gpus", "0"]
    env = " ".join(_instruction("ENV"))
    assert "PYTHONUNBUFFERED=1" in env.split()
    assert _instruction("WORKDIR")


# --------------------------------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------------------------------


def test_k8s_objects_share_one_namespace_created_first() -> None:
    objects = _k8s_objects()
    assert all({"apiVersion", "kind", "metadata"} <= set(obj) for obj in objects)
    namespaces = [obj for obj in objects if obj["kind"] == "Namespace"]
    if not namespaces:
        return
    (namespace,) = namespaces
    assert objects[0] is namespace, "kubectl apply -f deploy/k8s/ must create the namespace first"
    for obj in objects[1:]:
        assert obj["metadata"].get("namespace") == namespace["metadata"]["name"], obj["metadata"]["name"]


def test_k8s_secret_holds_consistent_connection_settings() -> None:
    secrets = [s for s in _of_kind("Secret") if set(s.get("stringData", {})) >= URL_KEYS]
    assert len(secrets) == 1
    data = secrets[0]["stringData"]
    assert data.get("REDIS_PASSWORD")
    for key in URL_KEYS:
        url = urlsplit(data[key])
        assert url.scheme in {"redis", "rediss"}
        assert url.password == data["REDIS_PASSWORD"], f"{key} and REDIS_PASSWORD disagree"
    redis_services = {s["metadata"]["name"] for s in _of_kind("Service")}
    assert urlsplit(data["LSTMDET_BROKER_URL"]).hostname in redis_services


def test_k8s_redis_is_a_statefulset_with_its_own_volume() -> None:
    (redis,) = [s for s in _of_kind("StatefulSet") if s["metadata"]["name"] == "redis"]
    templates = redis["spec"]["volumeClaimTemplates"]
    assert templates
    (container,) = _containers(redis)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get("/data") in {t["metadata"]["name"] for t in templates}
    (service,) = [s for s in _of_kind("Service") if s["metadata"]["name"] == redis["spec"]["serviceName"]]
    assert service["spec"].get("clusterIP") == "None", "the StatefulSet's service should be headless"
    assert service["spec"]["selector"].items() <= _pod_spec_labels(redis).items()


def test_k8s_redis_takes_its_password_from_the_secret_and_keeps_an_aof() -> None:
    (redis,) = [s for s in _of_kind("StatefulSet") if s["metadata"]["name"] == "redis"]
    (container,) = _containers(redis)
    argv = _argv(container.get("command")) + _argv(container.get("args"))
    assert argv[0] == "redis-server"
    flags = _flags(argv)
    assert flags["--requirepass"] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e for e in container["env"]}
    ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    secrets = {s["metadata"]["name"]: s for s in _of_kind("Secret")}
    assert ref["key"] in secrets[ref["name"]]["stringData"]
    # The conf file comes from a ConfigMap that carries deploy/redis.conf as it is.
    conf_path = argv[1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod_spec(redis)["volumes"]}
    (volume,) = [name for name, path in mounts.items() if conf_path.startswith(path.rstrip("/") + "/")]
    config_maps = {c["metadata"]["name"]: c for c in _of_kind("ConfigMap")}
    text = config_maps[volumes[volume]["configMap"]["name"]]["data"][Path(conf_path).name]
    assert text == (DEPLOY / "redis.conf").read_text(encoding="utf-8"), "k8s/redis.yaml and redis.conf differ"
    assert flags.get("--appendonly", _redis_conf(text)["appendonly"][0]) == "yes"


def test_k8s_has_a_gpu_worker_and_a_cpu_worker() -> None:
    workers = _worker_deployments()
    gpu = [c for d in workers for c in _containers(d) if _is_worker(c) and _gpu_limit(c) > 0]
    cpu = [c for d in workers for c in _containers(d) if _is_worker(c) and _gpu_limit(c) == 0]
    assert gpu, "no worker Deployment asks for nvidia.com/gpu"
    assert cpu, "no CPU worker Deployment"
    for container in gpu:
        assert _gpu_limit(container) == 1, "one worker process per GPU"
        assert _flags(_argv(container["args"]))["--queues"] == "gpu"
    for container in cpu:
        flags = _flags(_argv(container["args"]))
        assert flags["--queues"] == "cpu"
        assert "--gpus" not in flags
        assert {"cpu"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])


@pytest.mark.parametrize("deployment", _worker_deployments(), ids=lambda d: d["metadata"]["name"])
def test_k8s_worker_gets_urls_from_the_secret(deployment: dict[str, Any]) -> None:
    secrets = {s["metadata"]["name"]: set(s.get("stringData", {})) | set(s.get("data", {})) for s in _of_kind("Secret")}
    for container in _containers(deployment):
        provided: set[str] = set()
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                provided |= secrets[source["secretRef"]["name"]]
        for entry in container.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets[ref["name"]]
                provided.add(entry["name"])
        assert provided >= URL_KEYS, f"{container['name']}: URLs not taken from a Secret"


@pytest.mark.parametrize("deployment", _worker_deployments(), ids=lambda d: d["metadata"]["name"])
def test_k8s_worker_pod_is_non_root_with_shared_data(deployment: dict[str, Any]) -> None:
    pod = _pod_spec(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 1) != 0
    # a draining worker checkpoints at its next step and hands its tasks back (tests/integration/test_failover.py)
    assert 30 <= pod["terminationGracePeriodSeconds"] <= 120, "time for one step, a checkpoint and the hand-back"
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    pvcs = {p["metadata"]["name"]: p for p in _of_kind("PersistentVolumeClaim")}
    for container in pod["containers"]:
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        claim = claims[mounts["/data"]]
        assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"], "workers on many nodes share /data"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("LSTMDET_DATA_ROOTS") == "/data"


# --------------------------------------------------------------------------------------------------------------------
# The worker command line
# --------------------------------------------------------------------------------------------------------------------


def test_worker_commands_use_only_flags_the_cli_accepts() -> None:
    commands = list(_worker_commands())
    places = {where.split()[0] for where, _ in commands}
    assert {"compose", "k8s", "Dockerfile"} <= places
    assert len(commands) >= 5
    for where, argv in commands:
        assert argv[0] == "worker", where
        flags = _flags(argv)
        assert set(flags) <= WORKER_FLAGS, f"{where}: {sorted(set(flags) - WORKER_FLAGS)} not accepted"
        assert flags.get("--queues") in {"gpu", "cpu"}, where
        assert all(value and not value.startswith("-") for value in flags.values()), f"{where}: flag without value"
        positional = [t for t in argv[1:] if not t.startswith("--") and t not in flags.values()]
        assert not positional, f"{where}: unexpected arguments {positional}"


def test_worker_commands_are_plans_the_launcher_accepts() -> None:
    """Each command line, parsed by lstmdet's own CLI, gives worker processes (nothing is started)."""
    from lstmdet.cli.main import build_parser
    from lstmdet.workers.launcher import parse_gpus, plan_workers

    for where, argv in _worker_commands():
        args = build_parser().parse_args(argv)
        gpus = parse_gpus(args.gpus)
        queues = (args.queues or ("gpu" if gpus else "cpu")).split(",")
        plans = plan_workers(queues=queues, gpus=gpus, concurrency=args.concurrency, cores=2)
        assert len(plans) == max(1, len(gpus)), where

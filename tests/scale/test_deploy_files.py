"""deploy/ as shipped: the Dockerfile, docker-compose.yml, haproxy.cfg, the YAML config and the Kubernetes manifests.

Proves: the three container commands (Dockerfile CMD, compose, Kubernetes) agree and parse with `aigw up`'s own
parser; the compose file's services, healthchecks, dependencies and mounted files hold together; every Kubernetes
object is a known kind, every reference (Secret keys, ConfigMap, probe ports, selectors, HPA/PDB targets) names
something defined in deploy/k8s, and kustomization.yaml lists every file; the configuration validates with the
project's own loader using exactly the variables the env file and the Secret provide; the image's command really
serves (readiness by the image's HEALTHCHECK, a 401 for a wrong key) and refuses to start on an empty secret.
`docker compose config`, `kubectl kustomize` and `haproxy -c` run when those tools are installed, else skip."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from aigw.cli import build_parser
from aigw.procs import RedisProcess, free_port, stop_process, wait_port
from store.config import ConfigError, parse_yaml, read_file, resolve
from tests.e2e.harness import BIN, ROOT, http, wait_until

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
METRICS_PORT, PROXY_PORT = 9464, 8081
KNOWN_KINDS = {("v1", "Namespace"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"),
               ("apps/v1", "Deployment"), ("autoscaling/v2", "HorizontalPodAutoscaler"),
               ("policy/v1", "PodDisruptionBudget"), ("networking.k8s.io/v1", "NetworkPolicy")}


# ------------------------------------------------------------------------------------------------------------
# Reading the files
# ------------------------------------------------------------------------------------------------------------

def _dockerfile() -> dict[str, list[str]]:
    """Instruction → its arguments (one string per occurrence), continuation lines joined, comments dropped."""
    out: dict[str, list[str]] = {}
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.setdefault(word.upper(), []).append(rest.strip())
        pending = ""
    return out


def _image_command() -> list[str]:
    docker = _dockerfile()
    return json.loads(docker["ENTRYPOINT"][-1]) + json.loads(docker["CMD"][-1])


def _healthcheck() -> list[str]:
    """The HEALTHCHECK's exec form (after its options)."""
    spec = _dockerfile()["HEALTHCHECK"][-1]
    return json.loads(spec[spec.index("CMD") + 3:].strip())


def _env_names(path: Path) -> list[str]:
    return [m.group(1) for m in re.finditer(r"(?m)^([A-Z][A-Z0-9_]*)=", path.read_text())]


def _dummy(names) -> dict[str, str]:
    return {name: f"dummy-{name.lower()}-0123456789" for name in names}


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _with(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced (or the flag added)."""
    if flag not in args:
        return [*args, flag, value]
    i = args.index(flag)
    return [*args[:i + 1], value, *args[i + 2:]]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
            for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"}


@pytest.fixture(scope="module")
def objects(manifests) -> dict[tuple[str, str], dict]:
    found: dict[tuple[str, str], dict] = {}
    for docs in manifests.values():
        for doc in docs:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def _pod(objects, name: str) -> dict:
    return objects[("Deployment", name)]["spec"]["template"]


# ------------------------------------------------------------------------------------------------------------
# The image and the commands
# ------------------------------------------------------------------------------------------------------------

def test_dockerfile_installs_the_package_sources_as_a_numeric_non_root_user():
    docker = _dockerfile()
    assert docker["FROM"] == ["python:3.13-slim"]
    assert any("pip install ." in run for run in docker["RUN"])
    # Every package pyproject.toml installs is copied in (and exists), with the files the build reads.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = {source for c in docker["COPY"] for source in c.split()[:-1]}
    for needed in [*packages, "pyproject.toml", project["project"]["readme"]]:
        assert needed in copied, f"deploy/Dockerfile does not COPY {needed}"
        assert (ROOT / needed).exists()
    user = docker["USER"][-1].split(":")[0]
    assert user.isdigit() and int(user) != 0  # runAsNonRoot can only verify a numeric user
    assert {int(p) for p in docker["EXPOSE"][-1].split()} == {PROXY_PORT, 8080, METRICS_PORT}
    assert json.loads(docker["ENTRYPOINT"][-1]) == ["aigw"]
    health = _healthcheck()
    assert health[:2] == ["python", "-c"] and f"127.0.0.1:{METRICS_PORT}/readyz" in health[2]
    assert (DEPLOY / "Dockerfile.dockerignore").exists()


def test_the_three_container_commands_agree_and_parse_with_aigw_up(compose, objects):
    image = _image_command()
    assert image[:2] == ["aigw", "up"]
    parser = build_parser()
    base = parser.parse_args(image[1:])
    assert base.config == "/etc/aigw/aigw.yaml" and base.proxy_host == "0.0.0.0" and base.no_admin
    assert base.metrics_listen == f"0.0.0.0:{METRICS_PORT}" and base.proxy_port == PROXY_PORT
    in_compose = compose["services"]["aigw"]["command"]
    in_k8s = _pod(objects, "aigw")["spec"]["containers"][0]["args"]
    # The same command plus the Redis each one runs, named by its service.
    assert in_compose == image[1:] + ["--redis", "redis://redis:6379/0"]
    assert in_k8s == image[1:] + ["--redis", "redis://aigw-redis:6379/0"]
    for args in (in_compose, in_k8s):
        assert parser.parse_args(args).redis.startswith("redis://")
    assert "redis" in compose["services"]
    assert ("Service", "aigw-redis") in objects


# ------------------------------------------------------------------------------------------------------------
# docker-compose.yml and haproxy.cfg
# ------------------------------------------------------------------------------------------------------------

def test_compose_services_build_healthchecks_dependencies_and_files(compose):
    services = compose["services"]
    assert set(services) >= {"redis", "aigw", "haproxy"}
    redis, aigw, haproxy = services["redis"], services["aigw"], services["haproxy"]
    assert redis["image"] == "redis:7-alpine"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]

    assert (DEPLOY / aigw["build"]["context"] / aigw["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert aigw["deploy"]["replicas"] >= 2 and "ports" not in aigw  # replicas share no host port
    assert aigw["healthcheck"]["test"] == ["CMD", *_healthcheck()]
    assert aigw["depends_on"]["redis"]["condition"] == "service_healthy"
    assert {str(p) for p in aigw["expose"]} == {str(PROXY_PORT), str(METRICS_PORT)}
    mounts = [v.split(":") for v in aigw["volumes"]]
    assert [_flag(aigw["command"], "--config"), "ro"] in [m[1:] for m in mounts]

    assert haproxy["image"] == "haproxy:2.8"
    assert f"{PROXY_PORT}:{PROXY_PORT}" in [str(p) for p in haproxy["ports"]]

    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"compose mounts {source}, which is not in deploy/"
        for entry in service.get("env_file", []):
            entry = {"path": entry} if isinstance(entry, str) else entry
            path = DEPLOY / entry["path"]
            if entry.get("required", True):
                assert path.is_file(), f"env_file {entry['path']} is required but missing"
            else:  # the user's own file: documented by its example
                assert path.with_name(path.name + ".example").is_file() or (DEPLOY / ".env.example").is_file()


def test_docker_compose_config_accepts_the_file():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no docker binary with the compose plugin")
    done = subprocess.run([docker, "compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_haproxy_cfg_discovers_the_replicas_and_checks_readyz(compose):
    text = (DEPLOY / "haproxy.cfg").read_text()
    lines = {" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.strip().startswith("#")}
    assert f"bind :{PROXY_PORT}" in lines
    assert f"server-template aigw 4 aigw:{PROXY_PORT} check port {METRICS_PORT} resolvers docker init-addr none" \
        in lines
    assert "option httpchk GET /readyz" in lines
    assert "retry-on conn-failure empty-response" in lines and any(ln.startswith("option redispatch") for ln in lines)
    assert "resolvers docker" in lines and "nameserver docker-dns 127.0.0.11:53" in lines
    # Stream-friendly: neither side's inactivity timeout is shorter than aigw's default total_timeout (600 s).
    for side in ("client", "server"):
        value = next(ln for ln in lines if ln.startswith(f"timeout {side} "))
        assert re.fullmatch(rf"timeout {side} (\d+)m", value) and int(value.split()[-1][:-1]) * 60 > 600
    assert "aigw" in compose["services"]  # the DNS name server-template resolves


def test_haproxy_accepts_the_config():
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed")
    # `haproxy -c` does not query the resolvers (init-addr none): the file passes as shipped, no DNS needed.
    done = subprocess.run([binary, "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------------------------------
# The configuration
# ------------------------------------------------------------------------------------------------------------

def test_the_config_validates_with_the_variables_the_env_file_and_the_secret_provide(objects):
    env_file = _dummy(_env_names(DEPLOY / ".env.example"))
    secret = _dummy(objects[("Secret", "aigw-provider-keys")]["stringData"])
    for env in (env_file, secret):
        desired = resolve(read_file(DEPLOY / "aigw.yaml", env))  # what `aigw config validate` runs
        assert {item.kind for item in desired.items} >= {"gateways", "upstreams", "services", "rules", "keys"}
    embedded = objects[("ConfigMap", "aigw-config")]["data"]["aigw.yaml"]
    assert embedded == (DEPLOY / "aigw.yaml").read_text(), "configmap.yaml must carry deploy/aigw.yaml as it is"
    resolve(parse_yaml(embedded, name="configmap.yaml:aigw.yaml", env=secret))
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):  # as shipped (empty values) it refuses to load
        resolve(read_file(DEPLOY / "aigw.yaml", {**secret, "OPENAI_API_KEY": ""}))


# ------------------------------------------------------------------------------------------------------------
# Kubernetes
# ------------------------------------------------------------------------------------------------------------

def test_k8s_objects_are_known_kinds_and_kustomization_lists_every_file(manifests):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(manifests)
    assert kustomization["namespace"] == manifests["namespace.yaml"][0]["metadata"]["name"]
    assert [i["name"] for i in kustomization["images"]] == ["aigw"]
    for name, docs in manifests.items():
        assert docs, f"{name} is empty"
        for doc in docs:
            assert (doc.get("apiVersion"), doc.get("kind")) in KNOWN_KINDS, f"{name}: {doc.get('kind')}"
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
            assert "namespace" not in doc["metadata"]  # kustomization.yaml sets it
            assert ("spec" in doc) == (doc["kind"] not in ("Namespace", "ConfigMap", "Secret")), name


def test_k8s_references_name_objects_defined_in_deploy_k8s(objects):
    deployments = [o for (kind, _), o in objects.items() if kind == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"aigw", "aigw-redis"}
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in objects
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in objects
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    secret = objects[("Secret", ref["secretKeyRef"]["name"])]
                    assert ref["secretKeyRef"]["key"] in secret["stringData"]
                if "configMapKeyRef" in ref:
                    config_map = objects[("ConfigMap", ref["configMapKeyRef"]["name"])]
                    assert ref["configMapKeyRef"]["key"] in config_map["data"]
            for source in container.get("envFrom", []):
                kind, key = ("ConfigMap", "configMapRef") if "configMapRef" in source else ("Secret", "secretRef")
                assert (kind, source[key]["name"]) in objects
            declared = {v["name"] for v in spec.get("volumes", [])}
            assert {m["name"] for m in container.get("volumeMounts", [])} <= declared
    hpa = objects[("HorizontalPodAutoscaler", "aigw")]["spec"]
    assert (hpa["scaleTargetRef"]["kind"], hpa["scaleTargetRef"]["name"]) == ("Deployment", "aigw")
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert objects[("PodDisruptionBudget", "aigw")]["spec"]["selector"]["matchLabels"] == \
        _pod(objects, "aigw")["metadata"]["labels"]


def test_k8s_services_select_their_pods_on_declared_ports(objects):
    for service_name, deployment_name, ports in (("aigw", "aigw", {PROXY_PORT, METRICS_PORT}),
                                                 ("aigw-redis", "aigw-redis", {6379})):
        service, deployment = objects[("Service", service_name)]["spec"], objects[("Deployment", deployment_name)]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert service["selector"].items() <= labels.items(), f"Service {service_name} selects no pod"
        (container, *_) = deployment["spec"]["template"]["spec"]["containers"]
        declared = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert {p["port"] for p in service["ports"]} == ports
        for port in service["ports"]:
            assert port["targetPort"] in declared or port["targetPort"] in declared.values()
    assert "metrics" in {p["name"] for p in objects[("Service", "aigw")]["spec"]["ports"]}


def test_k8s_proxy_pods_probe_readyz_and_livez_drain_and_are_bounded(objects):
    pod = _pod(objects, "aigw")["spec"]
    (container,) = pod["containers"]
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert declared == {"proxy": PROXY_PORT, "metrics": METRICS_PORT}
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        port = declared.get(get["port"], get["port"])
        assert port in declared.values(), f"{probe} targets an undeclared port"
        assert port == METRICS_PORT
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    for deployment in (o for (kind, _), o in objects.items() if kind == "Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and \
                {"cpu", "memory"} <= set(c["resources"]["limits"]), deployment["metadata"]["name"]
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(_dockerfile()["USER"][-1].split(":")[0])
    assert objects[("Deployment", "aigw")]["spec"]["replicas"] == 2
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and 0 < int(sleep[1]) < pod["terminationGracePeriodSeconds"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[os.path.dirname(_flag(container["args"], "--config"))].get("readOnly") is True
    assert "subPath" not in mounts["/etc/aigw"]  # a subPath mount never sees ConfigMap updates


def test_kubectl_kustomize_renders_the_manifests():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert len(rendered) == sum(1 for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
                                for d in yaml.safe_load_all(p.read_text()) if d)
    assert all(d["metadata"].get("namespace") == "aigw" for d in rendered if d["kind"] != "Namespace")
    images = [c["image"] for d in rendered if d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]]
    assert "aigw" not in images and any(i.endswith("/aigw:0.1.0") for i in images)


# ------------------------------------------------------------------------------------------------------------
# The image's command, run
# ------------------------------------------------------------------------------------------------------------

def _container_env(tmp_path: Path, values: dict[str, str]) -> dict[str, str]:
    """The environment of a container: no stray AIGW_* from this machine, HOME and AIGW_DATA in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_") and k not in values}
    return {**env, **values, "HOME": str(tmp_path / "home"), "AIGW_DATA": str(tmp_path / "state" / "aigw.json")}


@pytest.mark.timeout(90)
def test_the_compose_command_serves_becomes_ready_by_the_healthcheck_and_refuses_a_wrong_key(tmp_path, compose):
    """The compose service's command as the image runs it, on loopback ports, with a private Redis when one can run."""
    proxy_port, metrics_port = free_port(), free_port()
    args = compose["services"]["aigw"]["command"]
    args = _with(args, "--config", str(DEPLOY / "aigw.yaml"))
    args = _with(_with(args, "--proxy-host", "127.0.0.1"), "--proxy-port", str(proxy_port))
    args = _with(args, "--metrics-listen", f"127.0.0.1:{metrics_port}")
    redis = RedisProcess(tmp_path / "redis").start() if shutil.which("redis-server") else None
    args = _with(args, "--redis", redis.url) if redis else args[:args.index("--redis")]
    env = _container_env(tmp_path, _dummy(_env_names(DEPLOY / ".env.example")))
    health = [sys.executable, *_healthcheck()[1:]]
    health[-1] = health[-1].replace(f"127.0.0.1:{METRICS_PORT}", f"127.0.0.1:{metrics_port}")
    with open(tmp_path / "aigw.log", "wb") as log:
        proc = subprocess.Popen([str(BIN / "aigw"), *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=str(tmp_path))
    try:
        wait_port(proxy_port, 30, proc, what="aigw up")
        wait_until(lambda: proc.poll() is None and subprocess.run(health, capture_output=True, timeout=10)
                   .returncode == 0, timeout=30, interval=0.2)
        assert http("GET", f"http://127.0.0.1:{metrics_port}/livez").status == 200
        r = http("POST", f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
                 {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, {"X-Api-Key": "not-a-key"})
        assert r.status == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert (tmp_path / "home" / ".mitmproxy").is_dir()  # why the pods mount a writable home
    finally:
        stop_process(proc)
        if redis is not None:
            redis.stop()
    assert proc.returncode == 0, (tmp_path / "aigw.log").read_text()
    log_text = (tmp_path / "aigw.log").read_text()
    assert "unreachable" not in log_text or redis is None, log_text


@pytest.mark.timeout(60)
def test_the_image_command_with_the_env_file_as_shipped_exits_naming_the_empty_variable(tmp_path):
    args = _with(_image_command()[1:], "--config", str(DEPLOY / "aigw.yaml"))
    args = _with(_with(args, "--proxy-host", "127.0.0.1"), "--metrics-listen", "")
    shipped = {name: "" for name in _env_names(DEPLOY / ".env.example")}
    done = subprocess.run([str(BIN / "aigw"), *args], capture_output=True, text=True, timeout=30,
                          env=_container_env(tmp_path, shipped), cwd=str(tmp_path))
    assert done.returncode == 1
    assert re.search(r"environment variable OPENAI_API_KEY is empty", done.stderr), done.stderr

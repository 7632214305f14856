"""deploy/kubernetes/: the manifests parse, validate against the Kubernetes OpenAPI schemas (offline, through
kubernetes-validate), agree with the code (services, settings, bus identities, database roles, image, ports) and
keep the trust boundary on the network. No cluster: the kustomization is applied here as kustomize would for what
it uses (namespace, labels on objects and pod templates, the ConfigMap generator, the image), and compared with the
real kustomize's build where `kubectl` is installed."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared import bus_identities, kubernetes_objects, subjects
from shared.db_roles import DATABASE_SCHEMAS, PASSWORD_ENV_PREFIX
from shared.settings import GatewaySettings, Settings, env_names
from tests.unit.kubernetes_policies import Pod, egress_ip_blocks, reachable

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests are written for (pod user namespaces, `hostUsers`, and the `appArmorProfile`
# field) and the newest schema the validator ships.
VERSIONS = ("1.30", kubernetes_validate.latest_version())
WORKLOADS = ("Deployment", "StatefulSet", "Job")
SECRETISH = re.compile(r"PASSWORD|SECRET|_KEY$|ACCESS_KEY|DSN|TOKEN")
PLACEHOLDER = "0123456789abcdef" * 2  # what a Secret key holds in these tests: hex, as docs/deployment.md says
CLUSTER_PASSWORD = "RAILYARD_NATS_CLUSTER_PASSWORD"  # the NATS cluster port's credential, read by nats.conf


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((KUBE / "kustomization.yaml").read_text())


def _build() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/kubernetes` sends, for the transformers this kustomization uses."""
    kustomization = _kustomization()
    objects = [doc for resource in kustomization["resources"]
               for doc in yaml.safe_load_all((KUBE / resource).read_text()) if doc]
    for generator in kustomization["configMapGenerator"]:
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                        "data": {Path(f).name: (KUBE / f).read_text() for f in generator["files"]}})
    labels = {k: v for entry in kustomization["labels"] for k, v in entry["pairs"].items()}
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    for obj in objects:
        metadata = obj["metadata"]
        if obj["kind"] != "Namespace":
            metadata["namespace"] = kustomization["namespace"]
        metadata["labels"] = {**metadata.get("labels", {}), **labels}
        if obj["kind"] in WORKLOADS:
            template = obj["spec"]["template"]
            template["metadata"]["labels"] = {**template["metadata"]["labels"], **labels}
            for claim in obj["spec"].get("volumeClaimTemplates", []):
                claim["metadata"]["labels"] = {**claim["metadata"].get("labels", {}), **labels}
            for container in _containers(obj):
                container["image"] = images.get(container["image"], container["image"])
    return objects


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(obj)
    return [*spec.get("initContainers", []), *spec["containers"]]


OBJECTS = _build()


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def _service_deployments() -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == "Deployment"
            and o["metadata"]["labels"].get("app.kubernetes.io/component") == "service"}


def _resolved_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would set it: Secret keys as PLACEHOLDER (recorded as
    `secret:<name>/<key>` in a side table), `$(VAR)` expanded from the variables before it."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), entry["value"])
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = PLACEHOLDER
        else:
            env[entry["name"]] = "from-the-downward-api"
    return env


def _secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


def _settings_of(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a container's process reads, through the settings model (a bad value raises here)."""
    import os

    for name in [n for n in os.environ if n.startswith("RAILYARD_")]:
        monkeypatch.delenv(name)
    for name, value in _resolved_env(container).items():
        monkeypatch.setenv(name, value)
    return Settings()


# --- parse and validate --------------------------------------------------------------------------------------------


def test_every_file_parses_and_the_kustomization_lists_every_manifest():
    kustomization = _kustomization()
    manifests = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests, "a manifest is missing from kustomization.yaml (or extra)"
    for path in KUBE.glob("*.yaml"):
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents and all(isinstance(d, dict) for d in documents), path.name
    for generator in kustomization["configMapGenerator"]:
        for file in generator["files"]:
            assert (KUBE / file).resolve().is_relative_to(KUBE), "kustomize reads files below its folder only"
    names = [(o["kind"], o["metadata"]["name"]) for o in OBJECTS]
    assert len(names) == len(set(names)), "two objects share a kind and name"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(version):
    for obj in OBJECTS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {'.'.join(map(str, exc.path))}: {exc.message}")


def test_kustomize_builds_the_same_objects():
    """The real kustomize (`kubectl kustomize`, Debian's kubectl on this project's machines) builds what the tests
    above check, but for the generated ConfigMap's name hash and the references kustomize rewrites to it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    built = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    text = built.stdout
    for generator in _kustomization()["configMapGenerator"]:
        text = re.sub(rf"\b{generator['name']}-[a-z0-9]{{10}}\b", generator["name"], text)
    real = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(text) if o}
    assert real == {(o["kind"], o["metadata"]["name"]): o for o in OBJECTS}


def test_the_validator_refuses_a_broken_object():
    """The schema check above is not vacuous: a misspelt field and a wrong type are refused offline."""
    deployment = _one("Deployment", "gateway")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    _pod_spec(broken)["containers"][0]["livenesProbe"] = _pod_spec(broken)["containers"][0].pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "2"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


# --- the services --------------------------------------------------------------------------------------------------


def test_every_service_process_has_a_deployment_running_it():
    packages = sorted(p.parent.name for p in (REPO / "services").glob("*/__main__.py"))
    assert packages == sorted(subjects.SERVICES)
    deployments = _service_deployments()
    assert set(deployments) == {s.replace("_", "-") for s in packages}
    for service in packages:
        (container,) = _pod_spec(deployments[service.replace("_", "-")])["containers"]
        assert container["command"] == ["python", "-m", f"services.{service}"]


def test_every_railyard_variable_is_a_setting_or_a_bootstrap_password():
    known = env_names() | {f"{PASSWORD_ENV_PREFIX}{s.upper()}" for s in DATABASE_SCHEMAS} \
        | {bus_identities.password_variable(i) for i in bus_identities.identities()} | {CLUSTER_PASSWORD}
    for obj in OBJECTS:
        if obj["kind"] not in WORKLOADS:
            continue
        for container in _containers(obj):
            names = {e["name"] for e in container.get("env", [])}
            unknown = {n for n in names if n.startswith("RAILYARD_")} - known
            assert not unknown, f"{obj['metadata']['name']} sets variables nothing reads: {unknown}"


@pytest.mark.parametrize("service", subjects.SERVICES)
def test_each_service_reads_its_settings_its_identity_and_its_own_database_role(service, monkeypatch):
    spec = importlib.import_module(f"services.{service}.app").SPEC
    (container,) = _pod_spec(_service_deployments()[service.replace("_", "-")])["containers"]
    settings = _settings_of(container, monkeypatch)
    assert settings.env == "production"
    assert settings.nats.user == service and settings.nats.password == PLACEHOLDER
    assert settings.nats.url == "nats://nats:4222"
    assert str(settings.stack.data_dir) == "/var/lib/railyard"
    assert str(settings.probe_dir) == kubernetes_objects.PROBE_DIR
    if spec.migrations is not None:
        assert service in DATABASE_SCHEMAS
        assert settings.postgres.dsn == f"postgresql://railyard_{service}:{PLACEHOLDER}@postgres:5432/railyard"
    else:
        assert "RAILYARD_POSTGRES__DSN" not in _resolved_env(container), f"{service} keeps no tables"
    if spec.uses_object_store or service == "deployer":  # the deployer's replicas load models from it
        assert settings.s3.endpoint == "minio:9000" and settings.s3.secret_key == PLACEHOLDER
    refs = _secret_refs(container)
    assert refs["RAILYARD_NATS__PASSWORD"] == ("railyard-nats", service)
    # a service reads its own keys only: its bus identity, its database role, its own secrets
    allowed = {("railyard-nats", service), ("railyard-postgres", service), ("railyard-s3", "access-key"),
               ("railyard-s3", "secret-key"), ("railyard-auth", "admin-password"), ("railyard-auth", "client-secret"),
               ("railyard-auth", "client-secret-key"), ("railyard-registry", "secrets-key")}
    if service == "deployer":
        allowed.add(("railyard-nats", "engine"))
        assert refs["RAILYARD_NATS__ENGINE_PASSWORD"] == ("railyard-nats", "engine")
    assert set(refs.values()) <= allowed
    assert not {k for k in refs.values() if k[0] == "railyard-auth"} or service == "auth"
    assert not {k for k in refs.values() if k[0] == "railyard-registry"} or service == "registry"


def test_the_gateway_listens_where_the_image_and_settings_say(monkeypatch):
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    exposed = int(re.search(r"^EXPOSE (\d+)", dockerfile, re.M).group(1))
    assert exposed == GatewaySettings().port
    (container,) = _pod_spec(_one("Deployment", "gateway"))["containers"]
    settings = _settings_of(container, monkeypatch)
    assert settings.gateway.host == "0.0.0.0" and settings.gateway.port == exposed
    assert container["ports"] == [{"name": "http", "containerPort": exposed}]
    service = _one("Service", "gateway")
    assert service["spec"]["ports"] == [{"name": "http", "port": exposed, "targetPort": "http"}]
    scheduler = _pod_spec(_one("Deployment", "task-scheduler"))["containers"][0]
    scheduler_settings = _settings_of(scheduler, monkeypatch)
    assert (scheduler_settings.gateway.host, scheduler_settings.gateway.port) == ("gateway", exposed)
    assert scheduler_settings.tasks.install_from_index is False  # no egress to a package index


def test_every_platform_container_runs_the_image_of_the_dockerfile_as_its_user():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    uid = int(re.search(r"useradd --system --uid (\d+)", dockerfile).group(1))
    data_dir = re.search(r"RAILYARD_STACK__DATA_DIR=(\S+)", dockerfile).group(1)
    assert (uid, data_dir) == (kubernetes_objects.SERVICE_UID, kubernetes_objects.DATA_DIR)
    platform = [o for o in OBJECTS if o["kind"] in WORKLOADS
                and any(c.get("command", [""])[0] == "python" for c in _containers(o))]
    assert len(platform) == len(subjects.SERVICES) + 2  # and the two bootstrap Jobs
    for obj in platform:
        assert _pod_spec(obj)["securityContext"]["runAsUser"] == uid
        for container in _containers(obj):
            assert container["image"] == "railyard:local"
        mounts = {m["mountPath"] for c in _containers(obj) for m in c.get("volumeMounts", [])}
        if obj["metadata"]["labels"].get("app.kubernetes.io/component") == "service":
            assert data_dir in mounts and "/tmp" in mounts  # the root filesystem is read-only


def test_nats_postgres_and_minio_run_the_versions_docker_compose_pins():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for kind, name in (("StatefulSet", "nats"), ("StatefulSet", "postgres"), ("StatefulSet", "minio")):
        (container,) = _pod_spec(_one(kind, name))["containers"]
        assert container["image"] == compose[name]["image"], f"{name}: the same pinned version as docker-compose"


def test_every_container_has_requests_limits_probes_and_no_privilege():
    for obj in OBJECTS:
        if obj["kind"] not in WORKLOADS:
            continue
        spec = _pod_spec(obj)
        assert spec["automountServiceAccountToken"] is False, obj["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in _containers(obj):
            where = f"{obj['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
            assert security["readOnlyRootFilesystem"] is True, where
            assert security.get("privileged") is not True, where
            if obj["kind"] != "Job":
                assert {"livenessProbe", "readinessProbe"} <= set(container), f"{where} has no probes"
        # the sandbox's relaxations only where users' code is started, and only inside a pod user namespace
        unconfined = any(c["securityContext"].get("seccompProfile", {}).get("type") == "Unconfined"
                         for c in _containers(obj))
        runs_users_code = obj["spec"]["template"]["metadata"]["labels"].get("railyard.io/runs-users-code") == "true"
        assert unconfined == runs_users_code, obj["metadata"]["name"]
        if unconfined:
            assert spec["hostUsers"] is False
    # the Pod Security "baseline" level refuses those relaxations: the namespace must not enforce it (it warns)
    labels = _one("Namespace", "railyard")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["pod-security.kubernetes.io/warn"] == "baseline"
    sandboxing = {o["metadata"]["name"] for o in _service_deployments().values()
                  if o["spec"]["template"]["metadata"]["labels"].get("railyard.io/runs-users-code") == "true"}
    assert sandboxing == {"registry", "deployer", "task-scheduler"}
    # docker-compose lifts the same for the same services (its security_opt)
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert {name for name, entry in compose.items() if "seccomp=unconfined" in entry.get("security_opt", [])} == \
        sandboxing


def test_the_service_probes_read_the_files_the_services_write():
    for name, deployment in _service_deployments().items():
        (container,) = _pod_spec(deployment)["containers"]
        probe_dir = _resolved_env(container)["RAILYARD_PROBE_DIR"]
        assert container["readinessProbe"] == kubernetes_objects.file_probe("ready", 10, 3) | {}, name
        assert container["startupProbe"]["exec"]["command"] == kubernetes_objects.file_probe("live", 5, 1)["exec"][
            "command"]
        assert probe_dir == kubernetes_objects.PROBE_DIR
        liveness = container["livenessProbe"]
        if name == "gateway":  # its HTTP server answers
            assert liveness["httpGet"] == {"path": "/", "port": "http"}
        else:
            assert liveness["exec"] == kubernetes_objects.file_probe("live", 20, 3)["exec"]


def test_the_probe_command_passes_on_a_fresh_file_and_fails_on_a_missing_or_old_one(tmp_path):
    """The shell line of the probes, run here as the kubelet would run it in the pod (sh, find, grep)."""
    import os

    command = kubernetes_objects.file_probe("live", 5, 1)["exec"]["command"]
    local = [part.replace(kubernetes_objects.PROBE_DIR, str(tmp_path)) for part in command]
    assert subprocess.run(local).returncode != 0  # missing
    (tmp_path / "live").write_text("1\n")
    assert subprocess.run(local).returncode == 0
    os.utime(tmp_path / "live", (0, 0))  # written long ago: the loop stopped
    assert subprocess.run(local).returncode != 0


def test_no_secret_value_is_written_in_a_manifest():
    assert not [o for o in OBJECTS if o["kind"] == "Secret"], "Secrets are created by the operator, never committed"
    for obj in OBJECTS:
        if obj["kind"] not in WORKLOADS:
            continue
        for container in _containers(obj):
            for entry in container.get("env", []):
                if SECRETISH.search(entry["name"]) and "value" in entry:
                    # only a DSN composed from a Secret's variable, never a literal password
                    assert re.fullmatch(r"postgresql://\w+:\$\(\w+\)@postgres:5432/railyard", entry["value"]), entry


def test_the_database_bootstrap_job_holds_the_superuser_and_every_role_password():
    (container,) = _pod_spec(_one("Job", "db-roles"))["containers"]
    assert container["command"] == ["python", "-m", "shared.db_roles"]
    env = _resolved_env(container)
    assert env["RAILYARD_POSTGRES__DSN"] == f"postgresql://railyard:{PLACEHOLDER}@postgres:5432/railyard"
    refs = _secret_refs(container)
    for schema in DATABASE_SCHEMAS:
        assert refs[f"{PASSWORD_ENV_PREFIX}{schema.upper()}"] == ("railyard-postgres", schema)
    superuser = [o["metadata"]["name"] for o in OBJECTS if o["kind"] in WORKLOADS for c in _containers(o)
                 if ("railyard-postgres", "superuser") in _secret_refs(c).values()]
    assert sorted(superuser) == ["db-roles", "postgres"]


# --- NATS ----------------------------------------------------------------------------------------------------------


def test_every_bus_identity_has_a_credential_wired_and_only_its_holder_reads_it():
    nats = _one("StatefulSet", "nats")
    (server,) = _pod_spec(nats)["containers"]
    refs = _secret_refs(server)
    for identity in bus_identities.identities():
        assert refs[bus_identities.password_variable(identity)] == ("railyard-nats", identity), identity
    holders: dict[str, set[str]] = {}
    for obj in OBJECTS:
        if obj["kind"] not in WORKLOADS or obj["metadata"]["name"] == "nats":
            continue
        for container in _containers(obj):
            for secret, key in _secret_refs(container).values():
                if secret == "railyard-nats":
                    holders.setdefault(key, set()).add(obj["metadata"]["name"])
    expected = {s: {s.replace("_", "-")} for s in subjects.SERVICES}
    expected["engine"] = {"engine", "deployer"}  # the deployer hands it to the replicas it runs
    expected["bootstrap"] = {"bus-streams"}
    assert holders == expected  # `client` and `ops` are for people and other systems, no pod holds them


def test_the_nats_config_is_the_permissions_file_and_a_valid_three_node_cluster(tmp_path, monkeypatch):
    config_map = _one("ConfigMap", "nats-config")
    assert config_map["data"]["nats-auth.conf"] == bus_identities.render_authorization() == \
        bus_identities.AUTH_CONF.read_text(), "run `python -m shared.bus_identities`"
    conf = config_map["data"]["nats.conf"]
    nats = _one("StatefulSet", "nats")
    headless = nats["spec"]["serviceName"]
    assert _one("Service", headless)["spec"]["clusterIP"] == "None"
    # the cluster port asks every route for a credential (without one, any process reaching 6222 joined as a route
    # and got every subject past the bus permissions) and each route URL presents it; the URLs are composed in the
    # pod's environment, the password's variable first (Kubernetes expands $(VAR) of earlier entries only)
    (server,) = _pod_spec(nats)["containers"]
    cluster = re.search(r"^cluster \{(.*?)^\}", conf, re.S | re.M).group(1)
    authorization = re.search(r"authorization \{(.*?)\}", cluster, re.S)
    assert authorization, "the cluster port takes routes without a credential"
    assert re.findall(r"^\s*(user|password): (\S+)$", authorization.group(1), re.M) == [
        ("user", "route"), ("password", f"${CLUSTER_PASSWORD}")]
    assert _secret_refs(server)[CLUSTER_PASSWORD] == ("railyard-nats", "cluster")
    route_variables = re.findall(r"^\s*\$(NATS_ROUTE_\d)$", cluster, re.M)
    pod_env = [e["name"] for e in server["env"]]
    routes = {e["name"]: e["value"] for e in server["env"] if e["name"] in route_variables}
    assert [routes[name] for name in route_variables] == [
        f"nats://route:$({CLUSTER_PASSWORD})@nats-{i}.{headless}:6222" for i in range(nats["spec"]["replicas"])]
    assert len(routes) == 3 and all(pod_env.index(CLUSTER_PASSWORD) < pod_env.index(n) for n in routes)
    assert "sync_interval: always" in conf and "max_payload: 8388608" in conf

    # the bootstrap Job creates the platform's streams on every node of the cluster
    from shared.bus import stream_configs

    streams = _pod_spec(_one("Job", "bus-streams"))["containers"][0]
    bootstrap = _settings_of(streams, monkeypatch)
    assert bootstrap.nats.user == "bootstrap" and streams["command"] == ["python", "-m", "shared.bus_streams"]
    assert [c.num_replicas for c in stream_configs(bootstrap)] == [nats["spec"]["replicas"]] * 2
    # the real server parses it, with every password variable set (and refuses it when one is missing)
    binary = Path(sys.executable).with_name("nats-server")
    if not binary.exists():
        pytest.skip("nats-server (the embedded extra) is not installed")
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    env = {bus_identities.password_variable(i): PLACEHOLDER for i in bus_identities.identities()}
    env |= {"POD_NAME": "nats-0", CLUSTER_PASSWORD: PLACEHOLDER}
    env |= {name: url.replace(f"$({CLUSTER_PASSWORD})", PLACEHOLDER) for name, url in routes.items()}

    def check(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(binary), "-t", "-c", str(tmp_path / "nats.conf")], env=env, capture_output=True,
                              text=True, timeout=30)

    checked = check(env)
    assert checked.returncode == 0, checked.stderr + checked.stdout
    assert check({k: v for k, v in env.items() if k != bus_identities.password_variable("ops")}).returncode != 0
    refused = check({k: v for k, v in env.items() if k != CLUSTER_PASSWORD})
    assert refused.returncode != 0 and CLUSTER_PASSWORD in refused.stderr + refused.stdout


# --- the trust boundary on the network -----------------------------------------------------------------------------


def _pods() -> dict[str, Pod]:
    from services.deployer.kubernetes import replica_objects
    from services.task_scheduler.kubernetes import run_objects
    from tests.unit.test_kubernetes_rendering import a_plan, a_spec

    pods = {o["metadata"]["name"]: Pod(o["metadata"]["name"], o["spec"]["template"]["metadata"]["labels"])
            for o in OBJECTS if o["kind"] in WORKLOADS}
    settings = Settings()
    for obj in replica_objects("demo-1", a_spec(), 1, settings=settings, environ={}) + \
            run_objects(a_plan(), settings=settings):
        if obj["kind"] in WORKLOADS:
            labels = {**obj["spec"]["template"]["metadata"]["labels"], "app.kubernetes.io/part-of": "railyard"}
            pods[obj["metadata"]["labels"]["app.kubernetes.io/component"]] = Pod(obj["metadata"]["name"], labels)
    return pods


POLICIES = [o for o in OBJECTS if o["kind"] == "NetworkPolicy"]


def _reaches(pods: dict[str, Pod], source: str) -> set[tuple[str, int]]:
    return {(target, port) for target in pods for port in (4222, 6222, 5432, 9000, 18000)
            if target != source and reachable(POLICIES, pods[source], pods[target], port)}


def test_the_policies_use_only_what_the_evaluator_understands():
    for policy in POLICIES:
        spec = policy["spec"]
        for selector in [spec["podSelector"]] + [peer.get("podSelector", {}) for rule in
                                                 spec.get("ingress", []) + spec.get("egress", [])
                                                 for peer in rule.get("from", rule.get("to", []))]:
            assert set(selector) <= {"matchLabels"}, policy["metadata"]["name"]


def test_the_database_nats_and_object_store_are_reached_by_their_clients_only():
    pods = _pods()
    schema_pods = {s.replace("_", "-") for s in DATABASE_SCHEMAS} | {"db-roles"}
    assert {name for name in pods if reachable(POLICIES, pods[name], pods["postgres"], 5432)} == schema_pods
    bus = {s.replace("_", "-") for s in subjects.SERVICES} | {"bus-streams", "engine-replica"}
    assert {name for name in pods if reachable(POLICIES, pods[name], pods["nats"], 4222)} == bus
    assert {name for name in pods if reachable(POLICIES, pods[name], pods["nats"], 6222)} == {"nats"}
    store = {"assay-runner", "engine", "gateway", "log-store", "monitoring", "registry", "task-scheduler",
             "workflow-lineage", "deployer", "engine-replica", "task-run"}
    assert {name for name in pods if reachable(POLICIES, pods[name], pods["minio"], 9000)} == store


def test_task_runs_reach_the_gateway_and_engine_replicas_the_bus_and_object_store_only():
    pods = _pods()
    # the known gap (services/task_scheduler/kubernetes.py): MinIO's port, for the fetch step, with no key
    assert _reaches(pods, "task-run") == {("gateway", 18000), ("minio", 9000)}
    assert _reaches(pods, "engine-replica") == {("nats", 4222), ("minio", 9000)}
    assert _reaches(pods, "engine") == {("nats", 4222), ("minio", 9000)}
    assert _reaches(pods, "task-scheduler") == {("nats", 4222), ("postgres", 5432), ("minio", 9000),
                                                ("gateway", 18000)}
    assert {name for name in pods if reachable(POLICIES, pods[name], pods["gateway"], 18000)} == \
        {"task-scheduler", "task-run"}  # from inside the namespace; outside clients come through its ingress rule
    # nothing but the registry (external model registries) leaves the cluster, and never to a private range
    assert {name for name in pods if egress_ip_blocks(POLICIES, pods[name])} == {"registry"}
    for block in egress_ip_blocks(POLICIES, pods["registry"]):
        if block["cidr"] == "0.0.0.0/0":
            assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(block["except"])


SHARED_SETTINGS = {"RAILYARD_TASKS__MAX_TIMEOUT": ("task-scheduler", "monitoring")}
"""Settings more than one service reads, which must agree: the task scheduler's largest run timeout, which
monitoring's setup_continuous_training checks a timeout against at once (services/monitoring/continuous.py)."""


def test_services_that_read_a_shared_setting_get_the_same_value():
    deployments = _service_deployments()
    for name, services in SHARED_SETTINGS.items():
        values = {s: _resolved_env(_pod_spec(deployments[s])["containers"][0]).get(name) for s in services}
        assert None not in values.values() and len(set(values.values())) == 1, f"{name} differs: {values}"

"""The Kubernetes objects one deployment's engine replicas would get: a ConfigMap with the replica spec, a
Deployment of replicas (`python -m services.engine.replica`, as the local backend runs them), and a
HorizontalPodAutoscaler when the engine config asks for autoscaling.

Rendering only (shared/kubernetes_objects.py says what is and is not tested): the deployer still runs replicas with
its local backend (backend.py). A cluster backend would apply these objects with a Kubernetes client under a
ServiceAccount allowed to manage Deployments, ConfigMaps and HorizontalPodAutoscalers in its namespace, read the
replicas' state from the status subject as the local backend does, and delete the objects on undeploy.

What the objects keep from the local backend: the replica connects as `engine` (the Secret `railyard-nats`'s key
`engine`, never the deployer's identity), gets no database setting, the deployer's non-secret engine settings
(logs, sandbox limits), the same memory tuning, and runs users' code in its sandboxed workers inside the pod. A
redeploy changes the spec's ConfigMap name in the pod template: a rolling update that adds every new replica before
an old one goes (maxUnavailable 0), and a new replica counts only once its probe file says it loaded its models and
connected (shared/probe_files.py), as the local backend's hot swap waits for the new set to answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from services.deployer.backend import REPLICA_MEMORY_DEFAULTS
from shared import kubernetes_objects as k8s
from shared.messages.engine import ReplicaSpec
from shared.settings import Settings

SPEC_DIR = "/etc/railyard/replica"
SPEC_FILE = "spec.json"
CONFIGMAP_MAX_BYTES = 1024 * 1024  # the API server refuses a larger ConfigMap
# the deployer's settings a replica also reads; nothing secret (the bus and object-store keys come from Secrets)
PASSED_SETTINGS = ("RAILYARD_ENV", "RAILYARD_LOG_LEVEL", "RAILYARD_LOGS__", "RAILYARD_SANDBOX__",
                   "RAILYARD_NATS__REQUEST_TIMEOUT", "RAILYARD_NATS__CONNECT_TIMEOUT")
COMPONENT = "engine-replica"


def replica_objects(name: str, spec: ReplicaSpec, replicas: int, autoscale: tuple[int, int] | None = None,
                    cpu_target: float = 50.0, *, settings: Settings, environ: Mapping[str, str],
                    image: str = k8s.IMAGE) -> list[dict[str, Any]]:
    """The objects of deployment `name` (`<deploy_id>-<id>`), with the arguments of `LocalBackend.start`.
    `environ` is the deployer's environment (the settings passed on are picked from it)."""
    document = spec.model_dump_json()
    if len(document.encode()) > CONFIGMAP_MAX_BYTES:
        raise ValueError(f"the replica spec of {name} is {len(document)} bytes, above a ConfigMap's 1 MiB")
    digest = hashlib.sha256(document.encode()).hexdigest()[:10]
    base = k8s.dns_name("engine", name, limit=52)  # leaves room for the pod suffixes the Deployment adds
    labels = k8s.PART_OF | {"app.kubernetes.io/name": "engine", "app.kubernetes.io/component": COMPONENT,
                            "railyard.io/deployment": k8s.label_value(name)}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": k8s.dns_name(base, digest), "labels": labels},
                  "data": {SPEC_FILE: document}}
    cpus = float(spec.engine_config.get("cpus", 1))
    memory = k8s.quantity(spec.engine_config.get("memory"), "2Gi")
    env = [{"name": key, "value": value} for key, value in sorted(environ.items()) if key.startswith(PASSED_SETTINGS)]
    env += [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            *k8s.bus_env(settings, "engine"), *k8s.object_store_env(settings),
            {"name": "RAILYARD_STACK__DATA_DIR", "value": k8s.DATA_DIR},
            {"name": "RAILYARD_PROBE_DIR", "value": k8s.PROBE_DIR},
            # as backend.replica_environment: its memory settings, the deployer's own values first
            *({"name": name, "value": environ.get(name, value)} for name, value in REPLICA_MEMORY_DEFAULTS.items())]
    container = {
        "name": "engine",
        "image": image,
        # the replica id is the pod's name: its status subject is engine.<deployment>.replica.<pod name>.status
        "command": ["python", "-m", "services.engine.replica", f"{SPEC_DIR}/{SPEC_FILE}", "$(POD_NAME)"],
        "env": env,
        "startupProbe": k8s.file_probe("live", 5, 120),
        "livenessProbe": k8s.file_probe("live", 20, 3),
        "readinessProbe": k8s.file_probe("ready", 5, 2),
        "resources": {"requests": {"cpu": f"{round(cpus * 1000)}m", "memory": memory},
                      "limits": {"cpu": f"{round(cpus * 1000)}m", "memory": memory}},
        "securityContext": k8s.sandboxing_container_security(),
        "volumeMounts": [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
                         {"name": "data", "mountPath": k8s.DATA_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_labels = labels | k8s.BUS | k8s.OBJECT_STORE | k8s.RUNS_USERS_CODE
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": base, "labels": labels},
        "spec": {
            "replicas": max(autoscale[0], 1) if autoscale else replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/component": COMPONENT,
                                         "railyard.io/deployment": labels["railyard.io/deployment"]}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "100%"}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "hostUsers": False,  # the sandbox's namespaces: see sandboxing_container_security
                    "terminationGracePeriodSeconds": 45,  # a replica answers what it took, then stops
                    "securityContext": k8s.pod_security(),
                    "containers": [container],
                    "volumes": [{"name": "spec", "configMap": {"name": config_map["metadata"]["name"]}},
                                {"name": "data", "emptyDir": {"sizeLimit": "8Gi"}},  # the model cache
                                {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}],
                },
            },
        },
    }
    objects = [config_map, deployment]
    if autoscale is not None:
        # the local backend's target is a percent of one core per replica: the same as an average value in cores
        objects.append({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": base, "labels": labels},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": base},
                     "minReplicas": max(autoscale[0], 1), "maxReplicas": max(autoscale[1], 1),
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                         "type": "AverageValue", "averageValue": f"{round(cpu_target * 10)}m"}}}]},
        })
    return objects

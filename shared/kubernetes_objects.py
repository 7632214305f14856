"""The pieces of the Kubernetes objects Railyard renders at run time, shared by the deployer (engine replicas as
Deployments, services/deployer/kubernetes.py) and the task scheduler (task runs as Jobs,
services/task_scheduler/kubernetes.py), and matching the static manifests in deploy/kubernetes/.

Pure functions returning plain dicts (what `kubectl apply` or a Kubernetes client would send): no client, no API
server. What is tested (tests/unit/test_kubernetes_rendering.py): every rendered object validates against the
Kubernetes OpenAPI schemas (kubernetes-validate, offline), carries no secret value, gets the labels the manifests'
NetworkPolicies select on, and its environment parses through `Settings`. What is not: no backend creates these
objects on a cluster yet (the deployer runs replicas with its local backend, the scheduler runs tasks in its own
sandbox), and nothing here has run against an API server.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from shared.settings import Settings

IMAGE = "railyard"  # the image of deploy/Dockerfile; kustomization.yaml's `images:` maps it to a registry's
DATA_DIR = "/var/lib/railyard"
PROBE_DIR = "/var/lib/railyard/probes"
SERVICE_UID = 10001  # the image's `railyard` user (deploy/Dockerfile)
SECRET_NATS = "railyard-nats"  # one key per bus identity (deploy/nats-permissions.json)
SECRET_S3 = "railyard-s3"  # access-key, secret-key
PART_OF = {"app.kubernetes.io/part-of": "railyard"}

# labels the NetworkPolicies of deploy/kubernetes/network-policies.yaml select on
BUS = {"railyard.io/bus": "true"}
OBJECT_STORE = {"railyard.io/object-store": "true"}
REACHES_GATEWAY = {"railyard.io/reaches-gateway": "true"}
TASK_RUN = {"railyard.io/task-run": "true"}
RUNS_USERS_CODE = {"railyard.io/runs-users-code": "true"}

_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")


def dns_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1123 label made of `parts` (lowercased, anything else a dash). A name that had to be cut or changed
    gets a short hash of the original, so two different inputs never meet on one name."""
    raw = "-".join(parts)
    name = _NOT_DNS.sub("-", raw.lower()).strip("-")
    if name != raw or len(name) > limit:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = f"{name[:limit - 9].rstrip('-')}-{digest}"
    return name


def label_value(text: str) -> str:
    """A label value (63 characters of [a-z0-9A-Z-_.], alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return value.strip("-_.") or "x"


def quantity(text: Any, default: str) -> str:
    """A memory quantity as Kubernetes writes it (`2Gi`, `512Mi`), or `default` when `text` is not one."""
    return text if isinstance(text, str) and _QUANTITY.match(text) else default


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    """An environment variable read from a Secret's key: the value never appears in the object."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def bus_env(settings: Settings, identity: str) -> list[dict[str, Any]]:
    """The bus settings of a pod connecting as `identity`, its password from the Secret `railyard-nats`."""
    return [{"name": "RAILYARD_NATS__URL", "value": settings.nats.url},
            {"name": "RAILYARD_NATS__USER", "value": identity},
            secret_env("RAILYARD_NATS__PASSWORD", SECRET_NATS, identity)]


def object_store_env(settings: Settings) -> list[dict[str, Any]]:
    """The object-store settings, the keys from the Secret `railyard-s3`."""
    s3 = settings.s3
    return [{"name": "RAILYARD_S3__ENDPOINT", "value": s3.endpoint},
            {"name": "RAILYARD_S3__SECURE", "value": str(s3.secure).lower()},
            {"name": "RAILYARD_S3__REGION", "value": s3.region},
            {"name": "RAILYARD_S3__BUCKET_PREFIX", "value": s3.bucket_prefix},
            secret_env("RAILYARD_S3__ACCESS_KEY", SECRET_S3, "access-key"),
            secret_env("RAILYARD_S3__SECRET_KEY", SECRET_S3, "secret-key")]


def pod_security() -> dict[str, Any]:
    """The pod securityContext of every Railyard pod: the image's non-root user, the runtime's seccomp profile."""
    return {"runAsNonRoot": True, "runAsUser": SERVICE_UID, "runAsGroup": SERVICE_UID, "fsGroup": SERVICE_UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def restricted_container_security() -> dict[str, Any]:
    """A container that needs nothing: read-only root, no capability, no privilege escalation."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def sandboxing_container_security() -> dict[str, Any]:
    """A container whose process builds shared/sandbox.py's namespaces for users' code (registry, deployer, task
    scheduler, engine replicas): still non-root and without capabilities, but the runtime's seccomp and AppArmor
    profiles (which refuse a user namespace and mounts) and the masked /proc (which refuses a fresh procfs) are
    lifted, as docker-compose's security_opt does. Only in a pod with `hostUsers: false`."""
    return restricted_container_security() | {"procMount": "Unmasked", "seccompProfile": {"type": "Unconfined"},
                                              "appArmorProfile": {"type": "Unconfined"}}


def file_probe(name: str, period: int, failures: int) -> dict[str, Any]:
    """A probe passing while `<PROBE_DIR>/<name>` is younger than a minute (shared/probe_files.py)."""
    return {"exec": {"command": ["sh", "-c", f"find {PROBE_DIR}/{name} -mmin -1 | grep -q ."]},
            "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failures}

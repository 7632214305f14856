"""The Kubernetes objects one task run would get: a Secret with the run's token and a Job whose pod is the run's
sandbox (docs/security.md, "How, on each way of running", Kubernetes).

Rendering only (shared/kubernetes_objects.py says what is and is not tested): the scheduler still runs tasks in its
own sandbox (runner.py). A cluster backend would create the Secret, then the Job (and set the Job as the Secret's
owner, so deleting the Job deletes its token), follow the pod's log stream into the run's log lines, and delete the
Job on task/kill.

The pod, from the same plan as an in-process run (`runner.RunPlan`):
- `fetch` (init container, platform code): downloads the orchestration's zip and checks its sha256
  (fetch_orchestration.py). It is the only container with the object-store keys.
- `run` (users' code): `main.py` through the same bootstrap as the in-process sandbox, with exactly the run's
  environment (runner.run_env; the token from the Secret), no service account token, no service links, a
  read-only root, no capability, the image's non-root user, memory and CPU limits, the run's timeout as the Job's
  deadline, its disk quota as the size of its only writable volume, and no retry (a run runs once).
- Network: the pod is labelled `railyard.io/task-run` and `railyard.io/reaches-gateway` (network-policies.yaml:
  DNS and the gateway's port). It also carries `railyard.io/object-store` for the fetch step, so the run's own
  container could open a connection to MinIO's port, without any key; closing that needs a gateway route that
  serves a run its zip (not built).
Orchestrations with requirements are not rendered: their environment is built by the scheduler on its own disk.
"""

from __future__ import annotations

from typing import Any

from services.task_scheduler.runner import _BOOTSTRAP, RunPlan
from shared import kubernetes_objects as k8s
from shared.settings import Settings

ZIP_DIR = "/run/orchestration"
ZIP_FILE = "orchestration.zip"
WORK_DIR = "/work"
TOKEN_KEY = "token"
TOKEN_VARIABLE = "RAILYARD_CLIENT_TOKEN"
COMPONENT = "task-run"


def run_objects(plan: RunPlan, *, settings: Settings, image: str = k8s.IMAGE) -> list[dict[str, Any]]:
    """The Secret and the Job of one run. `plan.env` is `runner.run_env(...)` with `gateway_url` set to the
    gateway's Service (`http://gateway:18000`)."""
    if plan.env_dir is not None:
        raise ValueError("a run with its own requirements environment cannot be rendered as a Job yet")
    sha = plan.env["ORCH_SHA"]
    name = k8s.dns_name("task-run", plan.run_id)
    labels = k8s.PART_OF | {"app.kubernetes.io/name": "task-run", "app.kubernetes.io/component": COMPONENT,
                            "railyard.io/run": k8s.label_value(plan.run_id)}
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": name, "labels": labels},
              "stringData": {TOKEN_KEY: plan.env[TOKEN_VARIABLE]}}
    env = [{"name": key, "value": value} for key, value in plan.env.items() if key != TOKEN_VARIABLE]
    env += [k8s.secret_env(TOKEN_VARIABLE, name, TOKEN_KEY), {"name": "HOME", "value": WORK_DIR}]
    fetch = {
        "name": "fetch",
        "image": image,
        "command": ["python", "-m", "services.task_scheduler.fetch_orchestration", sha, f"{ZIP_DIR}/{ZIP_FILE}"],
        "env": [{"name": "RAILYARD_ENV", "value": settings.env}, *k8s.object_store_env(settings)],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "securityContext": k8s.restricted_container_security(),
        "volumeMounts": [{"name": "orchestration", "mountPath": ZIP_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    memory_mi = max(plan.memory_bytes >> 20, 64)
    run = {
        "name": "run",
        "image": image,
        "command": ["python", "-u", "-c", _BOOTSTRAP, f"{ZIP_DIR}/{ZIP_FILE}", plan.entrypoint],
        "workingDir": WORK_DIR,
        "env": env,
        "resources": {"requests": {"cpu": "250m", "memory": f"{min(memory_mi, 512)}Mi"},
                      "limits": {"cpu": "1", "memory": f"{memory_mi}Mi"}},
        "securityContext": k8s.restricted_container_security(),
        "volumeMounts": [{"name": "orchestration", "mountPath": ZIP_DIR, "readOnly": True},
                         {"name": "work", "mountPath": WORK_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,  # a run runs once; its failure is the run's result
            "activeDeadlineSeconds": plan.timeout,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels | k8s.TASK_RUN | k8s.REACHES_GATEWAY | k8s.OBJECT_STORE},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,  # no other Service's address in the run's environment
                    "securityContext": k8s.pod_security(),
                    "initContainers": [fetch],
                    "containers": [run],
                    "volumes": [
                        {"name": "orchestration", "emptyDir": {"sizeLimit": f"{settings.tasks.max_zip_bytes >> 20}Mi"}},
                        {"name": "work", "emptyDir": {"sizeLimit": f"{max(plan.disk_bytes >> 20, 1)}Mi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    ],
                },
            },
        },
    }
    return [secret, job]

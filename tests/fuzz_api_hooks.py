"""schemathesis hooks for `make fuzz-api`: aim a share of the generated requests at things that exist.

Loaded by schemathesis from its own environment (SCHEMATHESIS_HOOKS, set by tests/fuzz_api.py), so it imports
only the standard library and schemathesis. RAILYARD_FUZZ_SEEDS names the JSON file tests/fuzz_api_seed.py wrote
(real ids and names of the fuzz workspace). Before each call, a share of the requests (RAILYARD_FUZZ_SEED_SHARE,
default 0.5) get every field that names something (`workspace_id`, `pipeline_id`, `deployment`, `dataset_id`,
...: anywhere in the JSON body, in path and query parameters) replaced by the real one, so the rest of the
generated body reaches the handler instead of a 404. Which requests is decided from the request itself, so a
run is as reproducible as schemathesis's `--seed` makes it.

Destructive routes (delete, undeploy, kill, remove, revoke, disable, deactivate) are never aimed, and are shielded:
a value there that names a seeded thing (hypothesis likes small ids, and schemathesis reuses ids it saw in answers)
is replaced by one that names nothing, so one request cannot take the seed away from the rest of the run. Routes
that start work (deploy, run a task) are aimed at a tenth of the share, so the run does not turn into starting
replicas and sandboxes.

The seeded registry points at a closed port: its routes' 503 `unavailable` ("the registry did not answer") is the
right answer for a registry that is down, so that one failure is dropped (`filter_failure`).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

import schemathesis

SEEDS: dict[str, Any] = json.loads(Path(os.environ["RAILYARD_FUZZ_SEEDS"]).read_text())
SHARE = float(os.environ.get("RAILYARD_FUZZ_SEED_SHARE", "0.5"))

DESTRUCTIVE = re.compile(r"/(delete\w*|undeploy|kill|remove\w*|revoke\w*|disable\w*|deactivate|update_password)$")
COSTLY = re.compile(r"/(pipelines/deploy|pipelines/copy|task/run_once|task/run_scheduled|"
                    r"deployments/setup_continuous_training|models/upload_from_registry)$")

# field -> seed key, whatever the route
FIELDS = {
    "workspace_id": "workspace_id", "user_id": "user_id", "client_id": "client_id", "models_pk_id": "model_pk",
    "source_pipeline": "pipeline_pk", "pipeline_version_pk_id": "pipeline_version_pk",
    "deployment_id": "deployment_id", "deploy_id": "pipeline_name", "pipeline_name": "pipeline_name",
    "deployment": "deployment_name", "model_name": "model_name", "assay_id": "assay_id",
    "orch_id": "orchestration_id", "orchestration_id": "orchestration_id", "task_id": "task_id",
    "input_task_id": "task_id", "output_task_id": "task_id", "project_id": "project_id",
    "version_id": "version_id", "connection_id": "connection_id", "registry_id": "registry_id",
    "report_id": "report_id", "prediction_id": "prediction_id",
}
LISTS = {"user_ids": "user_id", "report_ids": "report_id"}  # a list of the one seeded id
# `id` and `name` mean what the route is about
IDS = [(re.compile(r"/models/get(_by_id)?$"), "model_pk"), (re.compile(r"/models/\w*registr"), "registry_id"),
       (re.compile(r"/assays/"), "assay_id"), (re.compile(r"/connections/"), "connection_id"),
       (re.compile(r"/task/get_logs_for_run$"), "run_id"), (re.compile(r"/task/"), "task_id")]
NAMES = [(re.compile(r"/connections/get$"), "connection_name"), (re.compile(r"/status/get_deployment$"),
                                                                  "deployment_name"),
         (re.compile(r"/models/download$"), "model_name")]
# inside these objects, `name`/`version`/`sha` are a model version's
MODEL_REFS = {"models", "model_version", "model_versions", "champion", "challengers"}


def _route(path: str) -> str:
    return path.removeprefix("/v1/api")


def _digest(route: str, case) -> int:
    """A stable function of the route and what was generated: whether to aim the request, and which of several
    seeds (the datasets) to use."""
    try:
        text = json.dumps([route, case.body, case.path_parameters, case.query], sort_keys=True, default=repr)
    except (TypeError, ValueError):
        text = repr((route, case.body, case.path_parameters, case.query))
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def _aimed(route: str, digest: int) -> bool:
    if DESTRUCTIVE.search(route):
        return False
    share = SHARE / 10 if COSTLY.search(route) else SHARE
    return digest / 2**32 < share


def _pick(key: str, salt: int) -> Any:
    value = SEEDS.get(key)
    return value[salt % len(value)] if isinstance(value, list) else value


def _field(route: str, key: str, current: Any, in_model_ref: bool, salt: int) -> str | None:
    """The seed key for `key` in this route and place; None to leave the generated value."""
    if in_model_ref:
        return {"name": "model_name", "version": "model_version", "sha": "model_sha"}.get(key)
    if key == "pipeline_id":
        return "pipeline_name" if isinstance(current, str) else "pipeline_pk"
    if key == "model_id":
        return "model_name" if isinstance(current, str) else "model_version_id"
    if key == "dataset_id":
        return "dataset_ids"
    if key == "sha":
        return "orchestration_sha" if route.startswith("/task/") else "model_sha"
    if key in LISTS:
        return key
    if key == "id":
        return next((seed for pattern, seed in IDS if pattern.search(route)), None)
    if key == "name":
        return next((seed for pattern, seed in NAMES if pattern.search(route)), None)
    if key == "version" and route == "/models/download":
        return "model_version"
    return FIELDS.get(key)


def _aim(route: str, value: Any, salt: int, in_model_ref: bool = False) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            seed = _field(route, key, item, in_model_ref, salt)
            if seed in LISTS:
                out[key] = [SEEDS[LISTS[seed]]]
            elif seed is not None and SEEDS.get(seed) is not None:
                out[key] = _pick(seed, salt)
            else:
                out[key] = _aim(route, item, salt, in_model_ref or key in MODEL_REFS)
        return out
    if isinstance(value, list):
        return [_aim(route, item, salt, in_model_ref) for item in value]
    return value


NOWHERE_ID = 2_000_000_001
NOWHERE_UUID = "00000000-0000-4000-8000-00000000dead"
SEEDED = {value for value in SEEDS.values() if isinstance(value, (int, str))
          and not isinstance(value, bool)} | {value for value in SEEDS.get("dataset_ids", [])}


def _shield(value: Any, keep_workspace: bool) -> Any:
    """`value` with every seeded id or name in it replaced by one that names nothing."""
    if isinstance(value, dict):
        return {key: item if key == "workspace_id" and keep_workspace else _shield(item, keep_workspace)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_shield(item, keep_workspace) for item in value]
    if type(value) in (int, str) and value in SEEDED:
        return NOWHERE_ID if isinstance(value, int) else NOWHERE_UUID if len(value) == 36 else "nowhere"
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    """Aim a share of the requests at the seeded things, shield them from destructive ones (module docstring)."""
    route = _route(case.operation.path)
    if DESTRUCTIVE.search(route):
        keep = not route.startswith("/workspaces/")  # removing the admin from the fuzz workspace would end the run
        if isinstance(case.body, (dict, list)):
            case.body = _shield(case.body, keep)
        for container in (case.path_parameters, case.query):
            for key in list(container or {}):
                container[key] = _shield(container[key], keep)
        return
    salt = _digest(route, case)
    if not _aimed(route, salt):
        return
    if isinstance(case.body, (dict, list)):
        case.body = _aim(route, case.body, salt)
    if case.path_parameters:
        for key in list(case.path_parameters):
            if key in ("model", "deployment"):
                case.path_parameters[key] = SEEDS["deployment_name"]
            elif key == "pipeline":
                case.path_parameters[key] = SEEDS["pipeline_name"]
    if case.query and "dataset_id" in case.query:
        case.query["dataset_id"] = _pick("dataset_ids", salt)


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """Keep every failure but the seeded registry's "did not answer" (it points at a closed port on purpose)."""
    if response.status_code == 503 and "/models/" in case.operation.path and "registr" in case.operation.path:
        try:
            return response.json().get("code") != "unavailable"
        except ValueError:
            return True
    return True

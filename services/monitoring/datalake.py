"""`target_datalake`: the images dataset (workflow lineage) that receives a deployment's new predictions.

`update(target_datalake=...)` names it by id or by name (unique in the deployment's workspace) and is refused when it
does not resolve to an images dataset of that workspace. Each new prediction (predict or monitor) then adds its image
to it as `<prediction id>.png|jpg` with the prediction as the file's labels, with the caller's rights. Writing is
best effort: the prediction is stored first and stays whatever happens to the dataset (a dataset deleted since is
logged, the answer's `datalake_file` is then null)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from shared import subjects
from shared.authz import Principal
from shared.bus import request
from shared.errors import InvalidRequest, NotFound
from shared.lean_imports import lazy_module
from shared.messages.base import INT64
from shared.objectstore import BUCKET_DATASETS
from shared.staging import staged_key

if TYPE_CHECKING:
    from shared.messages import lineage
else:
    # the lineage service's models (~40 ms of a start, ~2 MiB of RSS; shared/messages/__init__.py) built by the first
    # command that uses them, not when the service starts (its restart is ~70 % imports)
    lineage = lazy_module("shared.messages.lineage")


async def resolve(broker: Any, token: str | None, timeout: float, workspace_id: int,
                  target: str) -> lineage.DatasetInfo:
    """The images dataset `target` names (its id, or its name when one dataset of the workspace has it), seen with
    the caller's rights."""
    if target.isascii() and target.isdigit() and int(target) <= INT64[1]:  # else a name (int('²') fails)
        info = await request(broker, subjects.LINEAGE_DATASETS_GET, lineage.DatasetRef(dataset_id=int(target)),
                             token=token, timeout=timeout, reply_model=lineage.DatasetInfo)
        if info.workspace_id != workspace_id:
            raise InvalidRequest(f"dataset {target} is in another workspace than the deployment: give a dataset of "
                                 f"workspace {workspace_id}")
    else:
        projects = await request(broker, subjects.LINEAGE_PROJECTS_LIST,
                                 lineage.ListProjects(workspace_id=workspace_id), token=token, timeout=timeout,
                                 reply_model=lineage.Projects)
        found = [dataset for project in projects.projects for dataset in project.datasets if dataset.name == target]
        if not found:
            raise NotFound(f"no dataset named {target!r} in workspace {workspace_id}: create an images dataset or give "
                           "a dataset's id")
        if len(found) > 1:
            raise InvalidRequest(f"{len(found)} datasets of workspace {workspace_id} are named {target!r}: give the "
                                 "dataset's id instead")
        info = found[0]
    if info.kind != "images":
        raise InvalidRequest(f"dataset {info.name!r} is {lineage.a_dataset_of_kind(info.kind)}: target_datalake"
                             " takes an images dataset")
    return info


def file_name(prediction_id: uuid.UUID, content_type: str) -> str:
    """The prediction's file in the dataset."""
    return f"{prediction_id}.{'jpg' if content_type == 'image/jpeg' else 'png'}"


def file_labels(prediction_id: uuid.UUID, kind: str, origin: str, prediction: dict[str, Any],
                labels: list[str] | None, source: str | None, tags: list[str]) -> dict[str, Any]:
    """The labels of a prediction's file: the prediction (the seed's PredictionFormat) and its label names, and for
    boxes COCO-style `boxes` ([x, y, width, height] with `category`), as the feedback loop writes reviews."""
    written: dict[str, Any] = {"kind": kind, "origin": origin, "prediction_id": str(prediction_id),
                               "prediction": prediction, "source": source, "tags": tags}
    if labels:
        written["labels"] = [labels[c] for c in prediction["detection_classes"]]
    if prediction.get("detection_boxes") is not None:
        written["boxes"] = [{"bbox": [b[1], b[0], b[3] - b[1], b[2] - b[0]], "category": c}
                            for c, b in zip(prediction["detection_classes"], prediction["detection_boxes"],
                                            strict=True)]
    return written


async def write(broker: Any, objects: Any, token: str | None, timeout: float, dataset: lineage.DatasetInfo,
                name: str, data: bytes, content_type: str, labels: dict[str, Any], owner: Principal) -> str:
    """Add the image to the dataset (staged in object storage, which the lineage service takes over); its name.
    `owner`: the principal `token` verified as (the lineage service takes a staged upload from its stager's user and
    token scope only)."""
    staged = staged_key(owner)
    await objects.put_bytes(BUCKET_DATASETS, staged, data, content_type=content_type)
    try:
        await request(broker, subjects.LINEAGE_DATASETS_ADD_FILE, lineage.AddDatasetFile(
            dataset_id=dataset.id, name=name, staged_key=staged, labels=labels), token=token, timeout=timeout)
    except Exception:
        await objects.delete(BUCKET_DATASETS, staged)
        raise
    return name

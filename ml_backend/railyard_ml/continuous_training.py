"""Railyard's continuous training of an ML backend: the task run that calls the backend's `fit` on reviewed
predictions and registers what it learned as a new version of the backend's model.

Railyard's monitoring service registers a tiny orchestration (`orchestration_zip()`: a `main.py` calling `main()`)
in the deployment's workspace and starts it as a task run, so `fit` runs in the task scheduler's sandbox with the
run's short-lived token, never inside a Railyard service. The run:

1. downloads the model version to start from (`ml_backend.name` / `ml_backend.version` of its task arguments: a
   package made by `railyard-ml deploy railyard`) and unpacks it, its state restored into a fresh model directory
   as `railyard_step.StepModel.load` does;
2. turns the reviewed predictions of the attached datasets (the feedback loop writes each as an image file whose
   labels are `{kind, decision, prediction_id, ground_truth}`) into Label Studio tasks with one annotation each
   (`review_task`): a classification's top class as `choices`, boxes as `rectanglelabels` and a segmentation's
   polygons as `polygonlabels` (with a PolygonLabels control), in percent of the image;
   class ids index the labels of the labeling config's control, in the config's order;
3. calls `fit` through the server's own dispatch (`Backend.train_once`: 1.x `fit(annotations, workdir)` or 2.x
   `fit(event, data)` with a `START_TRAINING` event, `set` calls held until `fit` returned and the new instance
   loaded), with the continuous training's `experiment_parameters` as keywords; a `fit` that raises, or learns
   nothing, ends the run with status 1 and registers nothing, so the serving version stays;
4. packages the backend with its new state (`railyard_step.package`) and uploads it as a new version of the same
   model (`framework="custom"`), which Railyard links to the training and hands to continuous deployment.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ORCHESTRATION_NAME = "railyard-ml continuous training"
MAIN = '''"""Railyard's built-in continuous training of an ML backend (railyard_ml/continuous_training.py)."""
from railyard_ml.continuous_training import main

main()
'''
# keywords the server's dispatch passes itself: experiment parameters of these names are not forwarded
RESERVED = frozenset({"event", "data", "annotations", "workdir", "job_id", "project"})


def orchestration_zip() -> bytes:
    """The built-in orchestration: the same bytes every time (fixed member dates), so one sha256 per release."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("main.py", date_time=(2026, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        archive.writestr(info, MAIN)
    return buffer.getvalue()


def _control(parsed: dict[str, Any], kind: str) -> tuple[str, dict[str, Any]] | None:
    """The labeling config's control for a review kind: Choices for classification, RectangleLabels (or Labels
    over an image) for boxes, PolygonLabels for segmentation (else its boxes, as a detection's); the first such
    control over an object with a value."""
    preferences = {"classification": [("Choices",)], "detection": [("RectangleLabels", "Labels")],
                   "segmentation": [("PolygonLabels",), ("RectangleLabels", "Labels")]}
    for wanted in preferences.get(kind, preferences["detection"]):
        for name, control in parsed.items():
            if control.get("type") in wanted and control.get("to_name") and control.get("inputs"):
                return name, control
    return None


def review_task(task_id: int, data_ref: str, labels: dict[str, Any], parsed_config: dict[str, Any],
                size: tuple[int, int] | None = None) -> dict[str, Any] | None:
    """A reviewed prediction (a feedback-loop file's labels) as a Label Studio task with one annotation, or None
    when the labeling config has no control for its kind or its classes are outside the control's labels.
    `data_ref` is what the task's data holds for the image (a local path); `size` (width, height) is needed for
    boxes and polygons, which Label Studio keeps in percent of the image. A segmentation's polygons become
    `polygonlabels` when the config has a PolygonLabels control (else its boxes become `rectanglelabels`)."""
    truth = labels.get("ground_truth") if isinstance(labels, dict) else None
    if not isinstance(truth, dict) or not truth.get("detection_classes"):
        return None
    kind = labels.get("kind") or ("classification" if not truth.get("detection_boxes") else "detection")
    found = _control(parsed_config, kind)
    if found is None:
        return None
    from_name, control = found
    to_name, value = control["to_name"][0], control["inputs"][0]["value"]
    names = control.get("labels") or []
    classes = [int(c) for c in truth["detection_classes"]]
    if any(not 0 <= c < len(names) for c in classes):
        return None
    result: list[dict[str, Any]] = []
    if kind == "classification":
        scores = truth.get("detection_scores") or []
        top = max(range(len(classes)), key=lambda i: scores[i]) if len(scores) == len(classes) else 0
        result.append({"id": f"r{task_id}-0", "from_name": from_name, "to_name": to_name, "type": "choices",
                       "origin": "manual", "value": {"choices": [names[classes[top]]]}})
    elif control.get("type") == "PolygonLabels":
        if size is None or len(truth.get("detection_masks") or []) != len(classes):
            return None
        width, height = size
        for index, (cls, polygon) in enumerate(zip(classes, truth["detection_masks"], strict=True)):
            points = [[100.0 * float(x) / width, 100.0 * float(y) / height]
                      for x, y in zip(polygon[0::2], polygon[1::2], strict=False)]
            result.append({
                "id": f"r{task_id}-{index}", "from_name": from_name, "to_name": to_name, "type": "polygonlabels",
                "origin": "manual", "original_width": width, "original_height": height, "image_rotation": 0,
                "value": {"points": points, "closed": True, "polygonlabels": [names[cls]]}})
    else:
        if size is None:
            return None
        width, height = size
        for index, (cls, box) in enumerate(zip(classes, truth.get("detection_boxes") or [], strict=False)):
            top_, left, bottom, right = (float(v) for v in box)
            result.append({
                "id": f"r{task_id}-{index}", "from_name": from_name, "to_name": to_name, "type": "rectanglelabels",
                "origin": "manual", "original_width": width, "original_height": height, "image_rotation": 0,
                "value": {"x": 100.0 * left / width, "y": 100.0 * top_ / height,
                          "width": 100.0 * (right - left) / width, "height": 100.0 * (bottom - top_) / height,
                          "rotation": 0, "rectanglelabels": [names[cls]]}})
    meta = {"railyard": {"decision": labels.get("decision"), "prediction_id": labels.get("prediction_id")}}
    return {"id": task_id, "data": {value: data_ref},
            "annotations": [{"id": task_id, "task": task_id, "result": result, "was_cancelled": False,
                             "ground_truth": False, "meta": meta}]}


def _restore(folder: Path, model_dir: Path) -> tuple[str, dict[str, str]]:
    """A package's shipped state into a fresh model directory (paths rewritten, its run's files copied back)."""
    from railyard_ml.railyard_step import STATE
    from railyard_ml.store import Store

    state = json.loads((folder / STATE / "state.json").read_text())
    project_id = state["project_id"]
    run_copy = model_dir / (project_id or "_") / "restored"
    if (folder / STATE / "run").is_dir():
        shutil.copytree(folder / STATE / "run", run_copy)
    values = {}
    for key, value in state["values"].items():
        if state["run_dir"]:
            value = value.replace(state["run_dir"], str(run_copy))
        values[key] = value.replace(state["model_dir"], str(model_dir))
    Store(model_dir).set_many(project_id, values)
    return project_id, values


class FitFailed(Exception):
    """`fit` raised, or learned nothing: no new model version."""


def reviewed_files(client: Any, datasets: dict[str, dict[str, Any]]) -> Iterator[tuple[str, bytes, dict]]:
    """(name, bytes, labels) of the reviewed predictions in the `train` dataset (every attached dataset when none
    is named `train`), each review once (a review written to two datasets is the same task). A dataset whose
    `version_id` is set is read as that project version saved it."""
    from railyard_client import Lineage

    lineage = Lineage(client, client.current_workspace().id)
    chosen = [datasets["train"]] if "train" in datasets else list(datasets.values())
    seen: set[str] = set()
    for ref in chosen:
        dataset_id, version_id = int(ref["dataset_id"]), ref.get("version_id")
        for record in lineage.files(dataset_id, version_id):
            labels = record.get("labels")
            if not isinstance(labels, dict) or "ground_truth" not in labels:
                continue
            key = str(labels.get("prediction_id") or record["name"])
            if key not in seen:
                seen.add(key)
                yield record["name"], lineage.download_file(dataset_id, record["name"], version_id), labels


def fit_package(archive: bytes, work: Path, files: Iterable[tuple[str, bytes, dict]],
                parameters: dict[str, Any] | None = None, event_extra: dict[str, Any] | None = None
                ) -> tuple[bytes, dict[str, Any]]:
    """Fit the backend of a `railyard-ml deploy railyard` package on reviewed files, in `work`: the new package
    and what happened (`tasks`, `skipped`, `version`, `train_output`). FitFailed when `fit` raised or learned
    nothing."""
    from railyard_ml.backend import Backend
    from railyard_ml.cli import load_model_class
    from railyard_ml.label_config import parse_config
    from railyard_ml.railyard_step import package

    unpacked = work / "package"
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        zipped.extractall(unpacked)
    folder = unpacked / "backend"
    model_dir = (work / "models").resolve()
    project_id, values = _restore(folder, model_dir)
    label_config = values.get("label_config") or ""
    parsed = parse_config(label_config)
    image_dir = work / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    tasks: list[dict[str, Any]] = []
    skipped = 0
    for name, data, labels in files:
        path = image_dir / f"{len(tasks) + 1}-{Path(name).name}"
        path.write_bytes(data)
        size = None
        if labels.get("kind") != "classification":
            from PIL import Image

            with Image.open(path) as image:
                size = image.size
        task = review_task(len(tasks) + 1, str(path), labels, parsed, size)
        if task is None:
            skipped += 1
            path.unlink()
        else:
            tasks.append(task)
    print(f"fitting on {len(tasks)} reviewed prediction(s) ({skipped} skipped: nothing in the labeling config "
          "holds them)", flush=True)
    backend = Backend(load_model_class(folder), model_dir)
    backend.store.replace_tasks(project_id, tasks)
    parameters = dict(parameters or {})
    for name in sorted(RESERVED & parameters.keys()):
        print(f"experiment parameter {name!r} not passed to fit: the dispatch passes {name} itself", flush=True)
        parameters.pop(name)
    event = {"action": "START_TRAINING", "project": {"id": project_id, "label_config": label_config},
             **(event_extra or {})}
    run = backend.train_once(project_id, "START_TRAINING", event, parameters)
    if run["status"] != "ok":
        why = run["error"] if run["status"] == "failed" else "fit returned nothing and stored nothing"
        raise FitFailed(f"fit did not produce a new model ({run['status']}): {why}")
    new_archive, shipped = package(folder, project_id, None, model_dir)
    output = backend.store.get(project_id, "train_output")
    return new_archive, {"tasks": len(tasks), "skipped": skipped, "version": shipped["model_version"],
                         "train_output": json.loads(output) if output else None}


def main() -> None:
    """The task run's entrypoint (see the module docstring); exits 1 when `fit` fails or learns nothing."""
    from railyard_client import Client, task_args

    args = task_args()
    start = args["ml_backend"]
    client = Client()
    archive = client.download_model(start["name"], start.get("version"))
    print(f"fitting {start['name']} from version {start.get('version') or 'latest'}", flush=True)
    try:
        new_archive, done = fit_package(
            archive, Path.cwd() / "railyard-ml-fit", reviewed_files(client, args.get("datasets") or {}),
            args.get("experiment_parameters"),
            {"railyard": {"training_id": args.get("training_id"), "reviews": args.get("reviews")}})
    except FitFailed as exc:
        print(f"{exc}; the serving version stays", file=sys.stderr, flush=True)
        sys.exit(1)
    version = client.upload_model(start["name"], new_archive, framework="custom", progress=False)
    print(f"registered {start['name']} version {version.version}: backend version {done['version']}, "
          f"train_output {json.dumps(done['train_output'])}", flush=True)

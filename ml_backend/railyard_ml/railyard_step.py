"""A backend folder as a Railyard bring-your-own-predict step (what `railyard-ml deploy railyard` uploads).

The zip holds the backend's script, `railyard-ml.json`, `requirements.txt` (checked by Railyard's engine, not
installed: railyard-ml and the script's packages must be installed where the engine runs), one project's state
(`railyard_state/state.json`: its cache values, so `train_output`, the model version and whatever `set` stored;
and the files of its latest successful training run) and `railyard_ml_step.py`, the `mac` Inference/Builder pair
the engine loads. The step takes one column, `task` (a Label Studio task as JSON, or just its `data` object), and
answers `prediction` (the prediction as JSON), `score` and `model_version`: inference, logs and drift assays then
work as for any other Railyard pipeline. Paths under the backend's model directory in the state are rewritten to
the unpacked copy; `fit` does not run in the deployment (train where the backend runs, deploy again).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import weakref
import zipfile
from pathlib import Path
from typing import Any

from railyard_ml.backend import Backend
from railyard_ml.label_config import parse_config
from railyard_ml.model import LabelStudioMLBase, _constructing, _Construction
from railyard_ml.store import ProjectCache, Store

STATE = "railyard_state"

STEP_SCRIPT = '''"""Railyard step of a Label Studio ML backend (written by `railyard-ml deploy railyard`)."""

import numpy as np
from mac.inference import Inference
from mac.inference.creation import InferenceBuilder

from railyard_ml.railyard_step import StepModel


class LabelStudioBackendInference(Inference):
    @property
    def expected_model_types(self):
        return {StepModel}

    def _predict(self, input_data):
        predictions, scores, versions = self.model.predict_input(input_data)
        return {"prediction": np.array(predictions, dtype=object), "score": np.array(scores, dtype=np.float64),
                "model_version": np.array(versions, dtype=object)}


class LabelStudioBackendBuilder(InferenceBuilder):
    @property
    def inference(self):
        return LabelStudioBackendInference()

    def create(self, config):
        inference = self.inference
        inference.model = StepModel.load(config.model_path)
        return inference
'''


def package(folder: str | Path, project: str | None = None, label_config: str | None = None,
            model_dir: str | Path | None = None) -> tuple[bytes, dict]:
    """The zip of a backend folder for Railyard, and what went in it (project, version, label config)."""
    folder = Path(folder)
    config = json.loads((folder / "railyard-ml.json").read_text())
    model_dir = Path(model_dir or folder / "models")
    store = Store(model_dir) if (model_dir / "railyard-ml.db").exists() else None
    projects = store.projects() if store else []
    if project is None and len(projects) > 1:
        raise ValueError(f"the backend has state for projects {', '.join(projects)}: name one with --project")
    project = project if project is not None else (projects[0] if projects else "")
    values: dict[str, str] = {}
    run_dir = None
    if store and project in projects:
        for key in ("label_config", "parsed_label_config", "model_version", "train_output", "extra_params",
                    "railyard_ml.trained", "railyard_ml.initial_version"):
            value = store.get(project, key)
            if value is not None:
                values[key] = value
        with store._lock, store._connect() as db:  # every key the model stored, not only the known ones
            values.update(dict(db.execute("SELECT key, value FROM cache WHERE project_id = ?", (project,))))
        finished = [run for run in store.runs(project) if run["status"] == "ok"]
        if finished:
            run_dir = model_dir / project / finished[-1]["job_id"]
    if label_config is not None:
        parse_config(label_config)
        values["label_config"] = label_config
    if not values.get("label_config"):
        raise ValueError("no labeling config: the backend has not been set up by Label Studio for this project "
                         "yet, so pass --label-config FILE")
    state = {"project_id": project, "model_dir": str(model_dir.resolve()), "values": values,
             "run_dir": str(run_dir.resolve()) if run_dir else None}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("backend/requirements.txt", (folder / "requirements.txt").read_text())
        archive.writestr("backend/railyard-ml.json", json.dumps(config))
        archive.write(folder / config["script"], f"backend/{config['script']}")
        archive.writestr("backend/railyard_ml_step.py", STEP_SCRIPT)
        archive.writestr(f"backend/{STATE}/state.json", json.dumps(state))
        if run_dir and run_dir.is_dir():
            for path in sorted(run_dir.rglob("*")):
                if path.is_file():
                    archive.write(path, f"backend/{STATE}/run/{path.relative_to(run_dir)}")
    return buffer.getvalue(), {"project": project, "model_version": values.get("model_version"),
                               "model_class": config["model_class"]}


# each object's data in the task `check_label_config` makes: a data: URI, which `get_local_path` reads without a
# request (a plain name would be fetched from LABEL_STUDIO_URL when set)
CHECK_VALUE = "data:,railyard-ml-deploy-check"


def check_label_config(archive: bytes, label_config: str) -> None:
    """Build the model of a package (`package`) as the deployment will, and run its `predict` on one task made from
    the labeling config's objects (each object's data key holding a placeholder); raise ValueError when the model
    cannot use the config: its construction failed, or `predict` asked the config for what it lacks (a
    `LabelConfigMismatch`: `get_first_tag_occurence`, `get_control`). Such a config deployed, and every inference
    was refused (e.g. an image classifier given a text config: no <Choices> over <Image>). Anything else predict
    raises on the placeholder data (an image it cannot open, a model not trained yet) is no verdict on the config."""
    import shutil
    import sys

    from railyard_ml.label_config import LabelConfigMismatch, _parse

    with tempfile.TemporaryDirectory(prefix="railyard-ml-check-") as unpacked:
        with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
            zipped.extractall(unpacked)
        folder = Path(unpacked) / "backend"
        try:
            step = StepModel.load(folder)
        except Exception as exc:  # noqa: BLE001 - the user's model: say what it raised
            raise ValueError(f"the model cannot be built with this labeling config ({type(exc).__name__}: {exc}); "
                             "the deployment would build it the same way") from None
        finally:
            if str(folder) in sys.path:
                sys.path.remove(str(folder))
        try:
            data: dict[str, Any] = {}
            for entry in _parse(label_config)[1].values():
                if "value" in entry:
                    data[entry["value"]] = CHECK_VALUE
                else:
                    data[entry["valueList"]] = [CHECK_VALUE]
            try:
                step.model.predict([{"id": 1, "data": data}])
            except LabelConfigMismatch as exc:
                raise ValueError(f"the model cannot use this labeling config: {exc}; every inference of the "
                                 "deployment would be refused. Give the config the backend was written for "
                                 "(--label-config)") from None
            except Exception:  # noqa: BLE001, S110 - the placeholder data, not the config (docstring)
                pass
        finally:
            shutil.rmtree(step.model.model_dir, ignore_errors=True)  # StepModel.load's working copy


class StepModel:
    """The backend's model, loaded from an unpacked package, answering rows of tasks."""

    def __init__(self, model: LabelStudioMLBase, project_id: str) -> None:
        self.model = model
        self.project_id = project_id

    @classmethod
    def load(cls, folder: str | Path) -> StepModel:
        import importlib
        import sys

        folder = Path(folder)
        config = json.loads((folder / "railyard-ml.json").read_text())
        state = json.loads((folder / STATE / "state.json").read_text())
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        model_class = getattr(importlib.import_module(Path(config["script"]).stem), config["model_class"])
        # the model's working copy: removed with the StepModel (collected, or at the process's exit) or when the
        # load fails; before, every load left a railyard-ml-* folder in the temporary directory for good
        work = Path(tempfile.mkdtemp(prefix="railyard-ml-"))
        try:
            store = Store(work)
            run_copy = str(folder / STATE / "run")
            values = {}
            for key, value in state["values"].items():
                if state["run_dir"]:
                    value = value.replace(state["run_dir"], run_copy)
                values[key] = value.replace(state["model_dir"], str(work))
            project_id = state["project_id"]
            store.set_many(project_id, values)
            cache = ProjectCache(store, project_id)
            token = _constructing.set(_Construction(cache=cache, model_dir=str(work)))
            try:
                model = model_class(project_id=project_id, label_config=values["label_config"])
            finally:
                _constructing.reset(token)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        loaded = cls(model, project_id)
        weakref.finalize(loaded, shutil.rmtree, str(work), ignore_errors=True)
        return loaded

    def predict_input(self, input_data: dict[str, Any]) -> tuple[list[str], list[float], list[str]]:
        """The step's input columns (the engine's dict of arrays) to predictions: the column `task` is the tasks.
        (Packages made before 2026-12-05 call predict_json with the column, and met a KeyError without it.)"""
        if "task" not in input_data:
            raise ValueError(f"the input needs a column 'task' holding Label Studio tasks as JSON text, e.g. "
                             f"[{{\"task\": \"{{\\\"data\\\": {{\\\"text\\\": \\\"great\\\"}}}}\"}}]; "
                             f"got {', '.join(map(repr, input_data)) or 'no column'}")
        return self.predict_json(list(input_data["task"]))

    def predict_json(self, rows: list[Any]) -> tuple[list[str], list[float], list[str]]:
        """Rows of tasks (JSON text or objects; a bare `data` object is wrapped) to predictions as JSON."""
        tasks = []
        for index, row in enumerate(rows):
            try:
                task = json.loads(row) if isinstance(row, str | bytes) else row
            except ValueError as exc:  # the request's fault, said as such (a JSONDecodeError deep in json was all)
                raise ValueError(f"row {index}: 'task' is not JSON ({exc}): send a Label Studio task (or its data) "
                                 "as JSON text") from None
            if not isinstance(task, dict):
                raise ValueError(f"row {index}: 'task' must be a JSON object (a Label Studio task or its data)")
            tasks.append(task if "data" in task else {"id": index, "data": task})
        version = self.model.get("model_version") or self.model.INITIAL_MODEL_VERSION
        answer = self.model.predict(tasks)
        predictions = Backend._predictions(answer, len(tasks), version)
        firsts = [p[0] if isinstance(p, list) and p else p for p in predictions]
        return ([json.dumps(p) for p in predictions], [float(p.get("score") or 0.0) for p in firsts],
                [str(p.get("model_version") or version) for p in firsts])

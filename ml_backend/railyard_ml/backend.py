"""The backend's runtime: the model instance serving each project, and its training runs.

Serving: one instance per project, built on first use (and again when the project's labeling config changes),
kept between requests so a model loads once. `predict` runs in a worker thread.

Training: a webhook (or the legacy `/train`) records the annotations it carries and asks for a run; runs of one
project go one at a time, and events arriving meanwhile collapse into one more run afterwards. A run builds a
fresh instance whose `set` calls are held back, calls `fit`, then builds the instance that will serve the new
version; only when all of that worked do the held writes, the new `train_output` and the new version land and
the new instance replace the old one. A `fit` that raises (or a model that fails to load its own training output)
leaves the previous model serving and the run recorded as failed.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from railyard_ml.errors import BadModelOutput, InvalidRequest, LabelConfigRequired, LabelConfigUnfit, MLBackendError
from railyard_ml.label_config import LabelConfigMismatch
from railyard_ml.model import (
    TRAINED_KEY,
    LabelStudioMLBase,
    _constructing,
    _Construction,
    config_reads,
    next_version,
)
from railyard_ml.response import ModelResponse
from railyard_ml.store import PendingWrites, ProjectCache, Store

logger = logging.getLogger(__name__)

INITIAL_KEY = "railyard_ml.initial_version"


def project_id_of(project: Any) -> str:
    """Label Studio names a project `<id>.<created timestamp>`; the id is what a backend keys on."""
    text = str(project).split(".", 1)[0].strip()
    if not text or not text.replace("-", "").replace("_", "").isalnum():
        raise InvalidRequest(f"project must look like '<id>' or '<id>.<timestamp>', got {str(project)[:40]!r}")
    return text


def _accepts(function: Callable, **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments `function` can take (all of them when it has **kwargs)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return kwargs
    names = {p.name for p in parameters}
    return {key: value for key, value in kwargs.items() if key in names}


def fit_convention(model_class: type[LabelStudioMLBase]) -> str:
    """'event' for fit(event, data, **kwargs) (label-studio-ml 2.x), 'annotations' for fit(annotations, workdir)."""
    parameters = [p for p in inspect.signature(model_class.fit).parameters.values() if p.name != "self"]
    first = parameters[0] if parameters else None
    if first is None or first.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
        return "event"
    return "event" if first.name == "event" else "annotations"


def to_jsonable(value: Any) -> Any:
    """Predictions as plain JSON (numpy numbers and arrays included, without importing numpy)."""
    if hasattr(value, "model_dump"):  # ours, or another pydantic model (label-studio-sdk's PredictionValue)
        return to_jsonable(value.model_dump())
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# What reading an absent labeling config (model._NoConfig: empty) leads to: `list(...items())[0]` an IndexError,
# `[name]` a KeyError, `next(iter(...))` a StopIteration, `(a, b), = ...items()` a ValueError, utils'
# get_single_tag_keys an AssertionError, get_first_tag_keys's (None, None) used a TypeError or an AttributeError. A
# model that read the config only to see whether it has one (`if self.parsed_label_config:`, a default otherwise: it
# needs none) and then failed for something else (a file, the GPU, a connection, its own RuntimeError) was answered
# 400 label_config_required, told to send a config that changes nothing; those stay the 500 model_error they are.
_EMPTY_CONFIG_FAILURES = (LookupError, StopIteration, AssertionError, TypeError, AttributeError, ValueError)


def _failed_on_no_config(exc: BaseException, label_config: str | None, reads: list) -> bool:
    """Whether a model failing with `exc` failed for want of a labeling config: none was there, it read it
    (`reads`, model.config_reads), and `exc` is what reading nothing leads to (_EMPTY_CONFIG_FAILURES; a
    StopIteration out of a predict run in the thread pool arrives as the RuntimeError it causes)."""
    if label_config or not reads:
        return False
    if isinstance(exc, RuntimeError) and isinstance(exc.__cause__, StopIteration):
        exc = exc.__cause__
    return isinstance(exc, _EMPTY_CONFIG_FAILURES)


def _config_refusal(exc: Exception, project_id: str, label_config: str | None, where: str) -> MLBackendError:
    """The 400 for a model failing over the labeling config: one that asked it for a control it lacks
    (railyard_ml.label_config's LabelConfigMismatch, from get_first_tag_occurence or get_control), or one that had
    no config at all (none sent, none set up for the project) and failed after reading its `parsed_label_config`
    as reading nothing fails (_failed_on_no_config; model._NoConfig: `list(self.parsed_label_config.items())[0]`,
    a 1.x backend's first line, is an IndexError).
    Without a config the request could have carried it, `label_config_required`; with one, it does not fit the
    model, `label_config_mismatch`. Any other failure of the model's constructor or predict stays a 500
    `model_error`: nothing the request could have changed is known to be the cause."""
    if not label_config:
        project = f"project {project_id!r}" if project_id else "this request (no project)"
        return LabelConfigRequired(
            f"{where} needs a labeling config and none was sent or set up for {project} (the model's "
            f"{type(exc).__name__}: {exc}): send the project's labeling config as label_config with /predict (Label "
            "Studio sends it), or as schema to /setup first")
    return LabelConfigUnfit(f"{where}: the labeling config does not fit the model: {exc}; send a labeling config "
                            "with the control the model asks for, or serve a model made for this config")


@dataclass
class _Serving:
    instance: LabelStudioMLBase
    label_config: str | None


@dataclass
class _Training:
    running: bool = False
    pending: list[tuple[str, dict, str]] = field(default_factory=list)
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class Backend:
    """Serves one model class for any number of Label Studio projects."""

    def __init__(self, model_class: type[LabelStudioMLBase], model_dir: str | Path, **init_kwargs: Any) -> None:
        if not (isinstance(model_class, type) and issubclass(model_class, LabelStudioMLBase)):
            raise TypeError("the model class must inherit from railyard_ml.LabelStudioMLBase")
        self.model_class = model_class
        self.model_dir = Path(model_dir).resolve()  # run folders are named in train_output: keep them absolute
        self.store = Store(self.model_dir)
        self.init_kwargs = init_kwargs
        self.convention = fit_convention(model_class)
        self.trains = model_class.fit is not LabelStudioMLBase.fit
        self._serving: dict[str, _Serving] = {}
        self._build_locks: dict[str, asyncio.Lock] = {}
        self._training: dict[str, _Training] = {}
        # the last job id given (_new_job_id); from the file's newest, so ids keep increasing over restarts even
        # when the clock went back meanwhile (an id is its run's key and /versions' order)
        self._last_job = self.store.last_job_id()
        self._hosts: dict[str, tuple[str, str]] = {}  # project -> (hostname, access token); memory only

    # --- building instances
    def _build(self, project_id: str, label_config: str | None, cache: ProjectCache,
               train_output: dict | None = None) -> LabelStudioMLBase:
        hostname, token = self._hosts.get(project_id, ("", ""))
        token_ = _constructing.set(_Construction(cache=cache, hostname=hostname, access_token=token,
                                                 model_dir=str(self.model_dir)))
        try:
            kwargs = dict(project_id=project_id, label_config=label_config, train_output=train_output,
                          hostname=hostname, access_token=token, **self.init_kwargs)
            reads: list = []
            reading = config_reads.set(reads)
            try:
                return self.model_class(**_accepts(self.model_class.__init__, **kwargs))
            except Exception as exc:
                if isinstance(exc, LabelConfigMismatch) or _failed_on_no_config(exc, label_config, reads):
                    raise _config_refusal(exc, project_id, label_config, "building the model") from exc
                raise
            finally:
                config_reads.reset(reading)
        finally:
            _constructing.reset(token_)

    async def model_for(self, project_id: str, label_config: str | None) -> LabelStudioMLBase:
        """The instance serving `project_id`, built (or rebuilt for a new labeling config) when needed."""
        lock = self._build_locks.setdefault(project_id, asyncio.Lock())
        async with lock:
            serving = self._serving.get(project_id)
            if serving is None or (label_config is not None and label_config != serving.label_config):
                # what the constructor stores (the config, the first version) lands only once it succeeded: a
                # refused config or a failing constructor is a bad request, and a bad request changes nothing
                cache = PendingWrites(self.store, project_id)
                config = label_config if label_config is not None else cache.get("label_config")
                instance = await run_in_threadpool(self._build, project_id, config, cache)
                if cache.writes:
                    await run_in_threadpool(self.store.set_many, project_id, cache.writes)
                instance._cache = ProjectCache(self.store, project_id)
                serving = self._serving[project_id] = _Serving(instance, config)
            return serving.instance

    def version(self, project_id: str) -> str:
        return self.store.get(project_id, "model_version") or self.model_class.INITIAL_MODEL_VERSION

    # --- routes' work
    async def setup(self, project: Any, label_config: str | None, hostname: str | None, access_token: str | None,
                    extra_params: Any) -> str:
        project_id = project_id_of(project)
        if hostname or access_token:
            self._hosts[project_id] = (hostname or "", access_token or "")
        model = await self.model_for(project_id, label_config)
        if extra_params:
            model.set_extra_params(extra_params)
        return self.version(project_id)

    async def predict(self, tasks: list[dict], project: Any, label_config: str | None, params: dict) -> dict:
        project_id = project_id_of(project) if project is not None else ""
        model = await self.model_for(project_id, label_config)
        params = dict(params)
        context = params.pop("context", None)
        kwargs = _accepts(model.predict, context=context, **params)
        reads: list = []
        reading = config_reads.set(reads)
        try:
            answer = await run_in_threadpool(model.predict, tasks, **kwargs)
        except Exception as exc:
            serving = self._serving.get(project_id)
            config = serving.label_config if serving else label_config
            if isinstance(exc, LabelConfigMismatch) or _failed_on_no_config(exc, config, reads):
                raise _config_refusal(exc, project_id, config, "predict") from exc
            raise
        finally:
            config_reads.reset(reading)
        version = self.version(project_id)
        return {"results": self._predictions(answer, len(tasks), version), "model_version": version}

    @staticmethod
    def _predictions(answer: Any, count: int, version: str) -> list:
        if isinstance(answer, ModelResponse):
            if answer.has_model_version():
                answer.update_predictions_version()
            else:
                answer.set_version(version)
            answer = answer.predictions
        elif isinstance(answer, dict):
            answer = answer.get("predictions", answer)
        answer = to_jsonable([] if answer is None else answer)
        if not isinstance(answer, list):
            raise BadModelOutput(f"predict must return a list of predictions, got {type(answer).__name__}")
        if len(answer) != count:
            raise BadModelOutput(f"predict returned {len(answer)} predictions for {count} tasks "
                                 "(Label Studio needs one per task, in task order)")
        for one in answer:
            for prediction in one if isinstance(one, list) else [one]:
                if not isinstance(prediction, dict) or not isinstance(prediction.get("result"), list):
                    raise BadModelOutput("each prediction must be an object with a 'result' list")
                if not prediction.get("model_version"):
                    prediction["model_version"] = version
        return answer

    def record_annotations(self, event: str, data: dict, project_id: str) -> None:
        """Keep the annotated tasks that webhooks carry: they are what `fit(annotations, ...)` trains on."""
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"):
            tasks = data.get("task")
            annotations = data.get("annotation")
            tasks = tasks if isinstance(tasks, list) else [tasks]
            annotations = annotations if isinstance(annotations, list) else [annotations]
            known = {str(task["id"]): task for task in self.store.annotated_tasks(project_id)}
            for task in tasks:
                if isinstance(task, dict) and "id" in task:
                    known.setdefault(str(task["id"]), {**task, "annotations": []})
                    known[str(task["id"])]["data"] = task.get("data", known[str(task["id"])].get("data"))
            changed = set()
            for annotation in annotations:
                if not isinstance(annotation, dict) or "task" not in annotation:
                    continue
                task = known.get(str(annotation["task"]))
                if task is None:
                    continue
                task["annotations"] = [a for a in task.get("annotations", []) if a.get("id") != annotation.get("id")]
                task["annotations"].append(annotation)
                changed.add(str(annotation["task"]))
            self.store.upsert_tasks(project_id, [known[task_id] for task_id in changed])
        elif event in ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED"):
            gone = data.get("annotations") or [data.get("annotation")]
            ids = {item.get("id") if isinstance(item, dict) else item for item in gone}
            tasks = self.store.annotated_tasks(project_id)
            for task in tasks:
                task["annotations"] = [a for a in task.get("annotations", []) if a.get("id") not in ids]
            self.store.replace_tasks(project_id, [task for task in tasks if task["annotations"]])

    def submit_training(self, project_id: str, event: str, data: dict, label_config: str | None) -> str:
        """Ask for a training run of `project_id`; returns its job id (runs go one at a time per project)."""
        if label_config is not None:
            self.store.set(project_id, "label_config", label_config)
        job_id = self._new_job_id()
        state = self._training.setdefault(project_id, _Training())
        self.store.queue_run(project_id, job_id, event)
        state.pending.append((event, data, job_id))
        state.idle.clear()
        if not state.running:
            state.running = True
            asyncio.get_running_loop().create_task(self._train_loop(project_id, state))
        return job_id

    def _new_job_id(self) -> str:
        """Microseconds since the epoch, strictly increasing in this model directory (a job id is its run's key)."""
        self._last_job = max(time.time_ns() // 1000, self._last_job + 1)
        return str(self._last_job)

    async def _train_loop(self, project_id: str, state: _Training) -> None:
        try:
            while state.pending:
                # events that arrived while a run was going collapse into one run on the newest data
                batch, state.pending = state.pending, []
                event, data, job_id = batch[-1]
                folded = [(e, j) for e, _, j in batch[:-1]]
                for _, skipped in folded:
                    logger.info("project %s: run %s folded into run %s", project_id, skipped, job_id)
                try:
                    await run_in_threadpool(self.store.drop_queued, project_id, [j for _, j in folded])
                    folded = []  # no longer listed
                    await run_in_threadpool(self._train, project_id, event, data, job_id)
                except Exception as exc:  # outside fit: the run's folder or the store failed (a full disk)
                    # the run must end, and the runs queued behind it must still run (or stay listed queued for
                    # ever, with this loop gone); so must the runs folded into it when they could not be dropped
                    # from the list (a store failing): nothing else ends them, and a client polling /versions
                    # for "no run going" would wait for ever
                    logger.exception("project %s: training run %s could not run", project_id, job_id)
                    error = f"{type(exc).__name__}: {exc}"
                    for ended_event, ended, why in [
                            *((e, j, f"folded into run {job_id}, which could not run: {error}") for e, j in folded),
                            (event, job_id, error)]:
                        try:
                            await run_in_threadpool(self.store.end_run, project_id, ended, ended_event, why)
                        except Exception:
                            logger.exception("project %s: could not record training run %s as failed",
                                             project_id, ended)
        finally:
            state.running = False
            state.idle.set()

    def train_once(self, project_id: str, event: str, data: dict, fit_kwargs: dict[str, Any] | None = None) -> dict:
        """One training run now, in this thread (what Railyard's continuous training runs in its sandbox): the
        same dispatch, held writes and checks as a webhook's run; the run's record (`status` ok, skipped or
        failed, `version`, `error`). `fit_kwargs` reach `fit` as keywords it accepts (all with **kwargs)."""
        job_id = self._new_job_id()
        self._train(project_id, event, data, job_id, fit_kwargs)
        return next(run for run in self.store.runs(project_id) if run["job_id"] == job_id)

    def _train(self, project_id: str, event: str, data: dict, job_id: str,
               fit_kwargs: dict[str, Any] | None = None) -> None:
        self.store.start_run(project_id, job_id, event)
        workdir = self.model_dir / project_id / job_id
        workdir.mkdir(parents=True, exist_ok=True)
        pending = PendingWrites(self.store, project_id)
        label_config = pending.get("label_config")
        previous = self.version(project_id)
        try:
            model = self._build(project_id, label_config, pending)
            previous = pending.get("model_version")  # building a project's first instance names its first version
            built_with = dict(pending.writes)
            annotations = self.store.annotated_tasks(project_id)
            extras = dict(fit_kwargs or {}, job_id=job_id, workdir=str(workdir))
            if self.convention == "event":
                output = model.fit(event=event, data=data, **_accepts(model.fit, annotations=annotations, **extras))
            else:
                output = model.fit(annotations, **_accepts(model.fit, event=event, project=project_id, **extras))
            if output is None and pending.writes == built_with:
                # nothing learned (no output, nothing stored): the current version stays, the run says so
                self.store.finish_run(project_id, job_id, version=None, error=None, status="skipped")
                return
            if isinstance(output, dict) and output:
                pending.set("train_output", json.dumps(to_jsonable(output)))
            version = pending.get("model_version")
            if version == previous or not version:
                version = next_version(previous)
                pending.set("model_version", version)
            if not pending.get(TRAINED_KEY):
                pending.set(INITIAL_KEY, previous or self.model_class.INITIAL_MODEL_VERSION)
            pending.set(TRAINED_KEY, "1")
            # the instance that will serve the new version must load before anything changes
            output_now = json.loads(pending.get("train_output") or "{}")
            successor = self._build(project_id, label_config, pending, train_output=output_now)
        except Exception as exc:  # a user's fit may raise anything; the previous model keeps serving
            logger.exception("project %s: training run %s failed; version %s keeps serving", project_id, job_id,
                             previous)
            self.store.finish_run(project_id, job_id, version=None, error=f"{type(exc).__name__}: {exc}")
            return
        self.store.finish_run(project_id, job_id, version=version, error=None, values=pending.writes)
        successor._cache = ProjectCache(self.store, project_id)
        self._serving[project_id] = _Serving(successor, label_config)  # the version recorded is the one served
        try:
            (workdir / "job_result.json").write_text(json.dumps(
                {"status": "ok", "version": version, "job_id": job_id, "event": event,
                 "train_output": json.loads(pending.get("train_output") or "{}")}))
        except OSError as exc:
            logger.warning("project %s: could not write %s: %s", project_id, workdir / "job_result.json", exc)
        logger.info("project %s: training run %s done, serving version %s", project_id, job_id, version)

    def versions(self, project_id: str) -> dict:
        """The versions a project's model has had (the initial one, then one per successful run), oldest first."""
        runs = self.store.runs(project_id)
        trained = [run["version"] for run in runs if run["status"] == "ok"]
        first = self.store.get(project_id, INITIAL_KEY) or self.version(project_id)
        return {"versions": [first, *trained], "current_version": self.version(project_id), "runs": runs,
                "model_dir": str(self.model_dir)}

    def all_versions(self) -> dict:
        """Versions of every project (Label Studio 1.23 asks GET /versions without naming the project)."""
        per_project = {project_id: self.versions(project_id) for project_id in self.store.projects()}
        merged: list[str] = []
        for listed in per_project.values():
            merged += [version for version in listed["versions"] if version not in merged]
        current = [listed["current_version"] for listed in per_project.values()]
        return {"versions": merged, "current_version": current[0] if len(current) == 1 else None,
                "projects": {p: {"versions": v["versions"], "current_version": v["current_version"]}
                             for p, v in per_project.items()},
                "model_dir": str(self.model_dir)}

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait for every training run in flight (used at shutdown)."""
        waits = [state.idle.wait() for state in self._training.values() if state.running]
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)

"""Pipelines (built from steps, versioned), their deployments, inference and inference logs."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from railyard_client import data
from railyard_client._lazy import is_dataframe, np, pa, pd
from railyard_client.assays import Assay, assay_config
from railyard_client.errors import DeploymentFailed, InvalidInput, InvalidRequest, NotFound, Unavailable, WaitTimeout
from railyard_client.models import Model, ModelVersion
from railyard_client.monitoring import DeploymentManagement
from railyard_client.monitoring_continuous import DeploymentContinuous
from railyard_client.monitoring_feedback import DeploymentFeedback
from railyard_client.monitoring_predictions import DeploymentPredictions, is_image_file
from railyard_client.progress import wait_spinner
from railyard_client.resource import Resource
from railyard_client.session import Session, repeated_cursor

ERROR_SETTLE = 3.0  # seconds of `Error` in a row after which a wait gives up (a replica restart passes sooner)

ModelLike = Model | ModelVersion | str
InferInput = "pd.DataFrame | pa.Table | pa.RecordBatch | str | Path | list | dict"  # (annotations only)
LOG_PAGE = 10_000
UNAVAILABLE_RETRY = 15.0  # seconds an inference keeps retrying a deployment that is (re)starting (not a failed one)
NOT_RETRIED = frozenset({"deployment_failed", "deployment_crash_loop"})  # 503 codes an inference raises at once


def _model_ref(model: ModelLike) -> dict[str, Any]:
    """A step's model reference: a version pins name, version and sha; a Model pins its newest version; a name
    means the newest ready version at deploy time."""
    if isinstance(model, ModelVersion):
        return model.step_ref()
    if isinstance(model, Model):
        return model.latest_version().step_ref()
    if isinstance(model, str) and model:
        return {"name": model}
    raise InvalidInput(f"a step needs a Model, ModelVersion or model name, not {model!r}")


def _rfc3339(moment: datetime | str) -> str:
    if isinstance(moment, str):
        return moment
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.isoformat()


def infer_at(session: Session, deployment: str, pipeline: str, data_in: InferInput, *, timeout: float = 60.0) -> Any:
    """Send rows to `/v1/api/pipelines/infer/<deployment>/<pipeline>` (see Pipeline.infer for the types); a
    deployment that is (re)starting is retried for a few seconds."""
    path = f"/v1/api/pipelines/infer/{deployment}/{pipeline}"
    as_frame = is_dataframe(data_in)  # without importing pandas: a JSON or Arrow caller never needs it
    if isinstance(data_in, (list, dict)):  # first: the JSON path needs no pyarrow (`pa.` below imports it)
        rows = [data_in] if isinstance(data_in, dict) else data_in
        data.refuse_no_records(rows)  # [], {}, [{}]: the API's no-rows 400, said before sending
        # written as httpx's json= would, but with NaN and Infinity, which the API reads (a model that takes
        # them, e.g. for missing values, gets them; one that does not answers its 400): httpx refuses them
        # (allow_nan=False), which ended `railyard infer` with "unexpected ValueError" after signing in
        text = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
        try:
            body = text.encode()
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"), no UTF-8 text: escaped, the API answers its 400
            body = json.dumps(rows, separators=(",", ":")).encode()
        return _send_retrying(session, path, {"content": body, "headers": {"Content-Type": data.RECORDS}},
                              timeout).json()
    if isinstance(data_in, (str, Path)):
        table, kind = data.read_table(data_in)
        as_frame = kind == "json"
        if as_frame:  # JSON records, sent as Arrow: typed as the API's JSON reader types them
            table = data.tensor_lists(table)
    elif as_frame:
        table = data.tensor_lists(data.dataframe_to_table(data_in))
    elif isinstance(data_in, pa.RecordBatch):
        table = pa.Table.from_batches([data_in])
    elif isinstance(data_in, pa.Table):
        table = data_in
    else:
        raise InvalidInput(f"cannot infer from {type(data_in).__name__}: give a DataFrame, an Arrow table, a file "
                           "path or a list of row objects")
    data.refuse_no_rows(table)  # a table of 0 rows: the API's no-rows 400, said before sending
    try:
        response = _send_retrying(session, path, {"content": data.to_ipc_file(table), "headers": {
            "Content-Type": data.ARROW_FILE, "Accept": data.ARROW_FILE}}, timeout)
    except InvalidRequest as exc:
        # a DataFrame's index labels; a JSON file's rows (as_frame too) have none: str.index is a method
        explained = data.explain_missing(exc, table, data_in.index if is_dataframe(data_in) else None)
        if explained is exc:
            raise
        raise explained from None
    result = data.from_ipc(response.content)
    return data.to_frame(result) if as_frame else result


def _send_retrying(session: Session, path: str, body: dict[str, Any], timeout: float) -> Any:
    deadline = time.monotonic() + UNAVAILABLE_RETRY
    while True:
        try:
            return session.send("POST", path, timeout=timeout, **{**body, "headers": dict(body["headers"])})
        except Unavailable as exc:
            # a deployment that failed to restore (503 deployment_failed) is mended by a redeploy, not by waiting,
            # and one whose replicas all crash-loop (deployment_crash_loop) is not mended by 15 s of waiting: its
            # back-off runs up to a minute and the message says why (it retried for 15 s before, then said it)
            if exc.code in NOT_RETRIED or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class Deployment(DeploymentManagement, DeploymentContinuous, DeploymentPredictions, DeploymentFeedback, Resource):
    """A pipeline's active deployment (`<deploy_id>-<id>`), as in `client.get_deployment(name)`; seed 003's
    management methods come from `DeploymentManagement`, its predictions on images from `DeploymentPredictions`,
    reviews, feedback loop, training reference and stats from `DeploymentFeedback`."""

    def __init__(self, session: Session, record: dict[str, Any], pipeline: Pipeline) -> None:
        super().__init__(session, record)
        self.pipeline = pipeline

    @property
    def id(self) -> int:
        """The deployment's numeric id."""
        return int(self._record["id"])

    @property
    def name(self) -> str:
        """`<deploy_id>-<id>`: the name inference URLs and OIP v2 use."""
        return str(self._record["name"])

    def status(self) -> dict[str, Any]:
        """The deployment's status: `status` (Running, Starting, Error, Stopped) and each engine replica."""
        return self._session.post("status/get_deployment", {"name": self.name})

    def wait_until_running(self, timeout: float = 300.0, progress: bool | None = None) -> Deployment:
        """Poll the status until it says `Running`: every replica runs, or the others run and the rest are in a
        crash loop (exited soon after start, restarted after a back-off: `status()` names them and why; the
        running ones serve); WaitTimeout (with the last reasons) if it does not, and DeploymentFailed as soon as
        the status has said `Error` for ERROR_SETTLE seconds in a row (every replica exited and none came back or
        each keeps exiting soon after start, or the restore after a deployer restart failed): no wait fixes that."""
        deadline = time.monotonic() + timeout
        show = progress if progress is not None else False
        error_since: float | None = None
        with wait_spinner(f"deployment {self.name}", show) as say:
            while True:
                status = self.status()
                say(status["status"])
                if status["status"] == "Running":
                    return self
                now = time.monotonic()
                error_since = (error_since or now) if status["status"] == "Error" else None
                if error_since is not None and now - error_since >= ERROR_SETTLE:
                    details = "; ".join(status.get("details") or []) or "its replicas failed"
                    raise DeploymentFailed(f"deployment {self.name} reports Error: {details}")
                if now > deadline:
                    details = "; ".join(status.get("details") or []) or status["status"]
                    raise WaitTimeout(f"deployment {self.name} not Running after {timeout:g}s: {details}")
                time.sleep(0.25)

    def predict(self, data_in: InferInput | None = None, tags: str | list[str] | None = None, source: str | None = None,
                *, file_path: str | Path | None = None, **kwargs: Any) -> Any:
        """The path of a PNG or JPEG file: seed 003's `predict(file_path, tags, source)` (see `predict_image`: the
        model answers the image, the prediction is kept and returned with its id), also by keyword `file_path`.
        Anything else: an inference on this deployment (the same as `pipeline.infer`)."""
        if file_path is not None:
            if data_in is not None:
                raise InvalidInput("give the image as data_in or as file_path, not both")
            data_in = file_path
        if data_in is None:
            raise InvalidInput("give an image path or rows to predict on")
        if is_image_file(data_in):
            return self.predict_image(data_in, tags=tags, source=source)
        if tags is not None or source is not None:
            raise InvalidInput("tags and source go with an image file (PNG or JPEG) to predict on")
        return self.pipeline.infer(data_in, **kwargs)

    def undeploy(self) -> None:
        """Stop this deployment's replicas."""
        self.pipeline.undeploy()


class Pipeline(Resource):
    """A pipeline: build it from steps, deploy it, infer, read its logs.

    `workspace.build_pipeline(name)` starts one; `add_model_step` (and the shadow/A-B steps) describe the
    definition; `create()` stores it as a version (the same definition gives the same version); `deploy()`
    creates the version when needed and starts replicas.
    """

    def __init__(self, session: Session, workspace_id: int, name: str, record: dict[str, Any] | None = None) -> None:
        super().__init__(session, record or {"name": name, "workspace_id": workspace_id})
        self.workspace_id = workspace_id
        self._steps: list[dict[str, Any]] = []
        if record and record.get("versions"):
            self._steps = list(record["versions"][-1]["definition"].get("steps", []))

    # --- identity -------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The pipeline's name."""
        return str(self._record["name"])

    @property
    def id(self) -> int | None:
        """The pipeline's numeric id (None until created)."""
        return self._record.get("id")

    @property
    def definition(self) -> dict[str, Any]:
        """The definition the steps added so far make: `{"steps": [...]}`."""
        return {"steps": list(self._steps)}

    def refresh(self) -> Pipeline:
        """Read the pipeline's record again (versions, active deployment)."""
        if self.id is not None:
            self._record = self._session.post("pipelines/get", {"pipeline_id": self.id})
            return self
        listed = self._session.post_pages("pipelines/list", {"workspace_id": self.workspace_id}, "pipelines")
        for record in listed:  # a page at a time, up to the one that holds it
            if record["name"] == self.name:
                self._record = record
                return self
        raise NotFound(404, "not_found", f"pipeline {self.name!r} not found in workspace {self.workspace_id}")

    # --- building ---------------------------------------------------------------------------------------

    def add_model_step(self, model: ModelLike, image: dict[str, Any] | None = None) -> Pipeline:
        """Append a step that runs one model (a ModelVersion pins that version; a Model its newest version; a
        name the newest ready version at deploy time). `image`: the step's image configuration, for seed 003's
        predict on images (input, kind, labels, outputs, size, channels, scale, layout...: docs/monitoring.md)."""
        body: dict[str, Any] = {"models": [_model_ref(model)]}
        if image is not None:
            body["image"] = image
        self._steps.append({"ModelInference": body})
        return self

    def add_shadow_deploy(self, champion: ModelLike, challengers: list[ModelLike],
                          image: dict[str, Any] | None = None) -> Pipeline:
        """Append a shadow step: the champion answers, challengers run on the same rows for the log only (and, for
        seed 003's predict on images, into the prediction's shadow part). `image` as for `add_model_step`."""
        body: dict[str, Any] = {"champion": _model_ref(champion), "challengers": [_model_ref(c) for c in challengers]}
        if image is not None:
            body["image"] = image
        self._steps.append({"ShadowDeploy": body})
        return self

    def add_random_split(self, weights: list[float], models: list[ModelLike], hash_key: str | None = None) -> Pipeline:
        """Append an A/B step: one model per request by weight, or by a hash of the `hash_key` column."""
        body: dict[str, Any] = {"weights": weights, "models": [_model_ref(m) for m in models]}
        if hash_key:
            body["hash_key"] = hash_key
        self._steps.append({"RandomSplit": body})
        return self

    def clear(self) -> Pipeline:
        """Remove every step (to build a new definition)."""
        self._steps = []
        return self

    def create(self) -> Pipeline:
        """Store the current definition as a version (a new one only when it changed). Every model it names must
        exist in the workspace (in any status: one still converting does): otherwise an InvalidRequest (400) naming
        each missing reference, and nothing is stored."""
        created = self._session.post("pipelines/create", {"pipeline_id": self.name, "workspace_id": self.workspace_id,
                                                          "definition": self.definition})
        self._record = self._session.post("pipelines/get", {"pipeline_id": created["pipeline_pk_id"]})
        return self

    def versions(self) -> list[dict[str, Any]]:
        """The pipeline's versions, oldest first: id, version (UUID), definition, created_at. All of them: a record
        whose versions pass 4 MiB lists the newest (and the deployed one) with a `versions_cursor`, and the older ones
        are read from pipelines/get with it, a part at a time (docs/api-paging.md)."""
        record = self.refresh()._record
        found = {version["id"]: version for version in record.get("versions", [])}
        cursor = record.get("versions_cursor")
        seen: set[str] = set()
        while cursor:
            repeated_cursor("pipelines/get", cursor, seen)
            older = self._session.post("pipelines/get", {"pipeline_id": self.id, "versions_cursor": cursor})
            found.update((version["id"], version) for version in older["versions"])
            cursor = older.get("versions_cursor")
        return [found[key] for key in sorted(found)]

    # --- deploying --------------------------------------------------------------------------------------

    def deploy(self, deploy_id: str | None = None, engine_config: dict[str, Any] | None = None, *,
               replicas: int | None = None, cpus: float | None = None, wait: bool = True, timeout: float = 300.0,
               progress: bool | None = None) -> Pipeline:
        """Deploy the current definition (stored as a version first) and, with `wait`, return once the deployment
        is Running (`Deployment.wait_until_running`: its replicas serve). `engine_config` is the seed's (`cpus`,
        `replica_count`, `replica_autoscale_min_max`, ...); `replicas` and `cpus` are shortcuts for its two most
        used fields."""
        if self._steps or self.id is None:
            self.create()
        versions = self._record.get("versions") or []
        if not versions:
            raise InvalidInput(f"pipeline {self.name} has no version to deploy")
        config = dict(engine_config or {})
        if replicas is not None:
            config["replica_count"] = replicas
        if cpus is not None:
            config["cpus"] = cpus
        body: dict[str, Any] = {"deploy_id": deploy_id or self.name, "pipeline_id": self.id,
                                "pipeline_version_pk_id": versions[-1]["id"]}
        if config:
            body["engine_config"] = config
        with wait_spinner(f"deploying {self.name}", bool(progress)) as say:
            self._session.post("pipelines/deploy", body)
            say("replicas started")
        self.refresh()
        if wait:
            self.deployment().wait_until_running(timeout, progress)
        return self

    def deployment(self) -> Deployment:
        """The active deployment; NotFound when the pipeline is not deployed."""
        record = self.refresh()._record.get("deployment")
        if not record:
            raise NotFound(404, "not_found", f"pipeline {self.name} is not deployed")
        return Deployment(self._session, record, self)

    def status(self) -> dict[str, Any]:
        """The deployment's status (`status`: Running, Starting, Error), or `{"status": "NotDeployed"}`."""
        record = self.refresh()._record.get("deployment")
        if not record:
            return {"status": "NotDeployed", "details": [], "engines": []}
        return Deployment(self._session, record, self).status()

    def wait_until_running(self, timeout: float = 300.0, progress: bool | None = None) -> Pipeline:
        """Wait until the active deployment runs (see Deployment.wait_until_running)."""
        self.deployment().wait_until_running(timeout, progress)
        return self

    def undeploy(self) -> Pipeline:
        """Stop the active deployment (nothing happens when none is active)."""
        record = self.refresh()._record.get("deployment")
        if record:
            self._session.post("pipelines/undeploy", {"pipeline_id": self.id, "deployment_id": record["id"]})
            self.refresh()
        return self

    def copy(self, name: str, *, deploy_id: str | None = None, engine_config: dict[str, Any] | None = None) -> Pipeline:
        """A new pipeline with this one's latest definition (deployed too when `deploy_id` is given)."""
        if self.id is None:
            self.refresh()
        body: dict[str, Any] = {"name": name, "workspace_id": self.workspace_id, "source_pipeline": self.id}
        if deploy_id:
            body["deploy"] = deploy_id
            if engine_config:
                body["engine_config"] = engine_config
        copied = self._session.post("pipelines/copy", body)
        record = self._session.post("pipelines/get", {"pipeline_id": copied["pipeline_pk_id"]})
        return Pipeline(self._session, self.workspace_id, name, record)

    def url(self) -> str:
        """The public inference URL of the active deployment."""
        return self._session.post("admin/get_pipeline_external_url",
                                  {"workspace_id": self.workspace_id, "pipeline_name": self.name})["url"]

    # --- inference --------------------------------------------------------------------------------------

    def infer(self, data_in: InferInput, *, timeout: float = 60.0) -> Any:
        """Run rows through the deployed pipeline. A DataFrame gives a DataFrame; an Arrow table (or record
        batch) an Arrow table; a path to a .arrow/.feather or .parquet file an Arrow table, to a .json file a
        DataFrame; a list of row objects (pandas-records) the seed's JSON records. Result columns are `time`,
        `in.<input>`, `out.<output>`, `check_failures` (and `metadata` for JSON). A DataFrame's tensor columns
        (numbers, booleans or strings; and a .json file's) go as fixed-size lists, as the API's JSON reader makes
        the same rows, so they are logged with its rows in one schema (a log page ends where the schema changes);
        Arrow goes as it is (the engine makes a list column of one shape fixed-size too). Rows of none (`[]`,
        `{}`, `[{}]`, a DataFrame, table or file of 0 rows) are InvalidInput before anything is sent (the API's
        no-rows 400). A DataFrame's NaN and None go as Arrow nulls (pyarrow's conversion): a model that takes no
        missing values answers its 400 ("column 'x': null values"), to which the SDK adds the rows (and index labels)
        that hold them and what to do."""
        return infer_at(self._session, self.deployment().name, self.name, data_in, timeout=timeout)

    def infer_v2(self, inputs: dict[str, Any] | pd.DataFrame, *, timeout: float = 60.0) -> dict[str, np.ndarray]:
        """Open Inference Protocol v2 (`/v2/models/<deployment>/infer`): named arrays in (first dimension =
        batch), named numpy arrays out."""
        deployment = self.deployment()
        response = self._session.send("POST", f"/v2/models/{deployment.name}/infer", json=data.oip_request(inputs),
                                      timeout=timeout)
        return data.oip_outputs(response.json())

    # --- logs -------------------------------------------------------------------------------------------

    def logs(self, start: datetime | str | None = None, end: datetime | str | None = None, limit: int | None = 100,
             *, arrow: bool = False, dataset: list[str] | None = None,
             dataset_exclude: list[str] | None = None) -> pd.DataFrame | pa.Table:
        """The newest `limit` logged inferences (all of them with `limit=None`) between `start` and `end`,
        oldest first, as a DataFrame (or an Arrow table with `arrow=True`); pages through the server's cursor.
        Columns are `time` (UTC datetimes in a DataFrame, epoch milliseconds in Arrow), `in.<input>`,
        `out.<output>`, `metadata.*` (and shadow/A-B columns). Rows logged with another type of a column (a new
        pipeline version, a bool tensor a float model took) join the others: booleans with integers as integers,
        numbers with floats among them as floats, tensors as lists of them, anything else as JSON text."""
        if limit is not None and limit < 1:
            raise InvalidInput("limit must be at least 1 (or None for every row)")
        body: dict[str, Any] = {"pipeline_id": self.name, "workspace_id": self.workspace_id, "order": "Desc"}
        if start is not None or end is not None:
            body["start_time"] = _rfc3339(start or datetime(1970, 1, 1, tzinfo=timezone.utc))
            body["end_time"] = _rfc3339(end or datetime.now(timezone.utc))
        if dataset:
            body["dataset"] = dataset
        if dataset_exclude:
            body["dataset_exclude"] = dataset_exclude
        tables: list[pa.Table] = []
        rows = 0
        while limit is None or rows < limit:
            body["page_size"] = LOG_PAGE if limit is None else min(LOG_PAGE, limit - rows)
            response = self._session.send("POST", "/v1/api/pipelines/get_logs", json=body,
                                          headers={"Accept": data.ARROW_FILE})
            page = data.from_ipc(response.content)
            if page.num_rows:
                tables.append(page)
                rows += page.num_rows
            cursor = response.headers.get("x-iteration-cursor")
            if response.headers.get("x-iteration-status") == "All" or not cursor:
                break
            body["cursor"] = cursor
        if not tables:  # (pa.nulls and reversed_rows: pa.array would import pandas, for `railyard pipelines logs`)
            table = pa.table({"time": pa.nulls(0, pa.int64())})
        else:
            table = data.reversed_rows(data.concat_pages(tables))  # pages newest first
        return table if arrow else data.to_frame(table)

    # --- assays -----------------------------------------------------------------------------------------

    def assays(self) -> list[Assay]:
        """The pipeline's assays, newest first. Read a page (at most 1000) at a time, so a list larger than one
        server reply (8 MiB) reads too."""
        if self.id is None:
            self.refresh()
        return [Assay(self._session, record)
                for record in self._session.post_pages("assays/list", {"pipeline_id": self.id})]

    def create_assay(self, name: str, iopath: str, **config: Any) -> Assay:
        """Create a scheduled drift assay on a logged field (`iopath` like `"output dense_1 0"`); keyword
        arguments are those of `run_assay`. `name` is unique in the pipeline: a name one of its assays has already
        raises `Conflict` (409) and nothing is created."""
        if self.id is None:
            self.refresh()
        body = assay_config(name, self, iopath, **config)
        created = self._session.post("assays/create", body)
        return Assay(self._session, {**body, "id": created["assay_id"]})

    def run_assay(self, name: str, iopath: str, *, baseline_start: datetime | str | None = None,
                  baseline_end: datetime | str | None = None, baseline_values: list[float] | None = None,
                  width: str = "24 hours", interval: str | None = None, start: datetime | str | None = None,
                  metric: str = "PSI", num_bins: int = 5, bin_mode: str = "Quantile", alert_threshold: float = 0.25,
                  warning_threshold: float | None = None, model: str | None = None,
                  training_reference: Any = None, run_until: datetime | str | None = None,
                  aggregation: str = "Density", provided_edges: list[float] | None = None,
                  bin_weights: list[float] | None = None) -> list[dict[str, Any]]:
        """Score windows of a logged field against a baseline now (`assays/run_interactive`), without storing
        an assay. The baseline is the logs between `baseline_start` and `baseline_end`, or `baseline_values`, or
        the training-data reference of `training_reference` (a seed-003 deployment or its name: `iopath` then
        names an image feature of its predictions, e.g. `"input brightness_mean"`). Each result's `logs_complete`
        says whether the log store had stored every record of its window (False for a window that closed moments
        ago, whose rows may still be on their way). `run_until` ends the windows scored (default: now);
        `aggregation`, `provided_edges` and `bin_weights` are the summarizer's (docs/assays.md)."""
        if self.id is None:
            self.refresh()
        body = assay_config(name, self, iopath, baseline_start=baseline_start, baseline_end=baseline_end,
                            baseline_values=baseline_values, width=width, interval=interval, start=start,
                            metric=metric, num_bins=num_bins, bin_mode=bin_mode, alert_threshold=alert_threshold,
                            warning_threshold=warning_threshold, model=model,
                            training_reference=training_reference, run_until=run_until, aggregation=aggregation,
                            provided_edges=provided_edges, bin_weights=bin_weights)
        return self._session.post("assays/run_interactive", body)

"""Seed 003's predict on a deployment served by an ML backend (seed 004: a `railyard-ml deploy railyard` package).

Such a deployment is a bring-your-own-predict step that the engine runs in its sandboxed worker: it takes one
column, `task` (a Label Studio task as JSON), and answers `prediction` (the backend's prediction as JSON), `score`
and `model_version`. So `predict` needs no image configuration there: the backend's own labeling config says what it
answers, and this module is the translation on both sides of the engine. The backend's code never runs here.

- **What the backend answers** (`labeling`): the package's labeling config (`backend/railyard_state/state.json`,
  read by ranged GETs of the stored zip, as `ml_backend.is_backend` reads its index; cached per sha256, a stored
  artifact never changes) is parsed as data (`railyard_ml.label_config.parse_config`, which refuses DOCTYPEs and
  entities). Its first control over an `<Image>` decides the kind: `Choices` a classification, `RectangleLabels` a
  detection, `PolygonLabels` a segmentation. Class ids index that control's labels in the config's order, exactly
  as the continuous training's `review_task` reads them back, so a reviewed prediction trains the label it names.
- **The question** (`task_table`): one row whose `task` is `{"id": 0, "data": {<the image object's value>:
  "data:<content type>;base64,..."}}`: the image's own bytes as a data URI, which the SDK's `get_local_path` reads
  without a network (the sandbox has none).
- **The answer** (`to_prediction`): `choices` become classes (best first), `rectanglelabels` boxes and
  `polygonlabels` polygons with their bounding boxes, from Label Studio's percent of the image to integer pixels;
  a result's own `score`, else the prediction's, clipped to 0..1; `min_threshold` filters as for ONNX models; at
  most MAX_DETECTIONS (1,000) entries, the best scoring (a PredictionFormat holds no more).
  Results of other controls are ignored; a label the control does not have is the backend's error
  (`inference_failed`, nothing stored), as any failure of the model is.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from services.monitoring import handlers
from services.monitoring.ml_backend import BACKEND_CONFIG
from shared import subjects
from shared.bus import request
from shared.errors import Conflict, RailyardError
from shared.messages.monitoring import ModelVersionRef
from shared.messages.monitoring_predictions import MAX_DETECTIONS
from shared.messages.registry import ResolvedModel, ResolveModel
from shared.objectstore import BUCKET_ARTIFACTS, RangedFile, content_key

STATE_FILE = "backend/railyard_state/state.json"  # where railyard_ml.railyard_step.package keeps the state
MAX_STATE_BYTES = 16 * 1024 * 1024  # a state larger than this is not read (its labeling config is in it)
TASK_COLUMN = "task"  # the step's input: a Label Studio task as JSON
PREDICTION_COLUMN = "prediction"  # its answer: the prediction as JSON
KINDS = {"Choices": "classification", "RectangleLabels": "detection", "PolygonLabels": "segmentation"}
RESULT_TYPES = {"classification": "choices", "detection": "rectanglelabels", "segmentation": "polygonlabels"}
_CACHE_SIZE = 64


@dataclass(frozen=True)
class BackendLabeling:
    """What an ML backend answers, from its labeling config: the control (name, kind, labels) and the value under
    which its image object reads the task's data."""

    control: str
    kind: str
    labels: list[str]
    value: str


_by_sha: dict[str, BackendLabeling | None] = {}


def _state_label_config(read_range: Callable[[int, int], bytes], size: int) -> str | None:
    """The labeling config shipped in an ML backend package (None: not a backend package, or none shipped)."""
    try:
        with zipfile.ZipFile(RangedFile(read_range, size)) as archive:
            names = set(archive.namelist())
            if BACKEND_CONFIG not in names or STATE_FILE not in names:
                return None
            if archive.getinfo(STATE_FILE).file_size > MAX_STATE_BYTES:
                raise Conflict("the ML backend package's state is larger than 16 MiB: its labeling config was not "
                               "read; deploy the backend with a smaller state")
            state = json.loads(archive.read(STATE_FILE))
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return None
    config = ((state or {}).get("values") or {}).get("label_config") if isinstance(state, dict) else None
    return config if isinstance(config, str) else None


def parse_labeling(config: str) -> BackendLabeling:
    """The first control of a labeling config that predict can answer with (Conflict when there is none)."""
    try:
        from railyard_ml.errors import InvalidLabelConfig
        from railyard_ml.label_config import parse_config
    except ImportError:
        raise Conflict("predict on an ML backend needs railyard-ml installed where Railyard runs "
                       "(pip install ./ml_backend)") from None
    try:
        parsed = parse_config(config)
    except InvalidLabelConfig as exc:
        raise Conflict(f"the ML backend's labeling config is invalid: {exc}") from None
    for name, control in parsed.items():
        kind = KINDS.get(control.get("type"))
        images = [one for one in control.get("inputs") or [] if one.get("type") == "Image" and one.get("value")]
        if kind and images and control.get("labels"):
            return BackendLabeling(control=name, kind=kind, labels=list(control["labels"]), value=images[0]["value"])
    raise Conflict("the ML backend's labeling config has no <Choices>, <RectangleLabels> or <PolygonLabels> with "
                   "labels over an <Image>: predict on images needs one (docs/monitoring.md)")


async def labeling(deps: handlers.MonitoringDeps, token: str | None, workspace_id: int,
                   model: ModelVersionRef) -> BackendLabeling | None:
    """What the deployment's model answers when it is an ML backend package; None when it is not one."""
    resolved = await request(deps.broker, subjects.REGISTRY_MODELS_RESOLVE, ResolveModel(
        workspace_id=workspace_id, name=model.name, version=model.version), token=token, timeout=deps.timeout,
        reply_model=ResolvedModel)
    if resolved.framework != "custom" or deps.objects is None:
        return None
    if resolved.sha in _by_sha:
        return _by_sha[resolved.sha]
    key = content_key(resolved.sha)
    size = await deps.objects.size(BUCKET_ARTIFACTS, key)

    def read() -> BackendLabeling | None:  # ranged reads and the XML parse, off the event loop
        config = _state_label_config(
            lambda offset, length: deps.objects.read_range_sync(BUCKET_ARTIFACTS, key, offset, length), size)
        return parse_labeling(config) if config is not None else None

    found = await asyncio.to_thread(read)
    if len(_by_sha) >= _CACHE_SIZE:
        _by_sha.pop(next(iter(_by_sha)))
    _by_sha[resolved.sha] = found
    return found


def task_json(labeling_: BackendLabeling, data: bytes, content_type: str, *also: BackendLabeling) -> str:
    """The Label Studio task that asks the backend about one image (its bytes as a data URI). `also`: other
    backends that may answer it (an A/B split's arms), whose image objects may read the task's data under another
    value: the image is there under each one."""
    uri = f"data:{content_type};base64,{base64.b64encode(data).decode()}"
    return json.dumps({"id": 0, "data": {value: uri for value in dict.fromkeys(
        [labeling_.value, *(one.value for one in also)])}})


class BackendAnswerInvalid(RailyardError):
    """The ML backend answered something its own labeling config cannot hold (the model's error, not the caller's)."""

    code = "inference_failed"


def for_challenger(champion: BackendLabeling, challenger: BackendLabeling | None) -> BackendLabeling:
    """How a challenger's answer is read: the results of the challenger's own control (its labeling config may name
    it otherwise than the champion's), as the champion's kind and class ids (its labels, matched by name), so both
    parts of a prediction mean the same classes. A challenger that is no ML backend package is read as the champion.
    BackendAnswerInvalid when it answers another kind (the prediction then has no shadow part)."""
    if challenger is None:
        return champion
    if challenger.kind != champion.kind:
        raise BackendAnswerInvalid(f"the challenger answers a {challenger.kind} ({challenger.control!r}), the champion "
                                   f"a {champion.kind}")
    return replace(champion, control=challenger.control)


def _score(value: Any, fallback: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return fallback
    return min(1.0, max(0.0, float(value)))


def _clipped(x: float, y: float, width: int, height: int) -> tuple[int, int]:
    return min(width, max(0, round(x))), min(height, max(0, round(y)))


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BackendAnswerInvalid("the ML backend answered a region whose coordinates are not numbers")
    return float(value)


def _rectangle(value: dict[str, Any], width: int, height: int) -> list[int]:
    """[top, left, bottom, right] in pixels of a Label Studio rectangle (percent of the image; rotated clockwise by
    `rotation` degrees around its top-left corner, in pixels, as Label Studio draws it: its bounding box)."""
    x, w = (_number(value.get(k)) * width / 100.0 for k in ("x", "width"))
    y, h = (_number(value.get(k)) * height / 100.0 for k in ("y", "height"))
    angle = math.radians(_number(value.get("rotation") or 0))
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(x, y), (x + w * cos, y + w * sin), (x - h * sin, y + h * cos),
               (x + w * cos - h * sin, y + w * sin + h * cos)]
    left, top = _clipped(min(c[0] for c in corners), min(c[1] for c in corners), width, height)
    right, bottom = _clipped(max(c[0] for c in corners), max(c[1] for c in corners), width, height)
    return [top, left, bottom, right]


def _polygon(value: dict[str, Any], width: int, height: int) -> tuple[list[int], list[int]]:
    """(polygon [x1, y1, ...] in pixels, its bounding box [top, left, bottom, right]) of a Label Studio polygon."""
    points = value.get("points")
    if not isinstance(points, list) or len(points) < 3 or not all(isinstance(p, list) and len(p) == 2
                                                                  for p in points):
        raise BackendAnswerInvalid("the ML backend answered a polygon that is not a list of at least 3 [x, y] points")
    pixels = [_clipped(_number(x) * width / 100.0, _number(y) * height / 100.0, width, height) for x, y in points]
    xs, ys = [p[0] for p in pixels], [p[1] for p in pixels]
    return [v for p in pixels for v in p], [min(ys), min(xs), max(ys), max(xs)]


def to_prediction(answer: str, labeling_: BackendLabeling, height: int, width: int,
                  min_threshold: float | None) -> dict[str, Any]:
    """The backend's prediction (JSON, as the step answers it) as the seed's PredictionFormat (a dict)."""
    try:
        prediction = json.loads(answer)
    except (TypeError, ValueError):
        raise BackendAnswerInvalid("the ML backend's answer is not JSON") from None
    if isinstance(prediction, list):  # several predictions for the task: the first is the backend's own
        prediction = prediction[0] if prediction else {"result": []}
    if not isinstance(prediction, dict) or not isinstance(prediction.get("result", []), list):
        raise BackendAnswerInvalid("the ML backend's answer is not a prediction with a 'result' list")
    overall = _score(prediction.get("score"), 1.0)
    result_type = RESULT_TYPES[labeling_.kind]
    found: list[tuple[float, int, list[int] | None, list[int] | None]] = []
    for item in prediction.get("result") or []:
        if not isinstance(item, dict) or item.get("from_name") not in (None, labeling_.control):
            continue
        value = item.get("value")
        names = value.get(result_type) if isinstance(value, dict) else None
        if not isinstance(names, list) or not names:
            continue
        score = _score(item.get("score"), overall)
        unknown = [name for name in names if name not in labeling_.labels]
        if unknown:
            raise BackendAnswerInvalid(f"the ML backend answered label {str(unknown[0])[:100]!r}, which its labeling "
                                       f"config's {labeling_.control!r} does not have")
        if labeling_.kind == "classification":
            found.extend((score, labeling_.labels.index(name), None, None) for name in names)
        elif labeling_.kind == "detection":
            found.append((score, labeling_.labels.index(names[0]), _rectangle(value, width, height), None))
        else:
            polygon, box = _polygon(value, width, height)
            found.append((score, labeling_.labels.index(names[0]), box, polygon))
    threshold = min_threshold or 0.0
    kept = sorted((one for one in found if one[0] >= threshold), key=lambda one: -one[0])
    if labeling_.kind == "classification":  # a class once, at its best score
        best: dict[int, tuple[float, int, None, None]] = {}
        for one in kept:
            best.setdefault(one[1], one)
        kept = list(best.values())
    kept = kept[:MAX_DETECTIONS]  # the best ones: a PredictionFormat holds no more
    formatted: dict[str, Any] = {"detection_classes": [one[1] for one in kept],
                                 "detection_scores": [one[0] for one in kept]}
    if labeling_.kind != "classification":
        formatted["detection_boxes"] = [one[2] for one in kept]
    if labeling_.kind == "segmentation":
        formatted["detection_masks"] = [one[3] for one in kept]
    return formatted

"""Benchmark reports (seed 002): run a dataset through deployments' engines (classification: metrics and
speed) or score submitted detections (COCO), store the report, draw it on the graph, compare reports.

The rows go to the engine exactly as inference requests do (Arrow IPC on `engine.<deployment>.infer`), so the
speed measured is the engine's, bus included; the caller must be a member of the workspace of both the data and
every deployment (the deployer answers the deployment's workspace)."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.workflow_lineage import benchmarks, graph, store
from services.workflow_lineage.handlers import Deps, _jsonb
from shared import evaluation, subjects

# The image decoding, preprocessing and box conversion that seed 003's predictions use (#18), so a detection
# deployment is benchmarked on exactly what it sees when it serves. (It belongs in shared/: pure functions.)
from shared import images as detection_images
from shared.arrow_codec import from_ipc, tensor_array, to_ipc_stream
from shared.authz import Principal, require_member, require_user
from shared.errors import InvalidRequest, NotFound, echo
from shared.messages.lineage import (
    BenchmarkCandidate,
    BenchmarkCompleted,
    BenchmarkReport,
    BenchmarkReports,
    CompareReports,
    DatasetChoice,
    DatasetFile,
    EvaluateDetections,
    ReportComparison,
    RunClassificationBenchmark,
)
from shared.objectstore import BUCKET_DATASETS, content_key
from shared.table_transport import META_HEADER

# infer(deployment, arrow ipc) -> (headers, arrow ipc); resolve(token, deployment) -> {workspace_id, ...}
Infer = Callable[[str, bytes], Awaitable[tuple[dict[str, str], bytes]]]
Resolve = Callable[[str | None, str], Awaitable[dict[str, Any]]]


async def _chosen(deps: Deps, principal: Principal, token: str | None, cmd: DatasetChoice) -> dict[str, Any]:
    """The dataset a benchmark runs on, as it is now or as a version saved it: kind, rows hash, files
    (DatasetFile)."""
    require_user(principal)
    await require_member(deps.membership(token), principal, cmd.workspace_id)
    return await choose(deps, cmd)


async def choose(deps: Deps, cmd: DatasetChoice) -> dict[str, Any]:
    """The dataset (or a version's dataset) of `cmd.workspace_id` that `cmd` names; NotFound otherwise (the caller
    is checked by whoever calls this)."""
    if cmd.dataset_id is not None:
        row = await store.dataset(deps.pool, cmd.dataset_id)
        if row is None or row["workspace_id"] != cmd.workspace_id:
            raise NotFound(f"dataset {cmd.dataset_id} not found")
        files = [DatasetFile.model_construct(**(dict(f) | {"labels": _jsonb(f["labels"])}))  # rows we wrote
                 for f in await store.dataset_files(deps.pool, row["id"])]
        return {"ref": {"dataset_id": row["id"], "name": row["name"]}, "kind": row["kind"],
                "rows_sha256": row["rows_sha256"], "files": files, "card": ("dataset", str(row["id"]), row["name"])}
    version = await store.version_head(deps.pool, cmd.version_id)
    if version is None or version["workspace_id"] != cmd.workspace_id:
        raise NotFound(f"version {cmd.version_id} not found")

    async def manifest_text() -> str:
        return await store.version_manifest(deps.pool, version["id"]) or '{"datasets": []}'

    # parsed once per version and dataset (a version never changes): deps.saved_files
    entry = await deps.saved_files.get(version["id"], cmd.dataset_name, version["created_at"], manifest_text)
    if entry is None:
        raise NotFound(f"version {cmd.version_id} has no dataset {cmd.dataset_name!r}")
    return {"ref": {"version_id": version["id"], "project_id": version["project_id"], "number": version["number"],
                    "name": cmd.dataset_name, "manifest_sha256": version["manifest_sha256"]},
            "kind": entry.kind, "rows_sha256": entry.rows_sha256, "files": list(entry.files.values()),
            "card": ("project_version", str(version["id"]), None)}


def _class(value: Any) -> str:
    """A label or a predicted class as the string classes are compared by: an integral float is its integer, so a
    label column of floats (3.0) and a model answering integers (3) name the same class."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _listed(values: Iterable[str]) -> str:
    """The first five of `values` for a message, '...' when there are more."""
    first = list(itertools.islice(values, 6))
    return ", ".join(map(repr, first[:5])) + (", ..." if len(first) > 5 else "")


ONE, SCALAR = 0, 1  # placeholders in a run's predictions: a value of an [N, 1] output, a number of a scalar one


def _predicted(values: list[Any], class_names: list[str] | None, labels: dict[str, None], label_column: str,
               deferred: tuple[list[Any], list[Any]]) -> list[str | int]:
    """A call's answers (the output column's rows) as the class strings compared with `truth`, the call's scores
    read and let go (a large run's scores are never all held). One number a row ([N, 1], or a scalar column of
    numbers) goes to `deferred` (ONE, SCALAR), the placeholder in its place: whether it is a class or a probability
    is decided over the whole run (`_classes`), so that every call is read alike. `labels`: the label column's
    values, each once."""
    if values and isinstance(values[0], list) and all(len(np.ravel(v)) == 1 for v in values):
        deferred[ONE].extend(np.asarray(v).ravel().tolist()[0] for v in values)
        return [ONE] * len(values)
    if values and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values):
        deferred[SCALAR].extend(values)
        return [SCALAR] * len(values)
    if values and isinstance(values[0], list):
        scores = np.asarray([np.ravel(v) for v in values], dtype=np.float64)
        indices = scores.argmax(axis=1)
        if class_names is not None:
            if scores.shape[1] != len(class_names):
                raise InvalidRequest(f"class_names has {len(class_names)} names, the output has {scores.shape[1]}"
                                     " scores")
            return [class_names[i] for i in indices]
        if labels and not any(str(i) in labels for i in range(scores.shape[1])):
            # 'no'/'yes' labels against positions '0', '1': a report of accuracy 0
            raise InvalidRequest(f"no value of {label_column!r} ({_listed(labels)}) is a score position (0 to"
                                 f" {scores.shape[1] - 1}): without class_names the class is the index of the highest"
                                 " score; give class_names naming the scores in order")
        return [str(i) for i in indices]
    return [_class(v) for v in values]


def _classes(predicted: list[str | int], deferred: tuple[list[Any], list[Any]], class_names: list[str] | None,
              truth: list[str], label_column: str) -> list[str]:
    """The run's classes: `predicted` with its placeholders read from `deferred`, each kind's together. What
    cannot be read without guessing is a 400."""
    if deferred[ONE] or deferred[SCALAR]:
        read = [iter(_one_value(deferred[kind], class_names, truth, label_column, positions=kind == ONE))
                if deferred[kind] else iter(()) for kind in (ONE, SCALAR)]
        predicted = [next(read[p]) if isinstance(p, int) else p for p in predicted]
    classes = [p for p in predicted if isinstance(p, str)]  # (all are, once `deferred` is read)
    if class_names and classes and not set(classes) & set(class_names):
        # class ids (0, 1, ...) answered where the labels are class_names' names (checked before): accuracy 0
        raise InvalidRequest(f"the output column answers ({_listed(list(dict.fromkeys(classes)))}), none of"
                             f" class_names ({_listed(class_names)}): a model answering one class a row is compared"
                             " as it answers; leave class_names out and store the classes it answers in"
                             f" {label_column!r}, or answer one score per class")
    return classes


def _one_value(flat: list[Any], class_names: list[str] | None, truth: list[str], label_column: str,
               positions: bool) -> list[str]:
    """One value a row ([N, 1], or a scalar column's numbers): not scores to take the argmax of (always 0: every row
    was class 0), but the class (of an [N, 1] output, `positions`, its position in class_names when they are given,
    as a score's; a scalar column's is compared as answered, a label output's class), or a binary classifier's
    probability of class 1 (a sigmoid's: class 1 from 0.5) when any value is a fraction; decided over the whole run,
    as a saturated sigmoid answers exactly 1.0 or 0.0 and a batch of only those read as class ids is no name of
    class_names."""
    if not any(isinstance(v, float) and not v.is_integer() for v in flat):
        if class_names is None or not positions:
            return [_class(v) for v in flat]
        named = []
        for v in flat:
            if not isinstance(v, int | float):  # a class name (or a missing answer): compared as it is
                named.append(_class(v))
                continue
            if not 0 <= v < len(class_names):
                raise InvalidRequest(f"the output column holds one class a row, and {_class(v)} is no position of"
                                     f" class_names (0 to {len(class_names) - 1}): with class_names, a class id names"
                                     " class_names[id]")
            named.append(class_names[int(v)])
        return named
    if not all(isinstance(v, int | float) and 0.0 <= v <= 1.0 for v in flat):
        odd = next(v for v in flat if not (isinstance(v, int | float) and 0.0 <= v <= 1.0))
        raise InvalidRequest(f"the output column holds one value a row, read as the class when whole and as a"
                             f" binary classifier's probability of class 1 when fractions in [0, 1]; {odd!r}"
                             " beside fractions is neither: answer the class, a probability, or one score per"
                             " class")
    if class_names is not None and len(class_names) != 2:
        raise InvalidRequest(f"class_names has {len(class_names)} names; a probability a row is a binary"
                             " classifier's: name its two classes (class 0, class 1)")
    names = class_names or ["0", "1"]
    others = [label for label in dict.fromkeys(truth) if label not in names]
    if others:  # not a binary classifier's data as named: a regression's [0, 1] output, 'no'/'yes' without names
        raise InvalidRequest(f"the output column holds one probability a row (a binary classifier's, class 1 from"
                             f" 0.5), but {label_column!r} holds {_listed(others)}, not only {names[0]!r} and"
                             f" {names[1]!r}: "
                             + ("name the two classes with class_names (class 0 first), " if class_names is None
                                else "") + "or answer the class or one score per class")
    return [names[1] if v >= 0.5 else names[0] for v in flat]


async def run_classification(deps: Deps, infer: Infer, resolve: Resolve, principal: Principal, token: str | None,
                             cmd: RunClassificationBenchmark) -> BenchmarkReport:
    chosen = await _chosen(deps, principal, token, cmd)
    table = await classification_rows(deps, chosen, cmd.label_column)
    routes = await _routes(resolve, token, cmd.workspace_id, cmd.deployments)
    candidates = await classification_candidates(infer, routes, table, cmd)
    return await _store(deps, principal, cmd, "classification", chosen, candidates)


async def _routes(resolve: Resolve, token: str | None, workspace_id: int, names: list[str]) -> list[dict[str, Any]]:
    """The deployments' routes, each in `workspace_id` and reachable by the caller (404 otherwise)."""
    routes = []
    for name in dict.fromkeys(names):
        try:
            route = await resolve(token, name)
        except NotFound:
            raise NotFound(f"deployment {echo(name)} not found") from None
        if route["workspace_id"] != workspace_id:
            raise NotFound(f"deployment {echo(name)} not found")
        routes.append(route)
    return routes


async def classification_rows(deps: Deps, chosen: dict[str, Any], label_column: str) -> pa.Table:
    if chosen["kind"] != "tabular":
        raise InvalidRequest(f"a classification benchmark runs on a tabular dataset's rows; this one is"
                             f" {chosen['kind']}")
    if chosen["rows_sha256"] is None:
        raise InvalidRequest("the dataset has no rows")
    table = pq.read_table(io.BytesIO(await deps.objects.get_bytes(BUCKET_DATASETS, content_key(chosen["rows_sha256"]))))
    if label_column not in table.column_names:
        raise InvalidRequest(f"no column {label_column!r} in the dataset"
                             f" (columns: {', '.join(table.column_names)})")
    if not table.num_rows:  # rows stored once, then all deleted: nothing to score (and no latency to report)
        raise InvalidRequest("the dataset has no rows")
    return table


def _check_class_names(truth: list[str], class_names: list[str] | None, label_column: str) -> None:
    """`class_names` name the output's score positions, so the labels must be those names: labels that are none of
    them (class ids 0, 1, ... with names given) would score every prediction wrong, a report of accuracy 0 that
    says nothing of the model."""
    if not class_names or not truth or set(truth) & set(class_names):
        return
    labels = list(dict.fromkeys(truth))
    raise InvalidRequest(
        f"no value of {label_column!r} ({_listed(labels)}) is one of class_names ({_listed(class_names)}):"
        " class_names name the output's scores in order, and the labels are compared with those names; store the"
        " class names in the label column, or leave class_names out to compare the labels with the index of the"
        " highest score")


async def classification_candidates(infer: Infer, routes: list[dict[str, Any]], table: pa.Table,
                                    cmd: Any) -> list[BenchmarkCandidate]:
    """Each deployment's predictions on the rows (minus `label_column`), scored, with the engine's speed."""
    truth = [_class(v) for v in table.column(cmd.label_column).to_pylist()]
    _check_class_names(truth, cmd.class_names, cmd.label_column)
    labels = dict.fromkeys(truth)  # each once, in order
    inputs = table.drop_columns([cmd.label_column])
    candidates = []
    for route in routes:
        predicted: list[str | int] = []
        deferred: tuple[list[Any], list[Any]] = ([], [])  # one number a row: read once all are in (every call alike)
        latencies, last_model = [], None
        started = time.perf_counter()
        for offset in range(0, inputs.num_rows, cmd.batch_size):
            batch = inputs.slice(offset, cmd.batch_size)
            sent = time.perf_counter()
            headers, data = await infer(route["name"], to_ipc_stream(batch))
            latencies.append(time.perf_counter() - sent)
            output = from_ipc(data)
            if cmd.output_column not in output.column_names:
                raise InvalidRequest(f"deployment {route['name']!r} answers no column {cmd.output_column!r}"
                                     f" (columns: {', '.join(output.column_names)})")
            predicted.extend(_predicted(output.column(cmd.output_column).to_pylist(), cmd.class_names, labels,
                                        cmd.label_column, deferred))
            meta = json.loads(headers.get(META_HEADER) or "{}") if headers else {}
            last_model = meta.get("last_model") or last_model
        wall = time.perf_counter() - started
        classes = _classes(predicted, deferred, cmd.class_names, truth, cmd.label_column)
        metrics = await asyncio.to_thread(evaluation.classification_metrics, truth, classes)
        candidates.append(BenchmarkCandidate(
            name=route["name"], deployment=route["name"], pipeline_version=route.get("pipeline_version"),
            model=last_model, model_version=route.get("model_version"), metrics=metrics,
            speed=benchmarks.speed(latencies, inputs.num_rows, wall)))
    return candidates


async def evaluate_detections(deps: Deps, infer: Infer, resolve: Resolve, principal: Principal, token: str | None,
                              cmd: EvaluateDetections) -> BenchmarkReport:
    chosen = await _chosen(deps, principal, token, cmd)
    truth = detection_truth(chosen)
    routes = await _routes(resolve, token, cmd.workspace_id, cmd.deployments)
    candidates = []
    for candidate in cmd.candidates:
        found = {name: [d.model_dump() for d in dets] for name, dets in candidate.detections.items()}
        candidates.append(BenchmarkCandidate(name=candidate.name, model_version=candidate.model_version,
                                             metrics=await _detection_metrics(candidate.name, truth, found)))
    candidates += await detection_candidates(deps, infer, routes, chosen, truth, cmd)
    return await _store(deps, principal, cmd, "detection", chosen, candidates)


async def _detection_metrics(name: str, truth: dict[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    try:
        return await asyncio.to_thread(benchmarks.detection_metrics, truth, found)
    except ValueError as exc:
        raise InvalidRequest(f"candidate {name!r}: {exc}") from None


async def detection_candidates(deps: Deps, infer: Infer, routes: list[dict[str, Any]], chosen: dict[str, Any],
                               truth: dict[str, Any], cmd: Any) -> list[BenchmarkCandidate]:
    """Each deployment's detections on the dataset's images, run through its engine (`cmd.batch_size` images a
    call, each preprocessed as `cmd.image` says), scored with COCO's evaluator, with the engine's speed."""
    if not routes:
        return []
    images = await _dataset_images(deps, chosen)
    candidates = []
    for route in routes:
        found, latencies, started, last_model = {}, [], time.perf_counter(), None
        for offset in range(0, len(images), cmd.batch_size):
            batch = images[offset:offset + cmd.batch_size]
            inputs = pa.table({cmd.image.input: tensor_array(np.concatenate(
                [detection_images.preprocess(image, cmd.image) for _, image in batch]))})
            sent = time.perf_counter()
            headers, data = await infer(route["name"], to_ipc_stream(inputs))
            latencies.append(time.perf_counter() - sent)
            output = from_ipc(data)
            for row, (name, image) in enumerate(batch):
                found[name] = _boxes_of(route["name"], output, row, cmd.image, image)
            meta = json.loads(headers.get(META_HEADER) or "{}") if headers else {}
            last_model = meta.get("last_model") or last_model
        wall = time.perf_counter() - started
        candidates.append(BenchmarkCandidate(
            name=route["name"], deployment=route["name"], pipeline_version=route.get("pipeline_version"),
            model=last_model, model_version=route.get("model_version"),
            metrics=await _detection_metrics(route["name"], truth, found),
            speed=benchmarks.speed(latencies, len(images), wall)))
    return candidates


async def _dataset_images(deps: Deps, chosen: dict[str, Any]) -> list[tuple[str, Any]]:
    """The dataset's images, decoded (PNG and JPEG, as predictions take them; 400 naming a file otherwise)."""
    images = []
    for f in chosen["files"]:
        data = await deps.objects.get_bytes(BUCKET_DATASETS, content_key(f.sha256))
        try:
            images.append((f.name, await asyncio.to_thread(detection_images.decode_image, data)))
        except InvalidRequest as exc:
            raise InvalidRequest(f"file {f.name!r}: {exc.msg}") from None
    return images


def _boxes_of(deployment: str, output: pa.Table, row: int, config: Any, image: Any) -> list[dict[str, Any]]:
    """One image's detections from the engine's answer ([x, y, w, h] pixels of the original image, the class by
    name), through the same conversion predictions use."""
    outputs = {}
    for name in (config.outputs.scores, config.outputs.boxes, config.outputs.classes):
        if name is None:
            continue
        if name not in output.column_names:
            raise InvalidRequest(f"deployment {deployment!r} answers no column {name!r}"
                                 f" (columns: {', '.join(output.column_names)})")
        outputs[name] = np.asarray(output.column(name)[row].as_py(), dtype=np.float64)
    prediction = detection_images.to_prediction(outputs, config, image.height, image.width, None)
    return [{"bbox": evaluation.coco_box(box), "category": config.labels[cls], "score": score}
            for box, cls, score in zip(prediction["detection_boxes"], prediction["detection_classes"],
                                       prediction["detection_scores"], strict=True)]


def detection_truth(chosen: dict[str, Any]) -> dict[str, Any]:
    if chosen["kind"] != "images":
        raise InvalidRequest(f"a detection benchmark runs on an images dataset; this one is {chosen['kind']}")
    truth = {}
    for f in chosen["files"]:
        labels = f.labels
        boxes = labels.get("boxes") if isinstance(labels, dict) else None
        if not isinstance(boxes, list):
            raise InvalidRequest(f"file {f.name!r} has no labels.boxes ([{{bbox: [x, y, w, h], category}}])")
        for box in boxes:
            if not (isinstance(box, dict) and isinstance(box.get("bbox"), list) and len(box["bbox"]) == 4
                    and "category" in box):
                raise InvalidRequest(f"file {f.name!r}: each box needs bbox [x, y, w, h] and category")
        truth[f.name] = boxes
    if not truth:
        raise InvalidRequest("the dataset has no images")
    return truth


def _report(row: Any) -> BenchmarkReport:
    return BenchmarkReport(id=row["id"], workspace_id=row["workspace_id"], name=row["name"], task=row["task"],
                           dataset=_jsonb(row["dataset"]), candidates=_jsonb(row["candidates"]),
                           created_by=str(row["created_by"]), created_at=row["created_at"])


async def _store(deps: Deps, principal: Principal, cmd: DatasetChoice, task: str, chosen: dict[str, Any],
                 candidates: list[BenchmarkCandidate]) -> BenchmarkReport:
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await insert_report(conn, cmd.workspace_id, cmd.name, task, chosen, candidates, principal.user_id)
    return report_completed(deps, row)


async def insert_report(conn: Any, workspace_id: int, name: str, task: str, chosen: dict[str, Any],
                        candidates: list[BenchmarkCandidate], created_by: str,
                        extra: dict[str, Any] | None = None) -> Any:
    """Store a report, draw its card and put its events.benchmark.completed in the outbox (in the caller's
    transaction; `report_completed` after the commit)."""
    dataset = {**chosen["ref"], "kind": chosen["kind"], "rows_sha256": chosen["rows_sha256"], **(extra or {})}
    row = await store.insert_report(conn, workspace_id, name, task, dataset,
                                    [c.model_dump(mode="json") for c in candidates], uuid.UUID(created_by))
    await graph.benchmark_node(conn, row, chosen["card"], candidates)
    await store.add_event(conn, subjects.EVENT_BENCHMARK_COMPLETED, BenchmarkCompleted(
        workspace_id=row["workspace_id"], report_id=row["id"], task=row["task"], name=row["name"]))
    return row


def report_completed(deps: Deps, row: Any) -> BenchmarkReport:
    """A stored report (its transaction committed): the outbox sends its events.benchmark.completed now."""
    deps.events_committed()
    return _report(row)


async def _readable(deps: Deps, principal: Principal, token: str | None, report_id: int) -> Any:
    require_user(principal)
    row = await store.report(deps.pool, report_id)
    if row is None:
        raise NotFound(f"report {report_id} not found")
    try:
        await require_member(deps.membership(token), principal, row["workspace_id"])
    except NotFound:
        raise NotFound(f"report {report_id} not found") from None
    return row


async def get_report(deps: Deps, principal: Principal, token: str | None, report_id: int) -> BenchmarkReport:
    return _report(await _readable(deps, principal, token, report_id))


async def list_reports(deps: Deps, principal: Principal, token: str | None, workspace_id: int) -> BenchmarkReports:
    require_user(principal)
    await require_member(deps.membership(token), principal, workspace_id)
    return BenchmarkReports(reports=[_report(r) for r in await store.reports_of(deps.pool, workspace_id)])


async def compare_reports(deps: Deps, principal: Principal, token: str | None, cmd: CompareReports) -> ReportComparison:
    columns, candidates = [], []
    tasks = set()
    for report_id in dict.fromkeys(cmd.report_ids):
        row = await _readable(deps, principal, token, report_id)
        tasks.add(row["task"])
        for candidate in _jsonb(row["candidates"]):
            columns.append({"report_id": report_id, "name": candidate["name"]})
            candidates.append({"metrics": {**candidate["metrics"], **({"speed": candidate["speed"]}
                                                                       if candidate.get("speed") else {})}})
    if len(tasks) > 1:
        raise InvalidRequest("compare reports of one task: classification and detection metrics do not line up")
    return ReportComparison(candidates=columns, metrics=benchmarks.compare(candidates))



"""The workflow graph: cards (nodes) and arrows (edges), drawn from domain events and from the seed's explicit
input/output calls, and read back as ancestors/descendants of a card.

Cards are keyed by (workspace, kind, ref), so an event that arrives before the card it points at makes a
placeholder that the later event fills in. The service draws the events of a pulled batch concurrently and in any
order, so nothing drawn may depend on what was drawn before (docs/lineage.md "Order of events"):
- every drawing takes the workspace's graph lock first (store.lock_graph): one drawing at a time per workspace,
  each seeing the cards the others committed;
- an arrow from a card named only by a data field (a model by name, an assay's pipeline by id) is remembered
  (`link_refs`) and resolved again whenever a card of that name is drawn, by the events' times (`_resolve`);
- a status (model version, task run) or active flag is the latest event's by its time (store.set_if_newer), not
  the last drawn;
- a model version and a workspace file with the same bytes are linked whichever comes first.

Events drawn (the contract other services keep; docs/lineage.md):
- `events.model.uploaded` → a `model_version` card; with `sha256`, an arrow from every workspace file with the
  same bytes (a task run's model-weight output uploaded as a model).
- `events.pipeline.version_created` → a `pipeline_version` card; with `models` ([{name, version}]), arrows from
  those model versions (the named version, or the newest version of that name).
- `events.pipeline.deployed` → a `deployment` card, arrow from its pipeline version.
- `events.assay.created` → an `assay` card, arrow from the pipeline's newest deployment (or pipeline version).
- `events.task_run.*` → a `task_run` card (ref `run_id`, data `task_id`, `status`), an arrow from its
  `orchestration` (`orch_id`), and arrows from its optional `inputs` and to its optional `outputs` ([{kind, ref}]).
- `events.monitoring.training_finished` → arrows from a continuous-training run (`run_id`) to its `outputs`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from services.workflow_lineage import store
from shared import subjects
from shared.errors import InvalidRequest, NotFound
from shared.messages.lineage import (
    LinkAdded,
    WorkflowEdge,
    WorkflowGraph,
    WorkflowLink,
    WorkflowNode,
    WorkflowSettings,
    relative_url_problem,
)

log = logging.getLogger("railyard.workflow_lineage")

KINDS = ("project", "project_version", "dataset", "file", "folder", "task_run", "labeling_job", "app_session",
         "model_version", "pipeline_version", "deployment", "assay", "orchestration", "benchmark")
MAX_NODES = 2000
# events whose drawing may complete a task run -> model version -> deployment chain (automatic benchmarks)
COMPLETES_EVALUATIONS = (subjects.EVENT_MODEL_UPLOADED, subjects.EVENT_PIPELINE_VERSION_CREATED,
                         subjects.EVENT_PIPELINE_DEPLOYED)
DEFAULT_LOOK = {
    "project": {"icon": "collection-image", "url_of": "/projects/{ref}"},
    "project_version": {"icon": "time-restore", "url_of": None},
    "dataset": {"icon": "collection-item", "url_of": "/datasets/{ref}"},
    "file": {"icon": "file", "url_of": None},
    "folder": {"icon": "folder", "url_of": None},
    "task_run": {"icon": "play-circle", "url_of": "/tasks/runs/{ref}"},
    "labeling_job": {"icon": "labels", "url_of": None},
    "app_session": {"icon": "apps", "url_of": "/apps/sessions/{ref}"},
    "model_version": {"icon": "memory", "url_of": None},
    "pipeline_version": {"icon": "device-hub", "url_of": None},
    "deployment": {"icon": "cloud-upload", "url_of": None},
    "assay": {"icon": "chart", "url_of": None},
    "orchestration": {"icon": "widgets", "url_of": None},
    "benchmark": {"icon": "trending-up", "url_of": None},
}


def _jsonb(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


LOOK_FIELDS = ("icon", "icon_color", "icon_bg_color")


def _stored_look(settings: dict[str, Any]) -> dict[str, Any]:
    """A card's stored icon and colours as WorkflowSettings takes them now. Its checks were re.match on patterns
    ending in '$' until cb581b6e, which also took the value with one newline after it ('folder\n', '#fff\n'): stored
    so, it is answered without that newline; a value refused otherwise is left out (a node then has its kind's
    icon). Kept as stored, it made the whole workflow/graph fail (WorkflowSettings refuses it)."""
    changed = dict(settings)
    for key in LOOK_FIELDS:
        value = changed.get(key)
        if value is None:
            continue
        for candidate in (value, value[:-1]) if isinstance(value, str) and value.endswith("\n") else (value,):
            try:
                WorkflowSettings.model_validate({key: candidate})
            except ValidationError:
                continue
            changed[key] = candidate
            break
        else:
            del changed[key]
    return changed


def _stored_settings(settings: dict[str, Any]) -> WorkflowSettings:
    """A card's stored settings as the graph answers them. A url stored before the check refused a backslash,
    whitespace or a control character in it (shared/messages/lineage.py relative_url_problem) is left out: it could
    lead off the instance, and keeping it made the whole graph fail (WorkflowSettings refuses it). Its icon and
    colours as _stored_look reads them. Its title and url_title as stored: a request's may hold no control character
    (NewWorkflowSettings, since session 39), but WorkflowSettings, which answers read, takes one stored before, or
    a card's default title (a file's name with a tab, a project's with DEL taken until session 38)."""
    settings = _stored_look(settings)
    url = settings.get("url")
    if isinstance(url, str) and relative_url_problem(url):
        settings = {key: value for key, value in settings.items() if key != "url"}
    return WorkflowSettings(**settings)


def node_model(row: Any) -> WorkflowNode:
    settings = _stored_look(_jsonb(row["settings"]) or {})  # before the defaults: one it leaves out is the kind's
    look = DEFAULT_LOOK.get(row["kind"], {})
    defaults = {"title": row["title"], "icon": look.get("icon")}
    if look.get("url_of"):
        defaults["url"] = look["url_of"].format(ref=row["ref"])
    merged = {**{k: v for k, v in defaults.items() if v is not None}, **settings}
    return WorkflowNode(id=row["id"], kind=row["kind"], ref=row["ref"], title=merged.get("title") or row["title"],
                        settings=_stored_settings(merged), data=_jsonb(row["data"]) or {},
                        created_at=row["created_at"], updated_at=row["updated_at"])


def edge_model(row: Any) -> WorkflowEdge:
    return WorkflowEdge(id=row["id"], source=row["source"], target=row["target"], relation=row["relation"],
                        origin=row["origin"], settings=_stored_settings(_jsonb(row["settings"]) or {}))


def _settings(settings: WorkflowSettings | None) -> dict[str, Any] | None:
    return settings.model_dump(exclude_none=True) if settings else None


# --- cards the service's own operations draw -------------------------------------------------------------


async def project_node(conn: Any, project: Any) -> Any:
    await store.lock_graph(conn, project["workspace_id"])
    return await store.upsert_node(conn, project["workspace_id"], "project", str(project["id"]), project["name"],
                                   data={"project_id": project["id"]})


async def version_node(conn: Any, project: Any, version: Any) -> Any:
    """A version card with an arrow from its project."""
    source = await project_node(conn, project)  # takes the graph lock
    title = f"{project['name']} v{version['number']}" + (f": {version['title']}" if version["title"] else "")
    card = await store.upsert_node(conn, project["workspace_id"], "project_version", str(version["id"]), title,
                                   data={"project_id": project["id"], "number": version["number"],
                                         "manifest_sha256": version["manifest_sha256"]})
    await store.add_edge(conn, project["workspace_id"], source["id"], card["id"], "version", "event")
    return card


async def restored_node(conn: Any, version: Any, project: Any) -> Any:
    """A restored project's card with an arrow from the version it was restored from."""
    await store.lock_graph(conn, version["workspace_id"])
    source = await store.upsert_node(conn, version["workspace_id"], "project_version", str(version["id"]))
    card = await project_node(conn, project)
    await store.add_edge(conn, version["workspace_id"], source["id"], card["id"], "restored_as", "event")
    return card


async def benchmark_node(conn: Any, report: Any, data_card: tuple[str, str, str | None], candidates: list[Any]) -> Any:
    """A benchmark report's card, with arrows from the data it ran on and from each deployment it ran."""
    workspace_id = report["workspace_id"]
    await store.lock_graph(conn, workspace_id)
    card = await store.upsert_node(conn, workspace_id, "benchmark", str(report["id"]), report["name"],
                                   data={"task": report["task"]})
    kind, ref, title = data_card
    source = await store.upsert_node(conn, workspace_id, kind, ref, title)
    await store.add_edge(conn, workspace_id, source["id"], card["id"], "evaluated_on", "event")
    for candidate in candidates:
        if candidate.deployment:
            deployment_id = candidate.deployment.rsplit("-", 1)[-1]
            model = await store.upsert_node(conn, workspace_id, "deployment", deployment_id)
            await store.add_edge(conn, workspace_id, model["id"], card["id"], "evaluated", "event")
        if candidate.model_version:
            model = await store.upsert_node(conn, workspace_id, "model_version", candidate.model_version)
            await store.add_edge(conn, workspace_id, model["id"], card["id"], "evaluated", "event")
    return card


# --- cards drawn from domain events ----------------------------------------------------------------------


async def apply_event(conn: Any, subject: str, payload: dict[str, Any], occurred_at: datetime) -> None:
    """Draw what a domain event tells on the graph (unknown subjects and incomplete payloads draw nothing), under
    the workspace's graph lock; `occurred_at` is the event's time."""
    try:
        if subject not in DRAWN and not subject.startswith(subjects.EVENT_TASK_RUN_PREFIX):
            return
        workspace_id = int(payload["workspace_id"])
        await store.lock_graph(conn, workspace_id)
        if subject == subjects.EVENT_MODEL_UPLOADED:
            await _model_uploaded(conn, workspace_id, payload, occurred_at)
        elif subject == subjects.EVENT_MODEL_VERSION_FINISHED:
            card = await store.upsert_node(conn, workspace_id, "model_version", str(payload["model_version"]))
            await store.set_if_newer(conn, card["id"], "status_at", occurred_at, {"status": payload["status"]})
        elif subject == subjects.EVENT_PIPELINE_VERSION_CREATED:
            await _pipeline_version_created(conn, workspace_id, payload, occurred_at)
        elif subject == subjects.EVENT_PIPELINE_DEPLOYED:
            await _pipeline_deployed(conn, workspace_id, payload, occurred_at)
        elif subject == subjects.EVENT_PIPELINE_UNDEPLOYED:
            card = await store.upsert_node(conn, workspace_id, "deployment", str(payload["deployment_id"]))
            await store.set_if_newer(conn, card["id"], "active_at", occurred_at, {"active": False})
        elif subject == subjects.EVENT_ASSAY_CREATED:
            await _assay_created(conn, workspace_id, payload, occurred_at)
        elif subject.startswith(subjects.EVENT_TASK_RUN_PREFIX):
            await _task_run(conn, workspace_id, subject, payload, occurred_at)
        elif subject == subjects.EVENT_MONITORING_TRAINING_FINISHED:
            await _training_outputs(conn, payload)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("event on %s lacks what the graph needs (%s): drawn nothing", subject, exc)


DRAWN = (subjects.EVENT_MODEL_UPLOADED, subjects.EVENT_MODEL_VERSION_FINISHED, subjects.EVENT_PIPELINE_VERSION_CREATED,
         subjects.EVENT_PIPELINE_DEPLOYED, subjects.EVENT_PIPELINE_UNDEPLOYED, subjects.EVENT_ASSAY_CREATED,
         subjects.EVENT_MONITORING_TRAINING_FINISHED)


async def _resolve(conn: Any, ref: Any) -> None:
    """Draw a name reference's arrow from the card it resolves to now (store.best_candidate: the newest card of
    the name whose event happened no later than the naming event's), moving it from the card it came from before:
    one arrow per reference, whatever order the cards were drawn in."""
    best = await store.best_candidate(conn, ref)
    if best == ref["source"]:
        return
    if ref["source"] is not None:
        await store.delete_moved_edge(conn, ref)
    if best is not None:
        await store.add_edge(conn, ref["workspace_id"], best, ref["target"], ref["relation"], "event")
    await store.set_link_ref_source(conn, ref["id"], best)


async def _link_by(conn: Any, workspace_id: int, target: Any, relation: str, kinds: list[str], key: str, value: str,
                   as_of: datetime) -> None:
    """An arrow into `target` from the card of `kinds` whose data[key] is value, as it was at `as_of`: drawn now
    if that card is drawn, and (re)drawn when a card of that name is drawn later (_candidate_drawn)."""
    await _resolve(conn, await store.add_link_ref(conn, workspace_id, target["id"], relation, kinds, key, value,
                                                  as_of))


async def _candidate_drawn(conn: Any, workspace_id: int, card: Any, at: datetime, keys: dict[str, str]) -> None:
    """A card a name may resolve to was drawn by its defining event (at `at`): record the time, then resolve again
    the references waiting for its name (`keys`: data field -> value)."""
    await store.set_occurred_at(conn, card["id"], at)
    for key, value in keys.items():
        for ref in await store.link_refs_naming(conn, workspace_id, card["kind"], key, value):
            await _resolve(conn, ref)


async def _model_uploaded(conn: Any, workspace_id: int, event: dict[str, Any], at: datetime) -> None:
    card = await store.upsert_node(conn, workspace_id, "model_version", str(event["model_version"]),
                                   f"{event['name']} ({event.get('framework', '?')})",
                                   data={"model_id": event["model_id"], "name": event["name"],
                                         "framework": event.get("framework"), "sha256": event.get("sha256")})
    # the upload's status unless a conversion's end (a later event) was drawn first
    await store.set_if_newer(conn, card["id"], "status_at", at, {"status": event.get("status")})
    await _candidate_drawn(conn, workspace_id, card, at, {"name": str(event["name"])})
    if event.get("sha256"):
        for row in await store.workspace_files_with_sha(conn, workspace_id, event["sha256"]):
            source = await store.upsert_node(conn, workspace_id, "file", row["path"], row["path"].rsplit("/", 1)[-1])
            await store.add_edge(conn, workspace_id, source["id"], card["id"], "uploaded_as", "event")


async def file_saved(conn: Any, workspace_id: int, path: str, sha256: str) -> int:
    """A workspace file was saved (in the caller's transaction): arrows from it to the model versions uploaded with
    the same bytes, whose events may have been drawn before the file existed (_model_uploaded draws the others);
    how many."""
    await store.lock_graph(conn, workspace_id)
    models = await store.nodes_with(conn, workspace_id, "model_version", "sha256", sha256)
    if models:
        source = await store.upsert_node(conn, workspace_id, "file", path, path.rsplit("/", 1)[-1])
        for model in models:
            await store.add_edge(conn, workspace_id, source["id"], model["id"], "uploaded_as", "event")
    return len(models)


async def _pipeline_version_created(conn: Any, workspace_id: int, event: dict[str, Any], at: datetime) -> None:
    card = await store.upsert_node(conn, workspace_id, "pipeline_version", str(event["pipeline_version"]),
                                   event["name"], data={"pipeline_id": event["pipeline_id"], "name": event["name"]})
    await _candidate_drawn(conn, workspace_id, card, at, {"pipeline_id": str(event["pipeline_id"])})
    for model in event.get("models") or []:
        if model.get("version"):
            source = await store.upsert_node(conn, workspace_id, "model_version", str(model["version"]))
            await store.add_edge(conn, workspace_id, source["id"], card["id"], "used_by", "event")
            await store.add_pinned_ref(conn, workspace_id, card["id"], "used_by", source["id"], str(model["version"]),
                                       at)
        elif model.get("name"):  # the version of the name that was the newest when this version was created
            await _link_by(conn, workspace_id, card, "used_by", ["model_version"], "name", str(model["name"]), at)


async def _pipeline_deployed(conn: Any, workspace_id: int, event: dict[str, Any], at: datetime) -> None:
    source = await store.upsert_node(conn, workspace_id, "pipeline_version", str(event["pipeline_version"]),
                                     data={"pipeline_id": event["pipeline_id"], "name": event["name"]})
    card = await store.upsert_node(conn, workspace_id, "deployment", str(event["deployment_id"]),
                                   f"{event['name']} deployment",
                                   data={"pipeline_id": event["pipeline_id"], "name": event["name"]})
    await store.set_if_newer(conn, card["id"], "active_at", at, {"active": True})
    await store.add_edge(conn, workspace_id, source["id"], card["id"], "deployed_as", "event")
    await _candidate_drawn(conn, workspace_id, card, at, {"pipeline_id": str(event["pipeline_id"])})


async def _assay_created(conn: Any, workspace_id: int, event: dict[str, Any], at: datetime) -> None:
    card = await store.upsert_node(conn, workspace_id, "assay", str(event["assay_id"]), event["name"],
                                   data={"pipeline_id": event["pipeline_id"], "iopath": event.get("iopath")})
    # the pipeline's newest deployment when the assay was created, else its newest pipeline version
    await _link_by(conn, workspace_id, card, "monitored_by", ["deployment", "pipeline_version"], "pipeline_id",
                   str(event["pipeline_id"]), at)


async def _task_run(conn: Any, workspace_id: int, subject: str, event: dict[str, Any], at: datetime) -> None:
    card = await store.upsert_node(conn, workspace_id, "task_run", str(event["run_id"]), event.get("name"),
                                   data={"task_id": event["task_id"]} if event.get("task_id") else None)
    # the latest event's status (a run's end drawn before its start keeps "success")
    await store.set_if_newer(conn, card["id"], "status_at", at,
                             {"status": event.get("status") or subject.rsplit(".", 1)[-1]})
    if event.get("orch_id"):
        # titled by its name (events before orch_name: "orchestration <id>" until a newer run's event names it)
        orchestration = await store.upsert_node(conn, workspace_id, "orchestration", str(event["orch_id"]),
                                                event.get("orch_name") or None, data={"sha": event.get("orch_sha")})
        await store.add_edge(conn, workspace_id, orchestration["id"], card["id"], "ran", "event")
    for direction in ("inputs", "outputs"):
        for item in event.get(direction) or []:
            if item.get("kind") not in KINDS:
                continue
            other = await store.upsert_node(conn, workspace_id, item["kind"], str(item["ref"]))
            source, target = (other, card) if direction == "inputs" else (card, other)
            await store.add_edge(conn, workspace_id, source["id"], target["id"], direction[:-1], "event")


async def _training_outputs(conn: Any, event: dict[str, Any]) -> None:
    """events.monitoring.training_finished: arrows from a continuous-training run's card to what it produced (its
    model version), which the task scheduler's run events cannot know."""
    if not event.get("run_id"):
        return
    workspace_id = int(event["workspace_id"])
    card = await store.upsert_node(conn, workspace_id, "task_run", str(event["run_id"]))
    for item in event.get("outputs") or []:
        if item.get("kind") in KINDS:
            other = await store.upsert_node(conn, workspace_id, item["kind"], str(item["ref"]))
            await store.add_edge(conn, workspace_id, card["id"], other["id"], "output", "event")


# --- the seed's explicit input/output calls --------------------------------------------------------------


async def link(conn: Any, direction: str, card: str, cmd: WorkflowLink, target: tuple[str, str, str | None,
               dict[str, Any]], customizable: bool = True) -> LinkAdded:
    """Connect a data card to the task run (`task_id`): input arrows point at the task run, output arrows
    from it. The relation settings style the data card (not a project's, which the seed keeps as it is); the
    node settings replace the task run card's (the last write wins, as the seed warns)."""
    if cmd.task_id is None:
        raise InvalidRequest("task_id is required: it defaults to the calling task run only with a task run's"
                             " scoped token")
    kind, ref, title, data = target
    meta = cmd.meta
    main = await store.upsert_node(conn, cmd.workspace_id, "task_run", cmd.task_id, None)
    if meta is not None and meta.node_settings is not None:
        main = await store.replace_settings(conn, main["id"], _settings(meta.node_settings) or {})
    relation_settings = _settings(meta.relation_settings) if meta is not None and customizable else None
    other = await store.upsert_node(conn, cmd.workspace_id, kind, ref, title, relation_settings, data)
    source, dest = (other, main) if direction == "input" else (main, other)
    edge = await store.add_edge(conn, cmd.workspace_id, source["id"], dest["id"], direction, "explicit")
    return LinkAdded(node=node_model(other), main_node=node_model(main), edge=edge_model(edge))


# --- the graph query -------------------------------------------------------------------------------------


async def query(conn: Any, workspace_id: int, kind: str | None, ref: str | None, depth: int,
                direction: str) -> WorkflowGraph:
    """A card's ancestors and/or descendants to `depth` arrows away (or the whole workspace graph)."""
    if kind is None:
        nodes, edges = await store.workspace_graph(conn, workspace_id, MAX_NODES)
        ids = {n["id"] for n in nodes}
        return WorkflowGraph(root=None, nodes=[node_model(n) for n in nodes],
                             edges=[edge_model(e) for e in edges if e["source"] in ids and e["target"] in ids])
    root = await store.node(conn, workspace_id, kind, ref)
    if root is None:
        raise NotFound(f"no {kind} card {ref!r} in workspace {workspace_id}")
    seen = {root["id"]}
    edges: dict[int, Any] = {}
    for way in (("ancestors", "descendants") if direction == "both" else (direction,)):
        frontier = {root["id"]}
        for _ in range(depth):
            if not frontier or len(seen) >= MAX_NODES:
                break
            found = await store.edges_touching(conn, list(frontier), way)
            frontier = set()
            for edge in found:
                edges[edge["id"]] = edge
                other = edge["source"] if way == "ancestors" else edge["target"]
                if other not in seen:
                    seen.add(other)
                    frontier.add(other)
    nodes = await store.nodes_by_id(conn, sorted(seen))
    return WorkflowGraph(root=root["id"], nodes=[node_model(n) for n in nodes],
                         edges=[edge_model(e) for e in sorted(edges.values(), key=lambda e: e["id"])])

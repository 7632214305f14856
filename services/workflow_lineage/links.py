"""The seed's explicit input/output calls and the graph query, with the workspace rules: every card an explicit
call names must be in the caller's workspace (anything else does not exist), and the graph answers members of
the workspace only."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from services.workflow_lineage import graph, store
from services.workflow_lineage.handlers import Deps, file_path, folder_path
from shared import subjects
from shared.authz import Principal, require_member, require_user
from shared.errors import InvalidRequest, NotFound
from shared.messages import lineage as m

MODELS: dict[str, type[m.WorkflowLink]] = {"project": m.ProjectLink, "dataset": m.DatasetLink, "file": m.FileLink,
                                           "folder": m.FolderLink, "task": m.TaskLink, "job": m.JobLink,
                                           "app": m.AppLink}


async def _target(conn: Any, direction: str, card: str, cmd: Any) -> tuple[tuple[str, str, str | None, dict], bool]:
    """The data card a call names, checked to be in the call's workspace; and whether it may be customized."""
    workspace_id = cmd.workspace_id
    if card == "project":
        project = await store.project(conn, cmd.project_id)
        if project is None or project["workspace_id"] != workspace_id:
            raise NotFound(f"project {cmd.project_id} not found")
        if cmd.version_id is None and cmd.version_num is None:
            await graph.project_node(conn, project)
            return ("project", str(project["id"]), project["name"], {"project_id": project["id"]}), False
        version = (await store.version_head(conn, cmd.version_id) if cmd.version_id is not None
                   else await store.version_head_by_number(conn, cmd.project_id, cmd.version_num))
        if version is None or version["project_id"] != project["id"]:
            raise NotFound(f"project {cmd.project_id} has no such version")
        card_row = await graph.version_node(conn, project, version)
        return ("project_version", card_row["ref"], None, {}), False
    if card == "dataset":
        dataset = await store.dataset(conn, cmd.dataset_id)
        if dataset is None or dataset["workspace_id"] != workspace_id:
            raise NotFound(f"dataset {cmd.dataset_id} not found")
        return ("dataset", str(dataset["id"]), dataset["name"],
                {"project_id": dataset["project_id"], "kind": dataset["kind"]}), True
    if card == "file":
        path = file_path(cmd.path)
        found = await store.workspace_file(conn, workspace_id, path)
        if found is None:
            raise NotFound(f"no file {path!r} in workspace {workspace_id}")
        return ("file", path, PurePosixPath(path).name,
                {"model_weight": cmd.model_weight, "sha256": found["sha256"], "size": found["size"]}), True
    if card == "folder":
        folder = folder_path(cmd.path)
        if folder != "/" and not await store.workspace_files_under(conn, workspace_id, folder):
            raise NotFound(f"no folder {folder!r} in workspace {workspace_id}")
        return ("folder", folder, folder, {}), True
    if card == "task":
        other = cmd.input_task_id if direction == "input" else cmd.output_task_id
        if other is None:
            raise InvalidRequest(f"{direction}_task_id is required")
        if other == cmd.task_id:  # an arrow from a run to itself says nothing of where its data came from
            raise InvalidRequest(f"{direction}_task_id {other!r} is the task run the link is made for (task_id, or"
                                 " the calling task's): a task run is not its own " + direction)
        return ("task_run", other, None, {}), True
    if card == "job":
        if cmd.url is not None and (problem := m.relative_url_problem(cmd.url)):
            raise InvalidRequest(problem)
        return ("labeling_job", cmd.id, f"Labeling job {cmd.id}", {"url": cmd.url} if cmd.url else {}), True
    if card == "app":
        if cmd.task_id is None:
            raise InvalidRequest("task_id is required")
        return ("app_session", cmd.task_id, f"App session {cmd.task_id}", {}), True
    raise InvalidRequest(f"unknown card {card!r}")


async def _evaluation(deps: Deps, conn: Any, direction: str, cmd: Any,
                      principal: Principal) -> dict[str, Any] | None:
    """What an input link's `evaluation` declares (docs/lineage.md "Automatic benchmarks"), checked now so a
    declaration that could never run answers 400. A version's dataset is parsed from its manifest once per version
    and dataset (deps.saved_files: a version never changes)."""
    spec: m.EvaluationSpec | None = getattr(cmd, "evaluation", None)
    if spec is None:
        return None
    if direction != "input":
        raise InvalidRequest("evaluation declares an input of the task run: use add_input_dataset / add_input_project")
    if isinstance(cmd, m.ProjectLink):
        version = (await store.version_head(conn, cmd.version_id) if cmd.version_id is not None
                   else await store.version_head_by_number(conn, cmd.project_id, cmd.version_num)
                   if cmd.version_num is not None else None)
        if version is None:
            raise InvalidRequest("an evaluation set of a project is one of its versions: give version_id or"
                                 " version_num, and evaluation.dataset_name")

        async def manifest_text() -> str:
            return await store.version_manifest(conn, version["id"]) or '{"datasets": []}'

        entry = (await deps.saved_files.get(version["id"], spec.dataset_name, version["created_at"], manifest_text)
                 if spec.dataset_name is not None else None)
        if entry is None:
            raise InvalidRequest(f"version {version['id']} has no dataset {spec.dataset_name!r}"
                                 " (evaluation.dataset_name)")
        kind, data = entry.kind, {"version_id": version["id"], "dataset_name": spec.dataset_name}
    else:
        kind, data = (await store.dataset(conn, cmd.dataset_id))["kind"], {"dataset_id": cmd.dataset_id}
    if kind == "tabular" and spec.output_column is None:
        raise InvalidRequest("a tabular evaluation set is a classification benchmark: give evaluation.output_column")
    if kind == "images" and (spec.image is None or spec.image.kind != "detection"):
        raise InvalidRequest("an images evaluation set is a detection benchmark: give evaluation.image (the"
                             " pipeline's image configuration, kind detection)")
    if kind == "files":
        raise InvalidRequest("a files dataset cannot be an evaluation set: use a tabular or images dataset")
    return {"data": data, "spec": spec.model_dump(mode="json", exclude_none=True), "declared_by": principal.user_id}


async def add(deps: Deps, principal: Principal, token: str | None, direction: str, card: str,
              cmd: m.WorkflowLink) -> m.LinkAdded:
    """Seed add_<direction>_<card>: connect a card to the task run `task_id`."""
    require_user(principal)
    await require_member(deps.membership(token), principal, cmd.workspace_id)
    if cmd.task_id is None:
        # the seed: task_id defaults to the calling task, which a task run's scoped token names: its run (the
        # card events.task_run.* draw); a scoped token minted without a run names its task
        if principal.scoped_task is None:
            raise InvalidRequest("task_id is required (it defaults to the calling task only with a task run's token)")
        cmd = cmd.model_copy(update={"task_id": principal.scoped_run or principal.scoped_task})
    async with deps.pool.acquire() as conn, conn.transaction():
        await store.lock_graph(conn, cmd.workspace_id)  # before any card is read or written (graph.py)
        target, customizable = await _target(conn, direction, card, cmd)
        evaluation = await _evaluation(deps, conn, direction, cmd, principal)
        added = await graph.link(conn, direction, card, cmd, target, customizable)
        if evaluation is not None:
            await store.upsert_node(conn, cmd.workspace_id, "task_run", cmd.task_id, data={"evaluation": evaluation})
        claimed = await store.claim_ready_evaluations(conn, cmd.workspace_id)
        source, dest = (added.node, added.main_node) if direction == "input" else (added.main_node, added.node)
        # in the outbox with the link, under the workspace's graph lock: one workspace's links go out in commit order
        await store.add_event(conn, subjects.EVENT_WORKFLOW_LINK_ADDED, m.WorkflowLinkAdded(
            workspace_id=cmd.workspace_id, source_kind=source.kind, source_ref=source.ref, target_kind=dest.kind,
            target_ref=dest.ref, relation=direction, origin="explicit"))
    deps.events_committed()
    if claimed:
        deps.wake_benchmarks()
    return added


async def graph_query(deps: Deps, principal: Principal, token: str | None, cmd: m.GetWorkflowGraph) -> m.WorkflowGraph:
    require_user(principal)
    await require_member(deps.membership(token), principal, cmd.workspace_id)
    if cmd.kind is not None and cmd.kind not in graph.KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(graph.KINDS)}")
    async with deps.pool.acquire() as conn:
        return await graph.query(conn, cmd.workspace_id, cmd.kind, cmd.ref, cmd.depth, cmd.direction)



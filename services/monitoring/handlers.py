"""Business logic of the monitoring service, as plain async functions: seed 003's deployment management.

A deployment is the deployer's (`<deploy_id>-<id>`): every call first asks the deployer where it is, with the
caller's token (a deployment of a workspace the caller is not in does not exist), then checks membership again
here. The monitoring service keeps only what the deployer does not: tags, display name, target datalake and
minimum threshold. Changing the model (set_model, set_shadow_model) goes through the deployer's own commands: a new
pipeline version, then a deploy of that version under the same deploy_id, which the deployer swaps in place."""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.monitoring import datalake, feedback_store, store
from shared import subjects
from shared.authz import MembershipLookup, Principal, require_member
from shared.bus import request
from shared.errors import Conflict, Forbidden, InvalidRequest, NotFound
from shared.messages.deployer import (
    CreatePipeline,
    Deployed,
    DeploymentRoute,
    DeployPipeline,
    GetPipeline,
    PipelineCreated,
    PipelineRecord,
    ResolveDeployment,
    UndeployPipeline,
)
from shared.messages.monitoring import (
    TAG_PATTERN,
    AddDeploymentTags,
    DeleteDeployment,
    DeploymentDeleted,
    DeploymentInformation,
    DeploymentModel,
    DeploymentTags,
    ModelSplit,
    ModelVersionRef,
    SetDeploymentModel,
    SplitArm,
    UpdateDeployment,
)
from shared.messages.registry import ResolvedModel, ResolveModel
from shared.pipeline_pages import workspace_pipelines


class OwnerRefused(Forbidden):
    """Auth refused the token of the user a background action runs as (auth.token.issue_task: the user is unknown,
    deactivated or no longer a member of the workspace): a definite answer, unlike a timeout, so what acts as that
    user stops (continuous training, continuous deployment, the feedback loop are suspended with the reason) rather
    than being tried again for every review, alert, delivery or export round."""

    code = "owner_refused"


def owner_refused_reason(what: str, exc: Forbidden) -> str:
    """The suspended_reason a user reads for `what` (e.g. 'continuous deployment') whose owner's token was refused."""
    return (f"suspended: the owner's token was refused ({exc.msg}); set {what} up again as a member (you become its"
            " owner), or turn it on again once the owner is back")

TAG = re.compile(TAG_PATTERN)


@dataclass
class MonitoringDeps:
    """What the monitoring handlers need."""

    pool: asyncpg.Pool
    broker: Any
    membership: Callable[[str | None], MembershipLookup]
    timeout: float
    deploy_timeout: float
    objects: Any = None  # the object store (shared.objectstore.ObjectStore): prediction images, bucket "monitoring"
    max_image_bytes: int = 25 * 1024 * 1024  # the largest staged image predict/monitor read (monitoring settings)
    # Commands run several at once (nats.command_workers, 8 a subject): these bound the memory-heavy parts, an
    # image's decode and measures (~130 MiB at 16 MP) and a get_stats over up to 200,000 stored predictions
    # (monitoring.images_at_once, stats_at_once); 8 of each at once took a gigabyte or more
    image_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    stats_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    # wakes monitoring's outbox after a commit that wrote events (its Outbox.wake: review_created, prediction_created
    # and continuous training's events are written in their change's transaction and sent from the outbox)
    events_committed: Callable[[], None] = lambda: None


@dataclass
class DeploymentView:
    """A deployment as the deployer knows it: its route, its pipeline and the definition it serves."""

    route: DeploymentRoute
    pipeline_id: int
    deploy_id: str
    definition: dict[str, Any]
    engine_config: dict[str, Any] | None
    # the pk id of the pipeline version it serves: a deploy made from this look passes it as only_if_serving
    version_pk_id: int | None = None


async def _deployment(deps: MonitoringDeps, principal: Principal, token: str | None, name: str) -> DeploymentView:
    """The deployment `name` for a member of its workspace: its route (deployments/resolve), then its pipeline's one
    record (pipelines/get, by the route's pipeline_id), not the workspace's whole pipelines/list page by page: this
    runs for every predict and monitor call. NotFound when the deployment is not there or the caller not in its
    workspace ("not found"), and when it is no longer its pipeline's active one ("is not deployed")."""
    route = await request(deps.broker, subjects.DEPLOYER_DEPLOYMENTS_RESOLVE, ResolveDeployment(name=name),
                          token=token, timeout=deps.timeout, reply_model=DeploymentRoute)
    try:
        await require_member(deps.membership(token), principal, route.workspace_id)
    except NotFound:
        raise NotFound(f"deployment {name!r} not found") from None
    if route.pipeline_id is None:  # a deployer older than DeploymentRoute.pipeline_id: found in the list, as before
        async for pipelines in workspace_pipelines(deps.broker, route.workspace_id, token, deps.timeout):
            for pipeline in pipelines.pipelines:
                if pipeline.name == route.pipeline_name and _serves(pipeline, route):
                    return _view(route, pipeline)
        raise NotFound(f"deployment {name!r} is not deployed")
    try:
        pipeline = await request(deps.broker, subjects.DEPLOYER_PIPELINES_GET, GetPipeline(
            pipeline_id=route.pipeline_id), token=token, timeout=deps.timeout, reply_model=PipelineRecord)
    except NotFound:  # deleted since the resolve
        raise NotFound(f"deployment {name!r} is not deployed") from None
    if not _serves(pipeline, route):  # undeployed (or another deployment of it active) since the resolve
        raise NotFound(f"deployment {name!r} is not deployed")
    return _view(route, pipeline)


def _serves(pipeline: PipelineRecord, route: DeploymentRoute) -> bool:
    """Whether the route's deployment is the pipeline's active one."""
    return bool(pipeline.deployment) and pipeline.deployment["id"] == route.deployment_id


def _view(route: DeploymentRoute, pipeline: PipelineRecord) -> DeploymentView:
    """The deployment as its pipeline's record shows it: the record always lists the deployed version, even when
    older versions are cut (versions_cursor; deployer _pipeline_record), so no further read is needed."""
    active = pipeline.deployment
    version = next((v for v in pipeline.versions if v["id"] == active["pipeline_version_pk_id"]), None)
    return DeploymentView(route=route, pipeline_id=pipeline.id, deploy_id=active["name"].rpartition("-")[0],
                          definition=(version or {}).get("definition") or {},
                          engine_config=active.get("engine_config"),
                          version_pk_id=active.get("pipeline_version_pk_id"))


def _model_step(definition: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The step that holds the deployment's model: the first ShadowDeploy, else the first ModelInference."""
    steps = [next(iter(step.items())) for step in definition.get("steps", [])]
    for wanted in ("ShadowDeploy", "ModelInference"):
        for kind, body in steps:
            if kind == wanted:
                return kind, body
    return None


def _ref(model: dict[str, Any] | None) -> ModelVersionRef | None:
    if not model:
        return None
    return ModelVersionRef(name=str(model["name"]), version=model.get("version"), sha=model.get("sha"))


def split_step(definition: dict[str, Any]) -> dict[str, Any] | None:
    """The body of the A/B split that holds the deployment's models: its first `RandomSplit` step, when no
    ShadowDeploy or ModelInference step does (None otherwise)."""
    if _model_step(definition) is not None:
        return None
    for step in definition.get("steps", []):
        kind, body = next(iter(step.items()))
        if kind == "RandomSplit" and isinstance(body, dict):
            return body
    return None


def split_arms(definition: dict[str, Any]) -> list[ModelVersionRef] | None:
    """The models of the deployment's A/B split (its arms, in the order the definition names them); None without a
    split."""
    body = split_step(definition)
    if body is None:
        return None
    return [ref for model in body.get("models") or [] if (ref := _ref(model)) is not None]


def model_split(definition: dict[str, Any]) -> ModelSplit | None:
    """The A/B split holding the deployment's models as retrieve_information and get_model_version show it: every arm
    with its weight and share of the requests, and its hash_key; None without one."""
    body = split_step(definition)
    if body is None:
        return None
    models = body.get("models") or []
    weights = body.get("weights") or []
    total = sum(weights) if len(weights) == len(models) else 0  # the deployer checks one weight a model, sum > 0
    # each model with its own weight, then the empty entries left out: filtering first shifted the weights onto
    # the wrong arms ([a, None, c] with [1, 1, 8] showed c with weight 1). A share is of all the split's requests.
    arms = [(ref, weight) for model, weight in zip(models, weights, strict=False) if (ref := _ref(model)) is not None]
    return ModelSplit(arms=[SplitArm(**ref.model_dump(), weight=weight, share=weight / total if total else 0.0)
                            for ref, weight in arms],
                      hash_key=body.get("hash_key"))


def _served_model(definition: dict[str, Any]) -> ModelVersionRef | None:
    """The deployment's model version where one value is needed (retrieve_information, get_model_version): the model
    step's, else the first arm of its A/B split (whose kind and labels predict reads every arm's answer as)."""
    current = current_model(definition)
    if current is not None:
        return current
    return (split_arms(definition) or [None])[0]


def current_model(definition: dict[str, Any]) -> ModelVersionRef | None:
    """The model a deployment with one serves: its ModelInference step's first model, or its ShadowDeploy's champion
    (None on an A/B split or without a model step)."""
    step = _model_step(definition)
    if step is None:
        return None
    kind, body = step
    return _ref(body.get("champion") if kind == "ShadowDeploy" else (body.get("models") or [None])[0])


def _current_shadow(definition: dict[str, Any]) -> ModelVersionRef | None:
    step = _model_step(definition)
    if step is None or step[0] != "ShadowDeploy":
        return None
    return _ref((step[1].get("challengers") or [None])[0])


def check_tags(tags: list[str]) -> list[str]:
    """`tags` without repeats, in the order first given; InvalidRequest naming the first that is not a valid tag."""
    bad = [tag for tag in tags if not TAG.match(tag)]
    if bad:
        raise InvalidRequest(f"invalid tag {bad[0]!r}: use 1-100 letters, digits, spaces or _ . : / -, starting with "
                             "a letter or digit")
    return list(dict.fromkeys(tags))


async def add_tags(deps: MonitoringDeps, principal: Principal, token: str | None,
                   cmd: AddDeploymentTags) -> DeploymentTags:
    """add_tags: keep the tags, in the order first added."""
    tags = check_tags(cmd.tags)
    view = await _deployment(deps, principal, token, cmd.deployment)
    await store.add_tags(deps.pool, view.route.deployment_id, tags)
    return DeploymentTags(tags=await store.tags(deps.pool, view.route.deployment_id))


async def get_tags(deps: MonitoringDeps, principal: Principal, token: str | None, name: str) -> DeploymentTags:
    view = await _deployment(deps, principal, token, name)
    return DeploymentTags(tags=await store.tags(deps.pool, view.route.deployment_id))


async def retrieve_information(deps: MonitoringDeps, principal: Principal, token: str | None,
                               name: str) -> DeploymentInformation:
    from services.monitoring import continuous  # it builds on this module's deployment helpers

    view = await _deployment(deps, principal, token, name)
    route = view.route
    kept = await store.settings(deps.pool, route.deployment_id)
    return DeploymentInformation(
        deployment=route.name, id=route.deployment_id,
        name=(kept["display_name"] if kept and kept["display_name"] else route.name),
        pipeline_name=route.pipeline_name, pipeline_version=route.pipeline_version, workspace_id=route.workspace_id,
        status=route.status, tags=await store.tags(deps.pool, route.deployment_id),
        target_datalake=kept["target_datalake"] if kept else None,
        min_threshold=kept["min_threshold"] if kept else None,
        model_version=_served_model(view.definition), shadow_model_version=_current_shadow(view.definition),
        split=model_split(view.definition), updated_at=kept["updated_at"].isoformat() if kept else None,
        continuous=(await continuous.information(deps.pool, route.deployment_id)).model_dump(mode="json"),
        feedback=await feedback_store.information(deps.pool, route.deployment_id))


async def update(deps: MonitoringDeps, principal: Principal, token: str | None,
                 cmd: UpdateDeployment) -> DeploymentInformation:
    """update: display name, target datalake (an images dataset that receives new predictions; "" clears it) and
    minimum threshold."""
    if cmd.name is None and cmd.target_datalake is None and cmd.min_threshold is None:
        raise InvalidRequest("update needs at least one of name, target_datalake or min_threshold")
    view = await _deployment(deps, principal, token, cmd.deployment)
    if cmd.target_datalake:  # an images dataset of the deployment's workspace, by id or unique name
        await datalake.resolve(deps.broker, token, deps.timeout, view.route.workspace_id, cmd.target_datalake)
    await store.update_settings(deps.pool, view.route.deployment_id, view.route.workspace_id, cmd.name,
                                cmd.target_datalake, cmd.min_threshold)
    return await retrieve_information(deps, principal, token, cmd.deployment)


SETTINGS = ("display_name", "target_datalake", "min_threshold")  # what `update` sets; NULL is unset or cleared


def kept_settings(row: Any) -> list[str]:
    """The settings a deployment's row holds, which delete would lose: none when there is no row, or when every
    value in it was cleared (a row outlives its values: `update` with target_datalake "" clears it in place)."""
    return [] if row is None else [name for name in SETTINGS if row[name] is not None]


async def delete(deps: MonitoringDeps, principal: Principal, token: str | None,
                 cmd: DeleteDeployment) -> DeploymentDeleted:
    """delete: undeploy through the deployer (the pipeline and its versions stay), then forget the tags and
    settings; without force_delete, refused while there are any."""
    view = await _deployment(deps, principal, token, cmd.deployment)
    deployment_id = view.route.deployment_id
    from services.monitoring import continuous  # it builds on this module's deployment helpers

    feedback = await feedback_store.feedback_state(deps.pool, deployment_id)
    feedback += await continuous.kept_state(deps.pool, deployment_id)
    if not cmd.force_delete and feedback:
        raise Conflict(f"deployment {cmd.deployment!r} has {', '.join(feedback)} that delete would lose: "
                       "pass force_delete=true to delete it anyway")
    if not cmd.force_delete and (await store.tags(deps.pool, deployment_id)
                                 or kept_settings(await store.settings(deps.pool, deployment_id))):
        raise Conflict(f"deployment {cmd.deployment!r} has tags or settings that delete would lose: "
                       "pass force_delete=true to delete it anyway")
    await request(deps.broker, subjects.DEPLOYER_PIPELINES_UNDEPLOY, UndeployPipeline(
        pipeline_id=view.pipeline_id, deployment_id=deployment_id), token=token, timeout=deps.deploy_timeout)
    await store.forget(deps.pool, deployment_id)
    await feedback_store.forget_feedback(deps.pool, deployment_id)
    await continuous.forget(deps.pool, deployment_id)
    return DeploymentDeleted(deployment=cmd.deployment, deleted=True)


async def get_model_version(deps: MonitoringDeps, principal: Principal, token: str | None,
                            name: str) -> DeploymentModel:
    view = await _deployment(deps, principal, token, name)
    return DeploymentModel(model_version=_served_model(view.definition),
                           pipeline_version=view.route.pipeline_version, split=model_split(view.definition))


async def get_shadow_model(deps: MonitoringDeps, principal: Principal, token: str | None,
                           name: str) -> DeploymentModel:
    view = await _deployment(deps, principal, token, name)
    return DeploymentModel(model_version=_current_shadow(view.definition),
                           pipeline_version=view.route.pipeline_version)


def _with_model(definition: dict[str, Any], model: dict[str, Any], shadow: bool) -> dict[str, Any]:
    """The definition with `model` as the model step's model (or as its only shadow challenger)."""
    changed = copy.deepcopy(definition)
    steps = changed.get("steps", [])
    for step in steps:
        kind, body = next(iter(step.items()))
        if kind == "ShadowDeploy":
            if shadow:
                body["challengers"] = [model]
            else:
                body["champion"] = model
            return changed
    for index, step in enumerate(steps):
        kind, body = next(iter(step.items()))
        if kind == "ModelInference":
            if shadow:
                shadow_step = {"champion": (body.get("models") or [None])[0], "challengers": [model]}
                if "image" in body:  # the step's image configuration (predict on images) stays with it
                    shadow_step["image"] = body["image"]
                steps[index] = {"ShadowDeploy": shadow_step}
            else:
                body["models"] = [model] + list(body.get("models") or [])[1:]
            return changed
    raise Conflict("this deployment's pipeline has no model step (ModelInference or ShadowDeploy) to set")


def _refuse_split(view: DeploymentView, shadow: bool) -> None:
    """Conflict for set_model / set_shadow_model on a deployment whose models sit in an A/B split: saying why (the
    split has no one model to replace or shadow) and what to deploy instead."""
    split = model_split(view.definition)
    if split is None:
        return
    arms = ", ".join(f"{arm.name!r} (weight {arm.weight:g})" for arm in split.arms)
    rebuild = (f"client.pipeline({view.route.pipeline_name!r}).clear()"
               + (".add_shadow_deploy(champion, [challenger])" if shadow else ".add_random_split(weights, models)")
               + f".deploy(deploy_id={view.deploy_id!r})")
    if shadow:
        raise Conflict(f"deployment {view.route.name!r} splits its requests between {arms} (an A/B split, "
                       "RandomSplit): set_shadow_model adds a challenger to one model, and a split has no one "
                       "model to shadow. To shadow a model, deploy a pipeline version with a ShadowDeploy step "
                       f"instead (SDK: {rebuild}; the same deploy_id keeps the deployment's name and URL)")
    raise Conflict(f"deployment {view.route.name!r} splits its requests between {arms} (an A/B split, RandomSplit): "
                   "set_model replaces one model and cannot tell which arm to replace. To change an arm or a weight, "
                   f"deploy a pipeline version with the split you want (SDK: {rebuild}; the same deploy_id keeps the "
                   "deployment's name and URL), or one model with add_model_step")


async def resolve_served(deps: MonitoringDeps, token: str | None, workspace_id: int,
                         served: ModelVersionRef) -> ResolvedModel | None:
    """The deployment's model as the registry knows it (None: no longer there for the caller, nothing to compare)."""
    try:
        return await request(deps.broker, subjects.REGISTRY_MODELS_RESOLVE, ResolveModel(
            workspace_id=workspace_id, name=served.name, version=served.version, sha=served.sha), token=token,
            timeout=deps.timeout, reply_model=ResolvedModel)
    except NotFound:
        return None


async def _check_inputs(deps: MonitoringDeps, token: str | None, view: DeploymentView, new: ResolvedModel,
                        what: str) -> None:
    """400 incompatible_model (services/monitoring/model_inputs.py) when `new` takes other inputs than the model the
    deployment serves (its champion under a shadow), before anything is created or deployed."""
    from services.monitoring import model_inputs

    served = current_model(view.definition)
    if served is None:
        return
    current = await resolve_served(deps, token, view.route.workspace_id, served)
    if current is None:
        return
    await model_inputs.check(deps.objects, current, new, what, (
        "serve a version that takes the same inputs, or deploy a pipeline whose steps feed this model (SDK: "
        f"client.pipeline({view.route.pipeline_name!r}).clear().add_model_step(model).deploy(deploy_id="
        f"{view.deploy_id!r}); the same deploy_id keeps the deployment's name and URL)"))


async def set_model(deps: MonitoringDeps, principal: Principal, token: str | None, cmd: SetDeploymentModel,
                    shadow: bool = False) -> DeploymentModel:
    """set_model / set_shadow_model: the model version is checked first (a model that does not resolve, or that
    takes other inputs than the deployment's model, changes nothing: model_inputs.py), then a new pipeline version is
    created and deployed under the same deploy_id. Asked again after its deploy failed (a 503: the deployer's database
    away; nothing of it runs) it makes no second version: the definition is the same function of the served one and
    the resolved model, and pipelines/create makes no new version for a definition the same as the pipeline's latest
    version's (services/deployer/store.py create_pipeline_version, under the pipeline's lock): the version the first
    try created is the one deployed. Only a version created in between (another caller's) makes it a new one, as any
    create would."""
    view = await _deployment(deps, principal, token, cmd.deployment)
    _refuse_split(view, shadow)
    wanted = cmd.model_version
    resolved = await request(deps.broker, subjects.REGISTRY_MODELS_RESOLVE, ResolveModel(
        workspace_id=view.route.workspace_id, name=wanted.name, version=wanted.version, sha=wanted.sha),
        token=token, timeout=deps.timeout, reply_model=ResolvedModel)
    model = {"name": resolved.name, "version": resolved.model_version, "sha": resolved.sha}
    definition = _with_model(view.definition, model, shadow)
    if definition == view.definition:
        return DeploymentModel(model_version=_ref(model), pipeline_version=view.route.pipeline_version)
    await _check_inputs(deps, token, view, resolved, "set_shadow_model" if shadow else "set_model")
    created = await request(deps.broker, subjects.DEPLOYER_PIPELINES_CREATE, CreatePipeline(
        pipeline_id=view.route.pipeline_name, workspace_id=view.route.workspace_id, definition=definition),
        token=token, timeout=deps.timeout, reply_model=PipelineCreated)
    await request(deps.broker, subjects.DEPLOYER_PIPELINES_DEPLOY, DeployPipeline(
        deploy_id=view.deploy_id, pipeline_version_pk_id=created.pipeline_variant_pk_id,
        pipeline_id=view.pipeline_id, engine_config=view.engine_config), token=token, timeout=deps.deploy_timeout,
        reply_model=Deployed)
    return DeploymentModel(model_version=_ref(model), pipeline_version=created.pipeline_variant_version)

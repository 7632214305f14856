"""The model version a prediction made elsewhere (`monitor`) is recorded under.

Seed 003 says monitor's `model_version` is "not used anymore: system will use what's currently being monitored", and
for a deployment with one model (a ModelInference or ShadowDeploy step) that stays so: the current model is recorded
whatever `model_version` says (seed code still passing the deprecated value, maybe an older version, keeps working
rather than meeting a new 400). A deployment whose models sit in an A/B split (`RandomSplit`) has no current model:
which arm made the prediction is the caller's to say, so `model_version` may name one of the arms (a name alone when
only one arm has that name), and left out the prediction is recorded with no model version rather than under a
guessed arm (it counts in the deployment's statistics, in no arm's). A `model_version` that is no arm of the split
is a 400 `invalid_request` naming the arms; nothing is stored."""

from __future__ import annotations

from typing import Any

from services.monitoring.handlers import DeploymentView, MonitoringDeps, current_model, split_arms
from shared import subjects
from shared.bus import request
from shared.errors import InvalidRequest
from shared.messages.monitoring import ModelVersionRef
from shared.messages.registry import ResolvedModel, ResolveModel


def describe(ref: ModelVersionRef) -> str:
    """A model version as a message names it: its name, and its version (or sha) when pinned."""
    pinned = ref.version or ref.sha
    return f"{ref.name!r} version {pinned}" if pinned else repr(ref.name)


def matching_model(definition: dict[str, Any], deployment: str,
                   wanted: ModelVersionRef | None) -> ModelVersionRef | None:
    """The model version a monitored prediction is recorded under: the current model of a deployment with one
    (`wanted` is not used, as the seed says), else the arm of its A/B split `wanted` names (None when left out); an
    arm the pipeline names by its model alone matches any version the caller gives (it was resolved at deploy time).
    InvalidRequest when `wanted` names no arm, or a name alone names two."""
    arms = split_arms(definition)
    if arms is None:
        return current_model(definition)
    if wanted is None:
        return None
    matches = {(m.name, m.version, m.sha): m for m in arms if m.name == wanted.name
               and (wanted.version is None or m.version in (None, wanted.version))
               and (wanted.sha is None or m.sha in (None, wanted.sha))}
    if not matches:
        raise InvalidRequest(f"model_version {describe(wanted)} is not an arm of deployment {deployment!r}'s A/B "
                             f"split: give one of {', '.join(describe(m) for m in arms)}, or leave it out (no model "
                             "version is then recorded)")
    if len(matches) > 1:
        raise InvalidRequest(f"model_version {describe(wanted)} names {len(matches)} arms of deployment "
                             f"{deployment!r}'s A/B split ({', '.join(describe(m) for m in matches.values())}): "
                             "give its version or sha too")
    return next(iter(matches.values()))


async def monitored_model(deps: MonitoringDeps, token: str | None, view: DeploymentView,
                          wanted: ModelVersionRef | None) -> ModelVersionRef | None:
    """The model version a monitored prediction is recorded under (see the module docstring); an arm the pipeline
    names by its model alone is recorded as the version the registry resolves from what the caller gave (NotFound
    when there is none)."""
    match = matching_model(view.definition, view.route.name, wanted)
    if match is None or match.version is not None or wanted is None or split_arms(view.definition) is None:
        return match
    resolved = await request(deps.broker, subjects.REGISTRY_MODELS_RESOLVE, ResolveModel(
        workspace_id=view.route.workspace_id, name=wanted.name, version=wanted.version, sha=wanted.sha),
        token=token, timeout=deps.timeout, reply_model=ResolvedModel)
    return ModelVersionRef(name=resolved.name, version=resolved.model_version, sha=resolved.sha)

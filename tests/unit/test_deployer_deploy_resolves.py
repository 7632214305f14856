"""A deploy's plan (services/deployer/handlers.py _plan_deployment, for pipelines/deploy and pipelines/copy with
`deploy`) resolves its models MODEL_LOOKUPS_AT_ONCE at once and each distinct reference once (_resolve_all). Before,
one registry.models.resolve after another, a reference named twice asked twice: 1,000 references took 5.8-7.5 s on a
test stack (load ~3.5). The steps keep their models in order, and the error is still the first failing reference's
in the definition's order."""

from __future__ import annotations

import asyncio

import pytest

from services.deployer import handlers
from shared.errors import InvalidRequest, NotFound, Unavailable, UpstreamTimeout
from tests.unit.deployer_world import WORKSPACE, make_world


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """make_world's deployer with a registry stand-in: each resolve takes `delay` seconds (`delays[name]` for one);
    `asked` is every (name, version, sha, model_id) asked, `most` the most under way at once; `refuse[name]` is
    raised for that name."""
    world = make_world(tmp_path, monkeypatch)
    state = {"asked": [], "under_way": 0, "most": 0, "delay": 0.01, "delays": {}, "refuse": {}}

    async def resolve(deps, token, workspace_id, name, version, sha, model_id=None):
        state["asked"].append((name, version, sha, model_id))
        state["under_way"] += 1
        state["most"] = max(state["most"], state["under_way"])
        try:
            await asyncio.sleep(state["delays"].get(name, state["delay"]))
            if name in state["refuse"]:
                raise state["refuse"][name]
            name = name or f"by-id-{model_id}"
            return {"model_id": model_id or 1, "name": name, "model_version": version or "v1", "sha": "0" * 64,
                    "runtime": "onnx", "framework": "onnx"}
        finally:
            state["under_way"] -= 1

    monkeypatch.setattr(handlers, "_resolve", resolve)
    world.registry = state
    return world


def plan(world, definition, **kwargs):
    return asyncio.run(handlers._plan_deployment(world.deps, "t", WORKSPACE, definition, "dep", None,
                                                 kwargs.get("models"), kwargs.get("model_ids")))


def test_a_definitions_models_are_resolved_several_at_once_each_once_and_kept_in_order(registry):
    names = [f"m{i}" for i in range(60)]
    definition = {"steps": [{"ModelInference": {"models": [{"name": n} for n in names]}},
                            {"ShadowDeploy": {"champion": {"name": "m0"},
                                              "challengers": [{"name": "m1"}, {"name": "m0", "version": "v2"}]}},
                            {"RandomSplit": {"models": [{"name": "m3"}, {"name": "m2"}], "weights": [1, 1]}}]}
    _, steps = plan(registry, definition)
    assert [m.name for m in steps[0].models] == names
    assert [(m.name, m.model_version) for m in steps[1].models] == [("m0", "v1"), ("m1", "v1"), ("m0", "v2")]
    assert [m.name for m in steps[2].models] == ["m3", "m2"] and steps[2].weights == [1, 1]
    asked = registry.registry["asked"]
    assert len(asked) == len(set(asked)) == 61  # before: 65, m0, m1, m2 and m3 asked again in later steps
    assert registry.registry["most"] == handlers.MODEL_LOOKUPS_AT_ONCE  # before: 1, one after another


def test_the_error_is_the_first_failing_references_in_the_definitions_order(registry):
    # the later reference fails first in time: its error is not the answer, as when they were asked in turn
    registry.registry["refuse"] = {"early": NotFound("model 'early' (version latest) not found in the workspace"),
                                   "late": InvalidRequest("model 'late' version v1 is converting")}
    registry.registry["delays"] = {"early": 0.2, "late": 0.0}
    definition = {"steps": [{"ModelInference": {"models": [{"name": "ok"}, {"name": "early"}, {"name": "late"}]}}]}
    with pytest.raises(NotFound, match="'early'"):
        plan(registry, definition)


def test_model_ids_and_models_without_steps_are_resolved_together_too(registry):
    _, steps = plan(registry, {}, model_ids=[7, 8, 7, 9])
    assert [m.name for m in steps[0].models] == ["by-id-7", "by-id-8", "by-id-9"]  # an id given twice: one model
    assert sorted(a[3] for a in registry.registry["asked"]) == [7, 8, 9]
    assert registry.registry["most"] == 3  # before: 1


@pytest.mark.parametrize("error", [Unavailable("registry's database did not answer (ConnectionRefusedError): it may "
                                               "be restarting or busy; ask again in a moment"),
                                   UpstreamTimeout("registry did not answer within 5s")],
                         ids=lambda exc: type(exc).__name__)
def test_once_the_registry_cannot_answer_no_other_look_up_is_sent(registry, error):
    """The first reference in the order is slow; a later one is answered 503 (the registry's database away) or 504:
    the look-ups waiting for the gate are not sent, and the answer is that error, once the slow one answered. Before,
    they went on being sent MODEL_LOOKUPS_AT_ONCE at a time until the first answered: all 40 here."""
    names = [f"m{i}" for i in range(40)]
    registry.registry["delays"] = {"m0": 0.5}
    registry.registry["refuse"] = {n: error for n in names[1:]}
    with pytest.raises(type(error), match=error.msg[:20]):
        plan(registry, {"steps": [{"ModelInference": {"models": [{"name": n} for n in names]}}]})
    assert len(registry.registry["asked"]) == handlers.MODEL_LOOKUPS_AT_ONCE  # before: 40

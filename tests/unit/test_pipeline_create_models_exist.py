"""pipelines/create checks that every model its definition names exists in the workspace before it writes anything
(services/deployer/handlers.py _check_models_exist): one registry look-up per distinct (name, version, sha), with
registry.models.resolve's exists_only (a version in any status: one uploaded a moment ago may still be converting),
and a 400 invalid_request naming every reference the workspace does not have. Before, the create answered 200 with
a version naming a model that does not exist, and its deploy was the 404. The registry's side (exists_only) is
tested here over a stand-in store; the look-up of another workspace's model is tests/integration/
test_registry_resolve_messages.py's."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from services.deployer import handlers
from services.registry import handlers as registry
from shared import subjects
from shared.bus import validation_message
from shared.errors import InvalidRequest, NotFound, Unavailable, UpstreamTimeout
from shared.messages.deployer import CopyPipeline, CreatePipeline
from shared.messages.registry import (
    MODELS_LOOKED_UP_AT_ONCE,
    MissingModel,
    ModelExists,
    ModelLookup,
    ModelReference,
    ModelsFound,
    ModelsLookup,
    ResolvedModel,
    ResolveModel,
)
from tests.unit.deployer_world import ALICE, PIPELINE, WORKSPACE, make_world

V1 = str(uuid.uuid4())


@pytest.fixture
def world(tmp_path, monkeypatch):
    """make_world's deployer, with a stand-in registry on the bus (`registry`) answering registry.models.exist (and
    registry.models.resolve with exists_only, as a registry before it is asked): `have` maps the (name, version, sha)
    it has to its status; anything else is its 404 (or `answers[ref]`: a NotFound or InvalidRequest is that
    reference missing in its words, an Unavailable or UpstreamTimeout the whole request's answer, anything else
    found); `asked` is every reference it was asked about, as (workspace, name, version, sha), `requests` the
    subjects it was sent, `tokens` the tokens they carried."""
    made = make_world(tmp_path, monkeypatch)
    made.registry = SimpleNamespace(have={}, answers={}, asked=[], requests=[], tokens=[], hold=None)

    def why_missing(workspace_id: int, name: str, version: str | None, sha: str | None) -> str | None:
        made.registry.asked.append((workspace_id, name, version, sha))
        ref = (name, version, sha)
        answer = made.registry.answers.get(ref)
        if isinstance(answer, NotFound | InvalidRequest):
            return answer.msg
        if isinstance(answer, Exception):
            raise answer
        if answer is not None or ref in made.registry.have:
            return None
        return f"model {name!r} (version {version or 'latest'}) not found in the workspace"

    async def request(broker, subject, message, *, timeout=5.0, token=None, reply_model=None):
        made.registry.requests.append(subject)
        made.registry.tokens.append(token)
        if made.registry.hold is not None:
            await made.registry.hold.wait()
        if subject == subjects.REGISTRY_MODELS_EXIST:
            assert isinstance(message, ModelsLookup) and reply_model is ModelsFound
            missing = []
            for index, ref in enumerate(message.models):
                why = why_missing(message.workspace_id, ref.name, ref.version, ref.sha)
                if why is not None:
                    missing.append(MissingModel(index=index, why=why if len(missing) < message.explained else None))
            return ModelsFound(missing=missing)
        assert subject == subjects.REGISTRY_MODELS_RESOLVE and reply_model is ModelExists and message.exists_only
        why = why_missing(message.workspace_id, message.name, message.version, message.sha)
        if why is not None:
            raise NotFound(why)
        return ModelExists(model_id=1, name=message.name, model_version=V1, status="ready")

    monkeypatch.setattr(handlers, "request", request)
    return made


def _create(world, definition: dict[str, Any], name: str = "q"):
    return handlers.create_pipeline(world.deps, ALICE, "t", CreatePipeline(
        pipeline_id=name, workspace_id=WORKSPACE, definition=definition))


def _inference(*models: dict[str, Any]) -> dict[str, Any]:
    return {"ModelInference": {"models": list(models)}}


def _nothing_written(world) -> None:
    assert list(world.store.pipelines) == [PIPELINE] and world.store.events == []


def test_a_definition_naming_models_the_workspace_lacks_is_a_400_naming_each_and_writes_nothing(world):
    world.registry.have = {("here", None, None): "ready"}
    definition = {"steps": [_inference({"name": "here"}), _inference({"name": "typo"}),
                            {"ShadowDeploy": {"champion": {"name": "here"},
                                              "challengers": [{"name": "gone", "version": V1}]}}]}

    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(_create(world, definition))

    assert refused.value.status == 400 and refused.value.code == "invalid_request"
    assert refused.value.msg == (
        "the definition names 2 model versions the workspace does not have, so nothing was created: "
        "definition.steps[1].ModelInference: model 'typo' (version latest) not found in the workspace; "
        f"definition.steps[2].ShadowDeploy: model 'gone' (version {V1}) not found in the workspace. Upload the model "
        "(models/upload_and_convert) or correct the reference's name, version or sha (models/list lists the "
        "workspace's models, models/list_versions their versions), then create the pipeline again")
    _nothing_written(world)
    # each distinct reference asked once ('here' twice: once), all in one registry.models.exist, in the create's
    # workspace with the caller's token
    assert sorted(world.registry.asked) == [(WORKSPACE, "gone", V1, None), (WORKSPACE, "here", None, None),
                                            (WORKSPACE, "typo", None, None)]
    assert world.registry.requests == [subjects.REGISTRY_MODELS_EXIST] and world.registry.tokens == ["t"]


def test_models_that_exist_in_any_status_are_created(world):
    """A model still converting right after its upload (or whose conversion failed) exists: the create is a
    version, as before; its deploy is what needs a ready version."""
    world.registry.have = {("fresh", None, None): "converting", ("pinned", V1, "ab" * 32): "ready",
                           ("broken", None, None): "error"}
    definition = {"steps": [{"RandomSplit": {"weights": [1, 1], "models": [
        {"name": "fresh"}, {"name": "pinned", "version": V1, "sha": "ab" * 32}]}}, _inference({"name": "broken"})]}

    created = asyncio.run(_create(world, definition))

    assert created.pipeline_pk_id in world.store.pipelines and created.pipeline_pk_id != PIPELINE
    assert [s for s, _ in world.store.events] == [subjects.EVENT_PIPELINE_VERSION_CREATED]
    assert len(world.registry.asked) == 3


def test_a_definition_without_models_asks_the_registry_nothing(world):
    asyncio.run(_create(world, {}))
    asyncio.run(_create(world, {"steps": []}, "r"))
    assert world.registry.asked == []


def test_the_registrys_400_for_a_reference_counts_as_missing_with_its_words(world):
    world.registry.answers = {("m", "v1", None): InvalidRequest("version must be a model version UUID, got 'v1'")}
    with pytest.raises(InvalidRequest, match=r"^the definition names 1 model version the workspace does not have, so "
                                             r"nothing was created: definition\.steps\[0\]\.ModelInference: version "
                                             r"must be a model version UUID, got 'v1'\. Upload"):
        asyncio.run(_create(world, {"steps": [_inference({"name": "m", "version": "v1"})]}))
    _nothing_written(world)


def test_many_missing_references_are_named_up_to_a_bound_then_counted(world):
    models = [{"name": f"m{i}"} for i in range(handlers.MISSING_NAMED + 3)]
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(_create(world, {"steps": [_inference(*models)]}))
    assert f"the definition names {handlers.MISSING_NAMED + 3} model versions" in refused.value.msg
    assert f"'m{handlers.MISSING_NAMED - 1}'" in refused.value.msg and f"'m{handlers.MISSING_NAMED}'" not in \
        refused.value.msg
    assert "; and 3 more. Upload the model" in refused.value.msg
    assert len(world.registry.asked) == handlers.MISSING_NAMED + 3  # every one looked up: the count is true


def test_a_definition_of_thousands_of_references_is_looked_up_in_a_few_requests(world):
    """A definition naming ~4,000 models (what its 64 KiB holds with short names) was 4,000 registry.models.resolve,
    8 at a time: past the look-ups' bound (half the request timeout) on a stack, a 504 and nothing created. Now one
    registry.models.exist per MODELS_LOOKED_UP_AT_ONCE references; the missing ones still named (first 10) and
    counted."""
    names = [f"{i:x}" for i in range(4000)]
    definition = {"steps": [_inference(*({"name": n} for n in names))]}
    CreatePipeline(pipeline_id="q", workspace_id=WORKSPACE, definition=definition)  # within the definition's bound
    world.registry.have = {(n, None, None): "ready" for n in names if n not in ("5", "3e9", "f9f")}

    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(_create(world, definition))
    assert refused.value.msg.startswith(
        "the definition names 3 model versions the workspace does not have, so nothing was created: "
        "definition.steps[0].ModelInference: model '5' (version latest) not found in the workspace; "
        "definition.steps[0].ModelInference: model '3e9' (version latest) not found in the workspace; "
        "definition.steps[0].ModelInference: model 'f9f' (version latest) not found in the workspace. Upload"), \
        refused.value.msg
    assert world.registry.requests == [subjects.REGISTRY_MODELS_EXIST] * 4
    assert sorted(name for _, name, _, _ in world.registry.asked) == sorted(names)
    _nothing_written(world)

    world.registry.have = {(n, None, None): "ready" for n in names}
    created = asyncio.run(_create(world, definition))
    assert created.pipeline_pk_id in world.store.pipelines and len(world.registry.requests) == 8


def test_the_missing_references_named_are_the_first_ones_across_requests(world):
    """Each registry.models.exist says why for its first MISSING_NAMED missing references only: the 400 names the
    definition's first ones whichever request asked about them, and counts the rest."""
    names = [f"m{i}" for i in range(MODELS_LOOKED_UP_AT_ONCE + 20)]
    gone = names[MODELS_LOOKED_UP_AT_ONCE - 3:]  # 3 in the first request, 20 in the second
    world.registry.have = {(n, None, None): "ready" for n in names if n not in gone}
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(_create(world, {"steps": [_inference(*({"name": n} for n in names))]}))
    named = [f"model {n!r} (version latest) not found in the workspace" for n in gone[:handlers.MISSING_NAMED]]
    assert f"the definition names {len(gone)} model versions" in refused.value.msg
    assert "; ".join(f"definition.steps[0].ModelInference: {why}" for why in named) + \
        f"; and {len(gone) - handlers.MISSING_NAMED} more. Upload" in refused.value.msg
    assert world.registry.requests == [subjects.REGISTRY_MODELS_EXIST] * 2


@pytest.mark.parametrize(("field", "value", "kind"), [("name", 7, "a number"), ("version", {"v": 1}, "an object"),
                                                      ("sha", True, "a boolean")])
def test_a_reference_field_that_is_not_a_string_is_a_400_before_any_look_up(world, field, value, kind):
    model = {"name": "m"} | {field: value}
    with pytest.raises(InvalidRequest, match=rf"^definition\.steps\[0\]\.ModelInference: a model's {field} must be "
                                             rf"a string, not {kind}$"):
        asyncio.run(_create(world, {"steps": [_inference(model)]}))
    assert world.registry.asked == []
    _nothing_written(world)


def test_a_registry_that_does_not_answer_is_a_504_within_the_creates_bound_and_writes_nothing(world, monkeypatch):
    """The look-ups end by MODEL_LOOKUPS_WITHIN of the request timeout (0.5 s here), before the create's own bound
    (READ_ANSWERS_WITHIN, 0.8 s, whose answer would be a 503 naming the database): a 504 naming the look-ups."""
    world.deps.timeout = 1.0
    world.registry.hold = asyncio.Event()  # never set: every look-up waits
    asked = handlers.request

    async def bounded(broker, subject, message, *, timeout=5.0, token=None, reply_model=None):
        # as the bus's request: no answer within `timeout` is its UpstreamTimeout
        try:
            return await asyncio.wait_for(asked(broker, subject, message, timeout=timeout, token=token,
                                                reply_model=reply_model), timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"registry did not answer within {timeout:g}s") from None

    monkeypatch.setattr(handlers, "request", bounded)
    with pytest.raises(UpstreamTimeout) as late:
        asyncio.run(asyncio.wait_for(_create(world, {"steps": [_inference({"name": "m"})]}), 5))
    assert late.value.status == 504 and late.value.msg.startswith(
        "pipelines/create of 'q': the definition's models could not be looked up (registry did not answer within ")
    assert late.value.msg.endswith("s); nothing was created: create it again")
    _nothing_written(world)


def test_no_look_up_is_sent_once_their_time_is_gone(world, monkeypatch):
    """The look-ups' bound counts from the create's start: a membership check that took it all leaves none sent,
    a 504 saying so (not that the registry did not answer)."""
    monkeypatch.setattr(handlers, "MODEL_LOOKUPS_WITHIN", 0)
    with pytest.raises(UpstreamTimeout) as late:
        asyncio.run(_create(world, {"steps": [_inference({"name": "m"})]}))
    assert late.value.msg == ("pipelines/create of 'q': the definition's models could not be looked up (not ended "
                              "within 0s of the create's start); nothing was created: create it again")
    assert world.registry.asked == []
    _nothing_written(world)


def test_a_registry_that_cannot_be_asked_is_a_503_that_writes_nothing(world):
    world.registry.answers = {("m", None, None): Unavailable("no service answers on registry.models.resolve")}
    with pytest.raises(Unavailable) as refused:
        asyncio.run(_create(world, {"steps": [_inference({"name": "m"}), _inference({"name": "n"})]}))
    assert refused.value.status == 503 and "could not be looked up (no service answers" in refused.value.msg
    _nothing_written(world)


# the registry's side: registry.models.resolve with exists_only


def _row(status: str, sha: str | None) -> dict[str, Any]:
    return {"model_id": 3, "name": "m", "model_version": uuid.UUID(V1), "status": status, "sha": sha,
            "error": "conversion failed" if status == "error" else None, "runtime": "onnx" if sha else None,
            "framework": "sklearn", "input_schema": None, "output_schema": None}


@pytest.fixture
def registry_world(monkeypatch):
    """The registry's resolve over a stand-in store: `rows` are the workspace's versions (its find_version matches
    name, version and sha as the SQL does, in the asked workspace only)."""
    made = SimpleNamespace(rows=[], workspaces=[])

    async def find_version(pool, workspace_id, name, version, sha, model_id=None):
        made.workspaces.append(workspace_id)
        for row in made.rows:
            if row["workspace"] == workspace_id and row["name"] == name and (
                    version is None or row["model_version"] == version) and (sha is None or row["sha"] == sha):
                return row
        return None

    async def member(user_id, workspace_id):
        return "owner"

    monkeypatch.setattr(registry.store, "find_version", find_version)
    made.deps = SimpleNamespace(pool=None, membership=lambda token: member)
    return made


def _resolve(registry_world, command):
    return asyncio.run(registry.resolve_model(registry_world.deps, ALICE, "t", command))


@pytest.mark.parametrize("status", ["converting", "error", "ready"])
def test_exists_only_answers_a_version_in_any_status(registry_world, status):
    registry_world.rows = [_row(status, "ab" * 32 if status == "ready" else None) | {"workspace": WORKSPACE}]
    found = _resolve(registry_world, ModelLookup(workspace_id=WORKSPACE, name="m", exists_only=True))
    assert found == ModelExists(model_id=3, name="m", model_version=V1, status=status)


def test_without_exists_only_a_version_not_ready_is_still_a_400(registry_world):
    registry_world.rows = [_row("converting", None) | {"workspace": WORKSPACE}]
    for command in (ModelLookup(workspace_id=WORKSPACE, name="m"), ResolveModel(workspace_id=WORKSPACE, name="m")):
        with pytest.raises(InvalidRequest, match=f"^model 'm' version {V1} is converting$"):
            _resolve(registry_world, command)
    registry_world.rows = [_row("ready", "ab" * 32) | {"workspace": WORKSPACE}]
    assert isinstance(_resolve(registry_world, ModelLookup(workspace_id=WORKSPACE, name="m")), ResolvedModel)


def test_exists_only_looks_in_the_asked_workspace_only(registry_world):
    registry_world.rows = [_row("ready", "ab" * 32) | {"workspace": WORKSPACE + 1}]
    with pytest.raises(NotFound, match=r"^model 'm' \(version latest\) not found in the workspace$"):
        _resolve(registry_world, ModelLookup(workspace_id=WORKSPACE, name="m", exists_only=True))
    assert set(registry_world.workspaces) == {WORKSPACE}


def test_a_sha_given_for_a_version_without_one_says_why(registry_world):
    """A converting version's sha is its converted file's, unknown until it is ready: a sha given for it was
    'has sha None, not ...'."""
    registry_world.rows = [_row("converting", None) | {"workspace": WORKSPACE}]
    with pytest.raises(NotFound) as missing:
        _resolve(registry_world, ModelLookup(workspace_id=WORKSPACE, name="m", version=V1, sha="cd" * 32,
                                             exists_only=True))
    assert missing.value.msg == (
        f"model 'm' version {V1} has no sha yet (it is converting: its sha is the converted file's, known once it is "
        f"ready), not {'cd' * 32!r}: give the version's sha as models/list_versions lists it, or leave sha out")
    registry_world.rows = [_row("error", None) | {"workspace": WORKSPACE}]
    with pytest.raises(NotFound, match=f"^model 'm' version {V1} has no sha \\(its conversion failed\\), not "):
        _resolve(registry_world, ModelLookup(workspace_id=WORKSPACE, name="m", version=V1, sha="cd" * 32))


def test_models_exist_answers_the_missing_ones_in_one_query_with_resolves_words(registry_world, monkeypatch):
    """registry.models.exist: one membership check and one query (store.versions_exist) for every reference, found
    as resolve's exists_only finds one (any status, the asked workspace only); the missing ones in order, the first
    `explained` with resolve's 404 or 400 words, the rest only counted."""
    registry_world.rows = [_row("converting", None) | {"workspace": WORKSPACE},
                           _row("ready", "ab" * 32) | {"workspace": WORKSPACE + 1, "name": "theirs"}]
    queries = []

    async def versions_exist(pool, workspace_id, refs):
        queries.append(len(refs))
        return {i for i, (name, version, sha) in enumerate(refs)
                if await registry.store.find_version(pool, workspace_id, name, version, sha) is not None}

    monkeypatch.setattr(registry.store, "versions_exist", versions_exist)
    asked = [ModelReference(name="m"), ModelReference(name="theirs"), ModelReference(name="m", version="v1"),
             ModelReference(name="m", version=V1, sha="cd" * 32), ModelReference(name="m", version=V1),
             ModelReference(name="typo")]

    found = asyncio.run(registry.models_exist(registry_world.deps, ALICE, "t", ModelsLookup(
        workspace_id=WORKSPACE, models=asked, explained=3)))

    assert found == ModelsFound(missing=[
        MissingModel(index=1, why="model 'theirs' (version latest) not found in the workspace"),
        MissingModel(index=2, why="version must be a model version UUID, got 'v1'"),
        MissingModel(index=3, why=f"model 'm' version {V1} has no sha yet (it is converting: its sha is the converted "
                                  f"file's, known once it is ready), not {'cd' * 32!r}: give the version's sha as "
                                  "models/list_versions lists it, or leave sha out"),
        MissingModel(index=5, why=None)])
    assert queries == [5]  # one query, without the reference whose version is no UUID
    assert set(registry_world.workspaces) == {WORKSPACE}
    with pytest.raises(ValidationError, match="models"):
        ModelsLookup(workspace_id=WORKSPACE, models=[ModelReference(name="m")] * (MODELS_LOOKED_UP_AT_ONCE + 1))


def test_models_exist_answers_a_workspace_the_caller_is_not_in_as_one_that_does_not_exist(registry_world,
                                                                                           monkeypatch):
    """registry.models.exist is a front-door subject (the `client` identity and the gateway may publish it): a caller
    outside the workspace, or a task run's token scoped to another one, is its 404, as registry.models.resolve
    answers them, and nothing of the workspace is looked up (no reference is said found or missing)."""
    registry_world.rows = [_row("ready", "ab" * 32) | {"workspace": WORKSPACE}]
    looked = []

    async def versions_exist(pool, workspace_id, refs):
        looked.append(workspace_id)
        return set()

    async def not_a_member(user_id, workspace_id):
        return None

    monkeypatch.setattr(registry.store, "versions_exist", versions_exist)
    lookup = ModelsLookup(workspace_id=WORKSPACE, models=[ModelReference(name="m"), ModelReference(name="typo")])
    task_run = dataclasses.replace(ALICE, scoped_task="t1", workspace_id=WORKSPACE + 1)
    for deps, principal in ((SimpleNamespace(pool=None, membership=lambda token: not_a_member), ALICE),
                            (registry_world.deps, task_run)):
        with pytest.raises(NotFound, match=f"^workspace {WORKSPACE} not found$"):
            asyncio.run(registry.models_exist(deps, principal, "t", lookup))
    assert looked == [] and registry_world.workspaces == []


def test_the_gateways_resolve_body_cannot_ask_for_exists_only():
    """models/download reads its body as a ResolveModel and its answer as a ResolvedModel: exists_only is refused
    there (unknown fields are), so it never meets a ModelExists."""
    with pytest.raises(ValidationError, match="exists_only"):
        ResolveModel.model_validate({"workspace_id": 1, "name": "m", "exists_only": True})


def test_a_registry_of_the_release_before_is_asked_as_a_deploy_asks(world, monkeypatch):
    """A rolling update: a registry without exists_only refuses the field as unknown (its 400, as its command
    validation words it), which was read as every model missing, so every create naming a model was a 400 until
    the registry was updated. The look-up is asked again as a deploy asks: a 404 is missing, a 400 for a version
    not ready (converting) says it exists."""
    asked: list[Any] = []

    async def old_registry(broker, subject, message, *, timeout=5.0, token=None, reply_model=None):
        if subject == subjects.REGISTRY_MODELS_EXIST:  # not subscribed by the release before: NATS's no responders
            raise Unavailable("registry is not running")
        assert subject == subjects.REGISTRY_MODELS_RESOLVE and timeout > 0 and token == "t"
        asked.append(type(message).__name__)
        try:  # the release before's body: ResolveModel, unknown fields refused (shared.bus.run_command)
            command = ResolveModel.model_validate(message.model_dump())
        except ValidationError as exc:
            raise InvalidRequest(validation_message(exc.errors())) from None
        assert reply_model is ResolvedModel
        if command.version == "v1":
            raise InvalidRequest("version must be a model version UUID, got 'v1'")
        if command.name == "fresh":
            raise InvalidRequest(f"model 'fresh' version {V1} is converting")
        if command.name == "ready":
            return ResolvedModel(model_id=1, name="ready", model_version=V1, sha="ab" * 32, runtime="onnx",
                                 framework="onnx")
        raise NotFound(f"model {command.name!r} (version latest) not found in the workspace")

    monkeypatch.setattr(handlers, "request", old_registry)
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(_create(world, {"steps": [_inference({"name": "fresh"}, {"name": "ready"}, {"name": "typo"},
                                                         {"name": "ready", "version": "v1"})]}))
    assert refused.value.msg.startswith(
        "the definition names 2 model versions the workspace does not have, so nothing was created: "
        "definition.steps[0].ModelInference: model 'typo' (version latest) not found in the workspace; "
        "definition.steps[0].ModelInference: version must be a model version UUID, got 'v1'. Upload"), \
        refused.value.msg
    assert asked == ["ModelLookup", "ResolveModel"] * 4
    _nothing_written(world)

    created = asyncio.run(_create(world, {"steps": [_inference({"name": "fresh"}, {"name": "ready"})]}))
    assert created.pipeline_pk_id in world.store.pipelines


def test_a_copy_into_a_workspace_without_its_models_is_a_400_and_creates_nothing(world):
    """pipelines/copy into another workspace (its workspace_id is the target) checks the copied definition's
    models there, as pipelines/create does: before, the copy was a 200 and its deploy the 404. The look-ups are in
    the target workspace, with the caller's token."""
    def copy():
        return asyncio.run(handlers.copy_pipeline(world.deps, ALICE, "t", CopyPipeline(
            name="copied", workspace_id=WORKSPACE + 1, source_pipeline=PIPELINE)))

    with pytest.raises(InvalidRequest) as refused:
        copy()
    assert refused.value.msg == (
        "the definition names 1 model version the workspace does not have, so nothing was created: "
        "definition.steps[0].ModelInference: model 'm' (version latest) not found in the workspace. Upload the model "
        "(models/upload_and_convert) or correct the reference's name, version or sha (models/list lists the "
        "workspace's models, models/list_versions their versions), then copy the pipeline again")
    _nothing_written(world)
    assert world.registry.asked == [(WORKSPACE + 1, "m", None, None)]
    assert world.registry.requests == [subjects.REGISTRY_MODELS_EXIST] and world.registry.tokens == ["t"]

    world.registry.have = {("m", None, None): "converting"}
    copied = copy()
    assert world.store.pipelines[copied.pipeline_pk_id] == {"id": copied.pipeline_pk_id,
                                                           "workspace_id": WORKSPACE + 1, "name": "copied"}


@pytest.mark.parametrize("verb", ["create", "copy"])
def test_an_old_registry_whose_first_answer_took_the_bound_says_what_it_is_counted_from(world, monkeypatch, verb):
    """A registry of the release before whose 400 for exists_only came when the look-ups' bound had passed: the 504
    says from when the bound counts, as the other look-ups' does ("of the create's start", "of the copy's read of its
    source"); it said "not ended within 0.5s" alone."""
    world.deps.timeout = 1.0  # the look-ups' bound 0.5 s, before the create's own (0.8 s)

    async def slow_old_registry(broker, subject, message, *, timeout=5.0, token=None, reply_model=None):
        if subject == subjects.REGISTRY_MODELS_EXIST:
            raise Unavailable("registry is not running")
        assert isinstance(message, ModelLookup)  # never asked again as a deploy asks: no time left
        await asyncio.sleep(timeout + 0.01)  # the whole bound (the loop may wake a timer a clock tick early)
        raise InvalidRequest("exists_only: Extra inputs are not permitted")

    monkeypatch.setattr(handlers, "request", slow_old_registry)
    with pytest.raises(UpstreamTimeout) as late:
        if verb == "create":
            asyncio.run(_create(world, {"steps": [_inference({"name": "m"})]}))
        else:
            asyncio.run(handlers.copy_pipeline(world.deps, ALICE, "t", CopyPipeline(
                name="copied", workspace_id=WORKSPACE + 1, source_pipeline=PIPELINE)))
    since = "the create's start" if verb == "create" else "the copy's read of its source"
    name = "q" if verb == "create" else "copied"
    assert late.value.msg == (f"pipelines/{verb} of {name!r}: the definition's models could not be looked up (not "
                              f"ended within 0.5s of {since}); nothing was created: {verb} it again")
    _nothing_written(world)


def test_a_registry_that_answers_503_is_asked_one_reference_more_not_eight(world):
    """The registry's database away: it answers registry.models.exist 503, which the bus does not tell apart from
    nobody answering it (a registry of the release before, asked one reference at a time). The first reference is
    asked alone: its 503 is the create's answer. Before, MODEL_LOOKUPS_AT_ONCE look-ups were sent, each answered 503
    again."""
    refs = [{"name": f"m{i}"} for i in range(12)]
    world.registry.answers = {(r["name"], None, None): Unavailable(
        "registry's database did not answer (ConnectionRefusedError): it may be restarting or busy; ask again in a "
        "moment") for r in refs}
    with pytest.raises(Unavailable, match="could not be looked up \\(registry's database did not answer"):
        asyncio.run(_create(world, {"steps": [_inference(*refs)]}))
    assert world.registry.requests == [subjects.REGISTRY_MODELS_EXIST, subjects.REGISTRY_MODELS_RESOLVE]  # before:
    # the batch, then 8 resolves
    _nothing_written(world)

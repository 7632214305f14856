"""Seed 003's way to a model version, `client.get_model("my-model").get_version("latest")` (its set_model and
set_shadow_model examples, lines 111 and 149) or `.get_version(0)` (setup_continuous_training's, line 477), on a
fake session: the SDK had only `current_workspace().model(name).latest_version()`, so a script written from the seed
stopped with AttributeError before it reached set_model."""

from __future__ import annotations

from typing import Any

import pytest
from railyard_client import Client
from railyard_client.errors import NotFound
from railyard_client.models import Model

VERSIONS = [{"model_id": "my-model", "model_version": f"uuid-{n}", "sha": f"sha-{n}", "models_pk_id": 7,
             "status": "ready", "framework": "onnx"} for n in range(3)]


class FakeSession:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def post(self, route: str, body: dict[str, Any]) -> Any:
        self.calls.append((route, body))
        if route == "models/list_versions":  # oldest first, or newest first with order "newest"; limit as asked
            listed = VERSIONS if body["models_pk_id"] == 7 else []
            listed = listed[::-1] if body.get("order") == "newest" else listed
            return listed[:body["limit"]] if "limit" in body else listed
        if route == "models/list":
            return {"models": [{"id": 7, "name": "my-model"}, {"id": 8, "name": "other"}]}
        raise AssertionError(route)

    def post_pages(self, route: str, body: dict[str, Any], key: str | None = None) -> Any:
        """models/list (672fbd3) and models/list_versions are read a page at a time: one page, no next cursor."""
        if route == "models/list" and key == "models":
            return iter(self.post(route, body)["models"])
        if route == "models/list_versions" and key is None:
            return iter(self.post(route, body))
        raise AssertionError((route, key))


@pytest.fixture
def model() -> Model:
    return Model(FakeSession(), {"id": 7, "name": "my-model"})


def test_latest_is_the_newest_version(model):
    assert model.get_version("latest").version == "uuid-2"
    # one version asked for, not every page of them read oldest first to take the last
    assert model._session.calls == [("models/list_versions", {"models_pk_id": 7, "limit": 1, "order": "newest"})]


def test_a_number_counts_from_the_first_upload(model):
    assert [model.get_version(n).version for n in (0, 1, 2, -1)] == ["uuid-0", "uuid-1", "uuid-2", "uuid-2"]


def test_a_version_uuid_or_sha_names_that_version(model):
    assert model.get_version("uuid-1").sha == "sha-1" and model.get_version("sha-0").version == "uuid-0"


@pytest.mark.parametrize("missing", [3, -4, "uuid-9", ""])
def test_a_version_that_is_not_there_is_not_found_naming_what_there_is(model, missing):
    with pytest.raises(NotFound, match="my-model has 3 versions"):
        model.get_version(missing)


def test_a_model_without_versions_has_no_latest():
    with pytest.raises(NotFound, match="no versions"):
        Model(FakeSession(), {"id": 8, "name": "other"}).get_version("latest")


def test_the_client_finds_the_model_in_its_current_workspace():
    from railyard_client.workspaces import Workspace

    session = FakeSession()
    client = Client.__new__(Client)
    client._session = session
    client.current_workspace = lambda: Workspace(session, {"id": 3, "name": "apiworkspaces"})
    assert client.get_model("my-model").get_version("latest").version == "uuid-2"
    assert ("models/list", {"workspace_id": 3}) in session.calls
    with pytest.raises(NotFound, match="model 'nope' not found"):
        client.get_model("nope")


SERVED = {"name": "my-model", "version": "uuid-1", "sha": "sha-1"}


class DeploymentSession(FakeSession):
    def post(self, route: str, body: dict[str, Any]) -> Any:
        self.calls.append((route, body))
        if route in ("deployments/get_model_version", "deployments/get_shadow_model"):
            return {"model_version": dict(SERVED), "pipeline_version": "p", "split": None}
        if route in ("deployments/set_model", "deployments/set_shadow_model"):
            return {"model_version": body["model_version"], "pipeline_version": "q", "split": None}
        return super().post(route, body)


@pytest.fixture
def deployment():
    from railyard_client.pipelines import Deployment

    return Deployment(DeploymentSession(), {"id": 1, "name": "awesome-deploy-1"}, pipeline=None)


@pytest.mark.parametrize("method", ["get_model_version", "get_shadow_model"])
def test_the_served_model_version_reads_as_seed_003s_model_version(deployment, method):
    # seed 003 lines 130-136 and 168-172: "Returns a ModelVersion object"; it was a plain dict, so
    # `deployment.get_model_version().version` raised AttributeError. The dict's keys still answer as before
    served = getattr(deployment, method)()
    assert (served.name, served.version, served.sha) == ("my-model", "uuid-1", "sha-1")
    assert served == SERVED and served["version"] == "uuid-1"


def test_what_get_model_version_answers_can_be_set_again(deployment):
    # the seed's objects go back in: set_shadow_model(other.get_model_version()) refused a dict with InvalidInput
    served = deployment.get_model_version()
    deployment.set_shadow_model(served)
    deployment.set_model({"name": "my-model"})
    sent = [body["model_version"] for route, body in deployment._session.calls if route.startswith("deployments/set_")]
    assert sent == [SERVED, {"name": "my-model"}]


class TagSession(FakeSession):
    def post(self, route: str, body: dict[str, Any]) -> Any:
        self.calls.append((route, body))
        if route in ("deployments/get_tags", "deployments/add_tags"):
            return {"tags": ["cool", *body.get("tags", [])]}
        return super().post(route, body)


def test_tags_read_as_seed_003s_tag_objects():
    # seed 003 lines 40-45: `tags = deployment.get_tags(); assert tags[0].name == "cool"` ("A list of Tag objects");
    # they were plain strings, so `.name` raised AttributeError. They still are strings (== "cool")
    from railyard_client.pipelines import Deployment

    deployment = Deployment(TagSession(), {"id": 1, "name": "awesome-deploy-1"}, pipeline=None)
    tags = deployment.get_tags()
    assert tags[0].name == "cool" and tags == ["cool"]
    added = deployment.add_tags(["car", "truck"])
    assert [tag.name for tag in added] == ["cool", "car", "truck"]
    deployment.add_tags(added[1])  # a Tag goes back in as the seed's add_tags(tag) does
    assert deployment._session.calls[-1] == ("deployments/add_tags", {"deployment": "awesome-deploy-1",
                                                                       "tags": ["car"]})


def test_predict_takes_the_seeds_keyword_file_path(deployment, monkeypatch):
    # seed 003 lines 177-180: predict(file_path, tags=None, source=None); the SDK's first parameter was named
    # data_in, so predict(file_path="image_420.png", ...) raised TypeError before anything was sent
    asked = []
    monkeypatch.setattr(deployment, "predict_image", lambda path, tags=None, source=None: asked.append(
        (path, tags, source)) or {"id": "p"})
    assert deployment.predict(file_path="image_420.png", tags=["gonna", "give"], source="camera-1") == {"id": "p"}
    assert deployment.predict("frame.jpg") == {"id": "p"}
    assert asked == [("image_420.png", ["gonna", "give"], "camera-1"), ("frame.jpg", None, None)]
    from railyard_client.errors import InvalidInput

    with pytest.raises(InvalidInput, match="give an image path or rows"):
        deployment.predict()
    with pytest.raises(InvalidInput, match="not both"):
        deployment.predict("a.png", file_path="b.png")

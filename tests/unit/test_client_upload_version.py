"""upload_model answers the version its upload made: the one the registry's answer names (`model_version` beside the
seed's model id), on a fake session. Before, the newest version whose sha256 was the uploaded bytes', else the newest:
a converted framework's version stores the converted bytes (none while converting), so another upload of the name
that is newer was taken for it. A server whose answer names no version: the newest with the uploaded bytes' sha256,
else the newest, as before."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from railyard_client.errors import NotFound
from railyard_client.models import upload_model

PICKLE = b"a pickled sklearn model"


def record(n: int, framework: str, sha: str | None, status: str) -> dict[str, Any]:
    return {"model_id": "raced", "model_version": f"uuid-{n}", "sha": sha, "models_pk_id": 7, "status": status,
            "framework": framework}


class Answer:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def json(self) -> dict[str, Any]:
        return self.body


class FakeSession:
    """The registry's upload answer `inserted`, and the model's versions newest first (`versions`)."""

    def __init__(self, inserted: dict[str, Any], versions: list[dict[str, Any]]) -> None:
        self.inserted, self.versions, self.asked = inserted, versions, []

    def send(self, method: str, path: str, files: dict[str, Any]) -> Answer:
        assert path == "/v1/api/models/upload_and_convert"
        reader = files["file"][1]
        while reader.read(7):  # the upload reads the file (and its sha256) through
            pass
        return Answer({"insert_models": {"returning": [{"models": [self.inserted]}]}})

    def post_pages(self, route: str, body: dict[str, Any], key: str | None = None) -> Any:
        assert route == "models/list_versions" and body == {"models_pk_id": 7, "order": "newest"}
        for version in self.versions:
            self.asked.append(version["model_version"])
            yield version


# newest first: an onnx upload of the same name that landed after this one, then this one's converting version
RACED = [record(2, "onnx", "f" * 64, "ready"), record(1, "sklearn", None, "converting"),
         record(0, "onnx", "e" * 64, "ready")]


def test_the_version_the_answer_names_not_the_newest():
    session = FakeSession({"id": 7, "model_version": "uuid-1"}, RACED)
    version = upload_model(session, 3, "raced", PICKLE, framework="sklearn", wait=False)  # type: ignore[arg-type]
    assert (version.version, version.framework) == ("uuid-1", "sklearn")  # the old SDK: uuid-2, the onnx one
    assert session.asked == ["uuid-2", "uuid-1"]  # read up to it, not further


def test_a_named_version_the_list_lacks_is_not_found_not_another():
    session = FakeSession({"id": 7, "model_version": "uuid-9"}, RACED)
    with pytest.raises(NotFound, match="answered version uuid-9"):
        upload_model(session, 3, "raced", PICKLE, framework="sklearn", wait=False)  # type: ignore[arg-type]


def test_an_answer_without_a_version_takes_the_bytes_sha_else_the_newest():
    mine = hashlib.sha256(PICKLE).hexdigest()
    versions = [record(2, "onnx", "f" * 64, "ready"), record(1, "python", mine, "ready")]
    found = upload_model(FakeSession({"id": 7}, versions), 3, "raced", PICKLE, framework="python",  # type: ignore
                         wait=False)
    assert found.version == "uuid-1"
    newest = upload_model(FakeSession({"id": 7}, RACED), 3, "raced", PICKLE, framework="sklearn",  # type: ignore
                          wait=False)
    assert newest.version == "uuid-2"
    with pytest.raises(NotFound, match="lists no version"):
        upload_model(FakeSession({"id": 7}, []), 3, "raced", PICKLE, wait=False)  # type: ignore[arg-type]


class RegistrySession(FakeSession):
    """The registry's upload_from_registry answer (`answer`) and the model's versions newest first."""

    def __init__(self, answer: dict[str, Any], versions: list[dict[str, Any]]) -> None:
        super().__init__({}, versions)
        self.answer, self.bodies = answer, []

    def post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        assert route == "models/upload_from_registry"
        self.bodies.append(body)
        return self.answer


def registry(session: RegistrySession):
    from railyard_client.models import Registry

    return Registry(session, {"id": "reg-1", "name": "mlflow"})  # type: ignore[arg-type]


def test_a_registry_copy_answers_the_version_the_answer_names():
    """Registry.upload_model answered the seed's model id (an int) only; now the version upload_from_registry made,
    as Workspace.upload_model does (the newer onnx upload of the name is not taken for it)."""
    session = RegistrySession({"model_id": 7, "model_version": "uuid-1"}, RACED)
    version = registry(session).upload_model(3, "raced", "http://mlflow/model.pkl", wait=False,
                                             requirements=["scikit-learn"])
    assert (version.version, version.framework, version.model_pk) == ("uuid-1", "sklearn", 7)
    assert session.bodies == [{"registry_id": "reg-1", "name": "raced", "path": "http://mlflow/model.pkl",
                               "workspace_id": 3, "conversion": {"framework": "sklearn",
                                                                 "requirements": ["scikit-learn"]}}]
    with pytest.raises(NotFound, match="answered version uuid-9"):
        registry(RegistrySession({"model_id": 7, "model_version": "uuid-9"}, RACED)).upload_model(
            3, "raced", "http://mlflow/model.pkl", wait=False)


def test_a_registry_copy_without_a_named_version_is_the_newest_not_a_sha_match():
    """A server whose answer is the seed's `{"model_id": N}` only: the newest version (the copied bytes' sha256 is not
    the client's to compare), never the first version whose sha is None."""
    versions = [record(2, "onnx", "f" * 64, "ready"), record(1, "sklearn", None, "converting")]
    version = registry(RegistrySession({"model_id": 7}, versions)).upload_model(3, "raced", "x", wait=False)
    assert version.version == "uuid-2"

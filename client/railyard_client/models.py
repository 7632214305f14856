"""Models, their versions, uploads, and external (MLflow) registries."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from railyard_client._lazy import pa
from railyard_client.errors import ConversionFailed, InvalidInput, NotFound, WaitTimeout
from railyard_client.progress import ProgressReader, upload_bar, wanted
from railyard_client.resource import Resource
from railyard_client.session import Session

FRAMEWORKS = ("onnx", "python", "custom", "sklearn", "xgboost")


class ModelVersion(Resource):
    """One uploaded version of a model: its UUID, sha256, framework and status (`ready`, `converting`,
    `error`)."""

    @property
    def name(self) -> str:
        """The model's name."""
        return str(self._record["model_id"])

    @property
    def version(self) -> str:
        """The version's UUID."""
        return str(self._record["model_version"])

    @property
    def sha(self) -> str | None:
        """sha256 of the stored artifact."""
        return self._record.get("sha")

    @property
    def model_pk(self) -> int:
        """The model's numeric id."""
        return int(self._record["models_pk_id"])

    @property
    def status(self) -> str:
        """`ready`, `converting` or `error`."""
        return str(self._record["status"])

    @property
    def framework(self) -> str:
        """The framework it was uploaded as."""
        return str(self._record["framework"])

    def refresh(self) -> ModelVersion:
        """Read this version's record again (e.g. while it converts)."""
        for record in self._session.post_pages("models/list_versions", {"models_pk_id": self.model_pk,
                                                                          "order": "newest"}):
            if record["model_version"] == self.version:  # the pages up to the one that holds it, newest first
                self._record = record
                break
        return self

    def wait_ready(self, timeout: float = 300.0) -> ModelVersion:
        """Wait until a conversion finishes; raises ConversionFailed with the server's reason on error."""
        deadline = time.monotonic() + timeout
        while self.refresh().status == "converting":
            if time.monotonic() > deadline:
                raise WaitTimeout(f"model {self.name} version {self.version} still converting after {timeout:g}s")
            time.sleep(0.5)
        if self.status == "error":
            raise ConversionFailed(f"model {self.name}: {self._record.get('error') or 'conversion failed'}")
        return self

    def step_ref(self) -> dict[str, Any]:
        """The reference a pipeline step pins this version with: name, version and sha."""
        return {"name": self.name, "version": self.version, "sha": self.sha}

    def __repr__(self) -> str:
        return f"ModelVersion(name={self.name!r}, version={self.version!r}, status={self.status!r})"


class Model(Resource):
    """A named model in a workspace, with its versions."""

    @property
    def id(self) -> int:
        """The model's numeric id."""
        return int(self._record["id"])

    @property
    def name(self) -> str:
        """The model's name."""
        return str(self._record["name"])

    def versions(self) -> list[ModelVersion]:
        """Every version, oldest first (read a page at a time: docs/api-paging.md)."""
        return [ModelVersion(self._session, r)
                for r in self._session.post_pages("models/list_versions", {"models_pk_id": self.id})]

    def _newest_first(self) -> Iterator[ModelVersion]:
        """The versions newest first, a page at a time (lazy: a caller that stops early asks for no further page)."""
        for record in self._session.post_pages("models/list_versions", {"models_pk_id": self.id, "order": "newest"}):
            yield ModelVersion(self._session, record)

    def latest_version(self) -> ModelVersion:
        """The newest version (the last uploaded): one version asked for (`order` "newest", `limit` 1), not every
        page of the model's versions."""
        newest = self._session.post("models/list_versions", {"models_pk_id": self.id, "limit": 1, "order": "newest"})
        if not newest:
            raise InvalidInput(f"model {self.name} has no versions")
        return ModelVersion(self._session, newest[0])

    def get_version(self, version: str | int) -> ModelVersion:
        """One version, as seed 003 names it: `"latest"` (the newest), a number counted from the first upload
        (0 is the first, -1 the newest), or a version's UUID or sha256 (the newest with it). NotFound naming the
        versions otherwise. Reads the pages up to the one that holds it: oldest first for 0, 1, ..., newest first for
        "latest", -1, -2, ..., a UUID or a sha256."""
        if version == "latest":
            try:
                return self.latest_version()
            except InvalidInput:
                raise NotFound(404, "not_found", f"model {self.name} has no versions") from None
        count = 0
        if isinstance(version, int) and not isinstance(version, bool):
            listed = self._newest_first() if version < 0 else (
                ModelVersion(self._session, r)
                for r in self._session.post_pages("models/list_versions", {"models_pk_id": self.id}))
            wanted = -version - 1 if version < 0 else version
            for count, found in enumerate(listed, 1):
                if count - 1 == wanted:
                    return found
        else:
            for found in self._newest_first():
                count += 1
                if str(version) and str(version) in (found.version, found.sha):
                    return found
        if not count:
            raise NotFound(404, "not_found", f"model {self.name} has no versions")
        raise NotFound(404, "not_found", f"no version {version!r}: model {self.name} has {count} versions "
                                         f"(0 to {count - 1}, \"latest\", or a version's UUID or sha256)")

    def config(self) -> Any:
        """The model's configuration record (`models/get_config_by_id`)."""
        return self._session.post("models/get_config_by_id", {"model_id": self.id}).get("model_config")


def _schema_b64(schema: pa.Schema | str | None) -> str | None:
    if schema is None or isinstance(schema, str):
        return schema
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def upload_model(session: Session, workspace_id: int, name: str, source: str | Path | bytes | IO[bytes], *,
                 framework: str = "onnx", input_schema: pa.Schema | str | None = None,
                 output_schema: pa.Schema | str | None = None, requirements: list[str] | None = None,
                 python_version: str | None = None, visibility: str = "private", progress: bool | None = None,
                 wait: bool = True, timeout: float = 300.0) -> ModelVersion:
    """Upload a model file as a new version of `name` (see Workspace.upload_model)."""
    if framework not in FRAMEWORKS:
        raise InvalidInput(f"framework must be one of {', '.join(FRAMEWORKS)}")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InvalidInput(f"no such file: {path}")
        handle: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed below
        file_name, size = path.name, path.stat().st_size
    elif isinstance(source, (bytes, bytearray, memoryview)):
        handle, file_name, size = io.BytesIO(bytes(source)), name, len(source)
    elif isinstance(source, io.TextIOBase):  # its read() gives text, which the upload cannot send
        raise InvalidInput(f"{getattr(source, 'name', 'the file')} is open in text mode: open the model file in "
                           "binary mode ('rb')")
    elif not callable(getattr(source, "read", None)):
        raise InvalidInput(f"cannot upload a {type(source).__name__}: give a file path, bytes or a file open in "
                           "binary mode ('rb')")
    else:
        handle, file_name = source, getattr(source, "name", name)
        file_name = os.path.basename(str(file_name))
        size = os.fstat(source.fileno()).st_size if hasattr(source, "fileno") else 0
    conversion: dict[str, Any] = {"framework": framework}
    if requirements:
        conversion["requirements"] = requirements
    if python_version:
        conversion["python_version"] = python_version
    metadata = {"name": name, "visibility": visibility, "workspace_id": workspace_id, "conversion": conversion,
                "input_schema": _schema_b64(input_schema), "output_schema": _schema_b64(output_schema)}
    metadata = {k: v for k, v in metadata.items() if v is not None}
    try:
        with upload_bar(file_name, size, wanted(progress, size)) as (bar, task):
            reader = ProgressReader(handle, size, bar, task)
            response = session.send("POST", "/v1/api/models/upload_and_convert", files={
                "metadata": (None, json.dumps(metadata), "application/json"),
                "file": (file_name, reader, "application/octet-stream")})
    finally:
        if isinstance(source, (str, Path)):
            handle.close()
    inserted = response.json()["insert_models"]["returning"][0]["models"][0]
    version = _uploaded_version(session, name, inserted, reader.sha256.hexdigest())
    return version.wait_ready(timeout) if wait else version


def _uploaded_version(session: Session, name: str, inserted: dict[str, Any], sha: str | None) -> ModelVersion:
    """The version an upload made, read newest first up to the page that holds it: the one the answer names
    (`model_version`). Before, the newest whose sha256 was the uploaded bytes', else the newest: a converted framework's
    version stores the converted bytes, so another upload of the same name made meanwhile was taken for this one.
    A server whose answer names no version (the seed's answer only): the newest whose bytes are ours (`sha`, None when
    the bytes were never the client's: a registry's copy), else the newest."""
    wanted = inserted.get("model_version")
    newest = None
    for record in session.post_pages("models/list_versions", {"models_pk_id": inserted["id"], "order": "newest"}):
        newest = newest or ModelVersion(session, record)
        if (str(record.get("model_version")) == str(wanted)) if wanted else (sha is not None
                                                                              and record.get("sha") == sha):
            return ModelVersion(session, record)
    if wanted:
        raise NotFound(404, "not_found", f"model {name}: the upload answered version {wanted}, which its versions"
                                         " do not list")
    if newest is None:
        raise NotFound(404, "not_found", f"model {name}: the upload answered, but lists no version")
    return newest


class Registry(Resource):
    """An external MLflow model registry connected to workspaces."""

    @property
    def id(self) -> str:
        """The registry's UUID."""
        return str(self._record.get("id") or self._record.get("registry_id"))

    @property
    def name(self) -> str:
        """The registry's name."""
        return str(self._record.get("name", ""))

    def models(self, max_results: int = 100) -> list[dict[str, Any]]:
        """The registry's registered models (every page), as MLflow describes them."""
        models: list[dict[str, Any]] = []
        token = None
        while True:
            body: dict[str, Any] = {"registry_id": self.id, "max_results": max_results}
            if token:
                body["page_token"] = token
            page = self._session.post("models/list_registry_models", body)
            models += page.get("registered_models", [])
            token = page.get("next_page_token")
            if not token:
                return models

    def artifacts(self, name: str, version: str) -> list[dict[str, Any]]:
        """The files of one registered model version (`full_path` is what upload_model takes)."""
        # the gateway answers a bare list (the reply's `artifacts`); reading ["artifacts"] of it was a TypeError
        return self._session.post("models/list_registry_model_version_artifacts",
                                  {"registry_id": self.id, "name": name, "version": version})

    def upload_model(self, workspace_id: int, name: str, path: str, framework: str = "sklearn", *,
                     requirements: list[str] | None = None, python_version: str | None = None,
                     input_schema: pa.Schema | str | None = None, output_schema: pa.Schema | str | None = None,
                     wait: bool = True, timeout: float = 300.0) -> ModelVersion:
        """Copy an artifact (a `full_path` from `artifacts`) into a workspace as a new version of `name` and answer
        that version (the one the server's answer names, whatever else was uploaded as `name` meanwhile; its
        `model_pk` is the seed's `model_id`). With `wait`, returns once its conversion finished (ConversionFailed with
        the server's reason)."""
        if framework not in FRAMEWORKS:
            raise InvalidInput(f"framework must be one of {', '.join(FRAMEWORKS)}")
        conversion: dict[str, Any] = {"framework": framework}
        if requirements:
            conversion["requirements"] = requirements
        if python_version:
            conversion["python_version"] = python_version
        body = {"registry_id": self.id, "name": name, "path": path, "workspace_id": workspace_id,
                "conversion": conversion, "input_schema": _schema_b64(input_schema),
                "output_schema": _schema_b64(output_schema)}
        answer = self._session.post("models/upload_from_registry", {k: v for k, v in body.items() if v is not None})
        version = _uploaded_version(self._session, name, {"id": answer["model_id"],
                                                          "model_version": answer.get("model_version")}, None)
        return version.wait_ready(timeout) if wait else version

    def attach(self, workspace_id: int) -> None:
        """Make the registry visible in another workspace."""
        self._session.post("models/attach_registry_to_workspace", {"registry_id": self.id,
                                                                   "workspace_id": workspace_id})

    def detach(self, workspace_id: int) -> None:
        """Remove the registry from a workspace."""
        self._session.post("models/remove_registry_from_workspace", {"registry_id": self.id,
                                                                     "workspace_id": workspace_id})

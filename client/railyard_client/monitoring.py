"""Seed 003's deployment management on a `Deployment`: tags, information, update, and the model and shadow model
it serves (routes under `/v1/api/deployments/`, answered by the monitoring service)."""

from __future__ import annotations

from typing import Any

from railyard_client.errors import InvalidInput, boolean_input
from railyard_client.models import Model, ModelVersion
from railyard_client.session import Session


class Tag(str):
    """A deployment's tag: its name, a string, also read as `.name` as seed 003's Tag objects are."""

    @property
    def name(self) -> str:
        """The tag itself."""
        return str(self)


class ServedModelVersion(dict):
    """{name, version, sha} of the model version a deployment serves, also read as attributes like a ModelVersion
    (seed 003's get_model_version and get_shadow_model return one); set_model takes it back."""

    @property
    def name(self) -> str:
        """The model's name."""
        return str(self["name"])

    @property
    def version(self) -> str | None:
        """The version's UUID."""
        return self.get("version")

    @property
    def sha(self) -> str | None:
        """sha256 of the version's artifact."""
        return self.get("sha")


ModelVersionLike = ModelVersion | Model | dict[str, Any] | str


def _served(answer: dict[str, Any]) -> ServedModelVersion | None:
    found = answer["model_version"]
    return None if found is None else ServedModelVersion(found)


def _model_version_ref(model_version: ModelVersionLike) -> dict[str, Any]:
    """A ModelVersion pins name, version and sha; a Model its newest version; a name the newest ready version; a
    dict (what get_model_version answers) its name and whichever of version and sha it has."""
    if isinstance(model_version, ModelVersion):
        return model_version.step_ref()
    if isinstance(model_version, Model):
        return model_version.latest_version().step_ref()
    if isinstance(model_version, str) and model_version:
        return {"name": model_version}
    if isinstance(model_version, dict) and isinstance(model_version.get("name"), str) and model_version["name"]:
        return {key: model_version[key] for key in ("name", "version", "sha") if model_version.get(key) is not None}
    raise InvalidInput(f"give a ModelVersion, a Model, a model name or a {{name, version, sha}} dict, "
                       f"not {model_version!r}")


class DeploymentManagement:
    """The seed's deployment methods, mixed into `Deployment` (which provides `_session` and `name`)."""

    _session: Session
    name: str

    def _call(self, route: str, **body: Any) -> Any:
        return self._session.post(f"deployments/{route}", {"deployment": self.name, **body})

    def add_tags(self, tags: str | list[str]) -> list[Tag]:
        """Add a tag or a list of tags to this deployment; returns all its tags, in the order first added."""
        sent = [str(tags)] if isinstance(tags, str) else [str(tag) for tag in tags]
        return [Tag(tag) for tag in self._call("add_tags", tags=sent)["tags"]]

    def get_tags(self) -> list[Tag]:
        """The tags of this deployment (strings, also read as `.name`)."""
        return [Tag(tag) for tag in self._call("get_tags")["tags"]]

    def retrieve_information(self) -> dict[str, Any]:
        """What the platform knows about this deployment: `deployment` (its inference name), display `name`,
        pipeline name and version, status, tags, target_datalake, min_threshold, model_version,
        shadow_model_version, and `split` for a deployment whose models sit in an A/B split: its `arms` (name,
        version, sha, weight, share) and `hash_key` (model_version is then the first arm)."""
        return self._call("retrieve_information")

    def update(self, name: str | None = None, target_datalake: str | None = None,
               min_threshold: float | None = None) -> dict[str, Any]:
        """Set a new display name, target datalake (an images dataset of the workspace, by id or unique name: it
        receives every new prediction's image; "" clears it) or minimum confidence threshold (0 to 1: classes and
        detection boxes scoring below it are dropped; 0 filters nothing); None keeps a value. Returns the
        information afterwards. The inference name stays."""
        body = {key: value for key, value in (("name", name), ("target_datalake", target_datalake),
                                              ("min_threshold", min_threshold)) if value is not None}
        return self._call("update", **body)

    def delete(self, force_delete: bool = False) -> None:
        """Stop this deployment (the pipeline and its versions stay) and forget its tags and settings; without
        `force_delete`, a deployment that has any is refused (Conflict)."""
        # the API takes only JSON true or false (9808be20); a string is refused: bool("false") is True
        self._call("delete", force_delete=boolean_input(force_delete, "force_delete"))

    def get_model_version(self) -> ServedModelVersion | None:
        """The model version this deployment serves, as {name, version, sha} (also `.name`, `.version`, `.sha`);
        for an A/B split, its first arm (`retrieve_information()["split"]` lists every arm with its weight)."""
        return _served(self._call("get_model_version"))

    def set_model(self, model_version: ModelVersionLike) -> dict[str, Any]:
        """Serve this model version: a new pipeline version is created and swapped in; returns
        {model_version, pipeline_version} once it serves."""
        return self._call("set_model", model_version=_model_version_ref(model_version))

    def get_shadow_model(self) -> ServedModelVersion | None:
        """The shadow model version ({name, version, sha}, also as attributes), None when the deployment has
        none."""
        return _served(self._call("get_shadow_model"))

    def set_shadow_model(self, shadow_model_version: ModelVersionLike) -> dict[str, Any]:
        """Run this model version as the shadow challenger (its outputs are logged, the model's answer); returns
        {model_version, pipeline_version} once the new pipeline version serves."""
        return self._call("set_shadow_model", model_version=_model_version_ref(shadow_model_version))

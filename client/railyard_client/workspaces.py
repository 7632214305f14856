"""Workspaces (what models, pipelines and members belong to) and users."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from railyard_client._lazy import pa
from railyard_client.connections import Connection
from railyard_client.errors import NotFound
from railyard_client.models import Model, ModelVersion, Registry, upload_model
from railyard_client.pipelines import Pipeline
from railyard_client.resource import Resource

EMAIL_MAX = 254
"""The longest email the server's commands take (an address's most, RFC 5321): a user invited before the limit with a
longer one is named by id (User.deactivate, User.activate, User.set_password)."""


class User(Resource):
    """A user of the platform."""

    @property
    def id(self) -> str:
        """The user's UUID."""
        return str(self._record["id"])

    @property
    def email(self) -> str:
        """The user's email (also their username)."""
        return str(self._record.get("email") or self._record.get("username"))

    @property
    def enabled(self) -> bool:
        """False once deactivated."""
        return bool(self._record.get("enabled", True))

    def deactivate(self, *, by_id: bool | None = None) -> None:
        """Stop the user from logging in (admins only); their tokens stop working within a minute. The user is named
        by email (seed 001's way), or by id with `by_id=True`; by default (None) by id only when the email is one the
        server's commands refuse (over EMAIL_MAX characters: a user invited before that limit)."""
        self._session.post("users/deactivate", self._named(by_id))
        self._record["enabled"] = False

    def activate(self, *, by_id: bool | None = None) -> None:
        """Let a deactivated user log in again (admins only). Named as `deactivate` names them (`by_id`)."""
        self._session.post("users/activate", self._named(by_id))
        self._record["enabled"] = True

    def set_password(self, password: str, *, by_id: bool | None = None) -> None:
        """Set the user's password (administrators; it becomes temporary, and every token of the user stops working).
        Named as `deactivate` names them (`by_id`). Your own password: `Client.update_password`, with the current
        one."""
        self._session.post("users/update_password", {"password": password} | self._named(by_id))

    def _named(self, by_id: bool | None) -> dict[str, str]:
        """How users/deactivate, users/activate and users/update_password name the user: its email or user_id, one of
        them (else a 400)."""
        if by_id is None:
            by_id = len(self.email) > EMAIL_MAX
        return {"user_id": self.id} if by_id else {"email": self.email}


class Workspace(Resource):
    """A workspace: its models, pipelines, members, connections and registries."""

    @property
    def id(self) -> int:
        """The workspace's numeric id."""
        return int(self._record["id"])

    @property
    def name(self) -> str:
        """The workspace's name."""
        return str(self._record["name"])

    # --- models -----------------------------------------------------------------------------------------

    def upload_model(self, name: str, source: str | Path | bytes | IO[bytes], *, framework: str = "onnx",
                     input_schema: pa.Schema | str | None = None, output_schema: pa.Schema | str | None = None,
                     requirements: list[str] | None = None, python_version: str | None = None,
                     progress: bool | None = None, wait: bool = True, timeout: float = 300.0) -> ModelVersion:
        """Upload a model from a path, bytes or an open binary file as a new version of `name` (framework
        `onnx`, `python`, `custom`, `sklearn` or `xgboost`). Streams the file (a progress bar on a terminal
        for files from 8 MiB, or when `progress=True`); with `wait`, returns once any conversion finished. Answers
        the version this upload made (the one the server's answer names), whatever else was uploaded as `name`
        meanwhile."""
        return upload_model(self._session, self.id, name, source, framework=framework, input_schema=input_schema,
                            output_schema=output_schema, requirements=requirements, python_version=python_version,
                            progress=progress, wait=wait, timeout=timeout)

    def models(self) -> list[Model]:
        """The workspace's models, newest first (read a page at a time: docs/api-paging.md)."""
        return [Model(self._session, record) for record in self._models()]

    def _models(self) -> Iterator[dict[str, Any]]:
        return self._session.post_pages("models/list", {"workspace_id": self.id}, "models")

    def model(self, name: str) -> Model:
        """A model by name; NotFound when there is none. Reads the list up to the page that holds it."""
        for record in self._models():
            if record["name"] == name:
                return Model(self._session, record)
        raise NotFound(404, "not_found", f"model {name!r} not found in workspace {self.name}")

    # --- pipelines --------------------------------------------------------------------------------------

    def build_pipeline(self, name: str) -> Pipeline:
        """A pipeline to add steps to: the existing one of that name (its latest definition cleared), or a new
        one (created on `create()` or `deploy()`)."""
        try:
            return self.pipeline(name).clear()
        except NotFound:
            return Pipeline(self._session, self.id, name)

    def pipelines(self) -> list[Pipeline]:
        """The workspace's pipelines, oldest first. Read a page (at most 1000) at a time, so a list larger than
        one server reply (8 MiB) reads too."""
        return [Pipeline(self._session, self.id, record["name"], record) for record in self._pipeline_records()]

    def pipeline(self, name: str) -> Pipeline:
        """An existing pipeline by name; NotFound when there is none."""
        for record in self._pipeline_records():  # stops at the page that holds it
            if record["name"] == name:
                return Pipeline(self._session, self.id, name, record)
        raise NotFound(404, "not_found", f"pipeline {name!r} not found in workspace {self.name}")

    def _pipeline_records(self) -> Iterator[dict[str, Any]]:
        return self._session.post_pages("pipelines/list", {"workspace_id": self.id}, "pipelines")

    # --- members ----------------------------------------------------------------------------------------

    def users(self) -> list[dict[str, Any]]:
        """The members, in the order they were added: user_id and user_type (OWNER or COLLABORATOR) (read a page at a
        time: docs/api-paging.md)."""
        return list(self._session.post_pages("workspaces/list_users", {"workspace_id": self.id}, "users"))

    def add_user(self, email: str) -> None:
        """Add an existing user as a collaborator."""
        self._session.post("workspaces/add_user", {"workspace_id": self.id, "email": email})

    def remove_user(self, email: str) -> None:
        """Remove a member."""
        self._session.post("workspaces/remove_user", {"workspace_id": self.id, "email": email})

    def create_inference_client(self, name: str) -> dict[str, Any]:
        """An OAuth2 client whose client_credentials tokens may only run inferences on this workspace's
        deployments (owners only): `client_id` and `client_secret`, the secret shown this once."""
        return self._session.post("workspaces/create_inference_client", {"workspace_id": self.id, "name": name})

    def inference_clients(self) -> list[dict[str, Any]]:
        """The workspace's inference clients (no secrets), oldest first (read a page at a time: docs/api-paging.md)."""
        return list(self._session.post_pages("workspaces/list_inference_clients", {"workspace_id": self.id},
                                             "clients"))

    def revoke_inference_client(self, client_id: str) -> None:
        """Revoke an inference client: no new tokens, and its issued tokens stop working."""
        self._session.post("workspaces/revoke_inference_client", {"workspace_id": self.id, "client_id": client_id})

    # --- connections and registries ------------------------------------------------------------------------

    def connections(self) -> list[Connection]:
        """The data connections attached to this workspace, oldest first (secret-looking details masked; read a page
        at a time: docs/api-paging.md)."""
        listed = self._session.post_pages("connections/list", {"workspace_id": self.id}, "connections")
        return [Connection(self._session, record) for record in listed]

    def add_connection(self, connection: Connection) -> None:
        """Attach a data connection to this workspace."""
        connection.add_to_workspace(self.id)

    def registries(self) -> list[Registry]:
        """The MLflow registries attached to this workspace, oldest first (tokens masked; read a page at a time:
        docs/api-paging.md)."""
        return [Registry(self._session, r) for r in self._session.post_pages("models/list_registries",
                                                                              {"workspace_id": self.id})]

    def create_registry(self, name: str, url: str, token: str | None = None) -> Registry:
        """Connect an MLflow registry to this workspace (the token is kept encrypted)."""
        created = self._session.post("models/create_registry", {"workspace_id": self.id, "name": name, "url": url,
                                                                "token": token})
        registry_id = created.get("id") or created.get("registry_id")
        return Registry(self._session, self._session.post("models/get_registry", {"registry_id": registry_id}))

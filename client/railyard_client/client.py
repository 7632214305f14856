"""`Client`: the entry point of the SDK."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from railyard_client import tasks
from railyard_client.connections import Connection
from railyard_client.errors import ConfigurationError, NotFound
from railyard_client.models import Model, ModelVersion
from railyard_client.pipelines import Deployment, Pipeline, infer_at
from railyard_client.session import ENV_WORKSPACE, Session, TokensNotSaved
from railyard_client.workspaces import User, Workspace


class ClientAuth:
    """`Client.auth`: where the API guide's scripts take their Authorization header from."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def auth_header(self) -> dict[str, str]:
        """`{"Authorization": "Bearer ..."}` with a valid token (refreshed when about to expire)."""
        return self._client.auth_header()


class Client:
    """A signed-in connection to one Railyard server.

        client = Client("http://127.0.0.1:18000", username="admin", password="...", client_secret="...")
        client = Client()   # from RAILYARD_CLIENT_* variables, a task run, or `railyard login`'s file

    Workspace-scoped shortcuts (`upload_model`, `build_pipeline`, `pipeline`, ...) act on the current
    workspace: the one `set_current_workspace` chose, else `workspace=` here, else `RAILYARD_CLIENT_WORKSPACE`,
    else the one `railyard workspaces use` saved (as the file says at each call), else the caller's first
    workspace. It is looked up at each call, as the server has it now: a workspace the caller is no longer a
    member of is NotFound, not the record read when the client first used it.
    """

    def __init__(self, url: str | None = None, *, username: str | None = None, password: str | None = None,
                 client_id: str | None = None, client_secret: str | None = None, token: str | None = None,
                 workspace: str | int | None = None, credentials_file: str | Path | None = None,
                 timeout: float | None = 60.0, route_timeouts: Mapping[str, float] | None = None) -> None:
        """Connect and sign in; see the module `railyard_client.session` for where each value comes from.
        `timeout`: seconds a call may wait for its answer (None: no limit; an `httpx.Timeout` is taken as well); a
        deploy, a copy, an undeploy and a deployment's set_model, set_shadow_model and delete wait as long as the
        gateway may take on them at its default settings (315 s for a deploy, 323 s for a copy, 320 s for a model
        swap) when that is longer; with deployer.ready_timeout above ~107 s the gateway waits longer (a deploy
        behind another of its pipeline may take that): give the client a larger `timeout`, or those routes their
        own waits with `route_timeouts` (seconds by route, e.g. `{"pipelines/deploy": 900}`; or the variable
        `RAILYARD_CLIENT_ROUTE_TIMEOUTS=pipelines/deploy=900,pipelines/copy=910`, which the argument's routes
        override): a route named there waits that long or `timeout`, whichever is longer.
        Raises ConfigurationError when nothing says where or who, `route_timeouts` is not a mapping, names a route
        the API does not have (`railyard_client.session.API_ROUTES`; an inference route's wait is Pipeline.infer's
        `timeout`) or a wait that is not a positive number of seconds; AuthenticationError on wrong credentials."""
        self._session = Session(url, username=username, password=password, client_id=client_id,
                                client_secret=client_secret, token=token, credentials_file=credentials_file,
                                timeout=timeout, route_timeouts=route_timeouts)
        # the current workspace as chosen (a name or an id; None: the saved choice, read at each call, or the first):
        # looked up at each call (current_workspace)
        self._workspace_ref: str | int | None = workspace if workspace is not None else (
            os.environ.get(ENV_WORKSPACE) or None)

    # --- connection ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._session.url

    @property
    def username(self) -> str | None:
        """The user this client signs in as (the name its token carries), None for a token that names nobody."""
        return self._session.user

    @property
    def token(self) -> str:
        """A valid access token (refreshed when about to expire), for scripts that call the HTTP API."""
        return self._session.token

    @property
    def tokens_not_saved(self) -> TokensNotSaved | None:
        """Why the tokens this client refreshed are not in the credentials file it came from: a `TokensNotSaved` (as
        warned when it happened) with the file (`path`) and the OSError of the last write (`error`), until a later
        refresh saves them. None when they are saved, or when the client did not come from the file (a token, a
        password or a client secret given, or in the environment). A refresh spends the file's refresh token: while
        this is set, the next process that reads the file needs `railyard login` again."""
        return self._session.not_saved

    def auth_header(self) -> dict[str, str]:
        """`{"Authorization": "Bearer ..."}` for requests/httpx scripts written against the HTTP API."""
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def auth(self) -> ClientAuth:
        """The header as the API guide's scripts ask for it: `headers = client.auth.auth_header()` (seed 001 writes
        `wl.auth.auth_header()` before every request), the same as `auth_header()`."""
        return ClientAuth(self)

    def request(self, route: str, body: dict[str, Any] | None = None) -> Any:
        """POST any `/v1/api/<route>` with a JSON body and return the answer's JSON (typed errors)."""
        return self._session.post(route, body)

    def health(self) -> dict[str, Any]:
        """The platform's health: every service's status."""
        return self._session.send("GET", "/v1/api/health").json()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- workspaces -----------------------------------------------------------------------------------------

    def workspaces(self) -> list[Workspace]:
        """The workspaces the caller belongs to, oldest first (read a page at a time: docs/api-paging.md)."""
        return [Workspace(self._session, record) for record in self._session.post_pages("workspaces/list", {},
                                                                                          "workspaces")]

    def workspace(self, ref: str | int | None = None) -> Workspace:
        """A workspace by name or id; without one, the current workspace. NotFound when there is none. An int is an
        id only (names may be digits: workspace 3 named "7" is not workspace 7, which set_current_workspace and
        `railyard workspaces use` keep by id); a str is the name or id of the first workspace that has it."""
        if ref is None:
            return self.current_workspace()
        by_id_only = isinstance(ref, int) and not isinstance(ref, bool)
        for record in self._session.post_pages("workspaces/list", {}, "workspaces"):  # up to the page that holds it
            if str(record["id"]) == str(ref) or (not by_id_only and record["name"] == str(ref)):
                return Workspace(self._session, record)
        raise NotFound(404, "not_found", f"workspace {ref!r} not found (or you are not a member)")

    def create_workspace(self, name: str) -> Workspace:
        """Create a workspace owned by the caller."""
        created = self._session.post("workspaces/create", {"workspace_name": name})
        return self.workspace(created["workspace_id"])

    def set_current_workspace(self, workspace: Workspace | str | int) -> Workspace:
        """Make a workspace the one the shortcuts act on (kept by its id: a rename does not lose it). NotFound when
        the caller is not its member."""
        chosen = self.workspace(workspace.id if isinstance(workspace, Workspace) else workspace)
        self._workspace_ref = chosen.id
        return chosen

    def current_workspace(self) -> Workspace:
        """The workspace the shortcuts act on (see the class description for how it is chosen), as the server has
        it now: looked up at each call (one workspaces/list request for most callers), so a `railyard workspaces use`
        run elsewhere since, a rename, or the caller's removal from it (NotFound) shows at once, not the record read
        at the first call. ConfigurationError when the caller belongs to no workspace."""
        ref = self._workspace_ref if self._workspace_ref is not None else self._session.saved_workspace
        if ref is not None:
            return self.workspace(ref)
        # the first workspace: workspaces/list answers in id order, so its first page's first
        first = self._session.post("workspaces/list", {"limit": 1})["workspaces"]
        if not first:
            raise ConfigurationError("you belong to no workspace yet: create one "
                                     "(client.create_workspace(name) or `railyard workspaces create`)")
        return Workspace(self._session, first[0])

    # --- shortcuts on the current workspace ------------------------------------------------------------------

    def upload_model(self, name: str, source: str | Path | bytes | IO[bytes], **options: Any) -> ModelVersion:
        """Upload a model into the current workspace (see Workspace.upload_model for the options)."""
        return self.current_workspace().upload_model(name, source, **options)

    def download_model(self, name: str, version: str | None = None) -> bytes:
        """A ready model version's artifact (the uploaded file or package) from the current workspace; the latest
        version of `name` without `version`."""
        body: dict[str, Any] = {"workspace_id": self.current_workspace().id, "name": name}
        if version is not None:
            body["version"] = str(version)
        return self._session.send("POST", "/v1/api/models/download", json=body).content

    def get_model(self, name: str) -> Model:
        """A model of the current workspace by name, as seed 003's `client.get_model(name)`; then
        `.get_version("latest")` (or a number, a UUID) for its set_model and set_shadow_model."""
        return self.current_workspace().model(name)

    def build_pipeline(self, name: str) -> Pipeline:
        """Start (or rebuild) a pipeline in the current workspace."""
        return self.current_workspace().build_pipeline(name)

    def pipeline(self, name: str) -> Pipeline:
        """An existing pipeline of the current workspace by name."""
        return self.current_workspace().pipeline(name)

    def get_deployment(self, name: str) -> Deployment:
        """A deployment by pipeline name or deployment name (`<deploy_id>-<id>`) in the current workspace."""
        workspace = self.current_workspace()  # looked up once: the one searched is the one the NotFound names
        for pipeline in workspace.pipelines():
            record = pipeline.to_dict().get("deployment")
            if record and name in (pipeline.name, record["name"]):
                return Deployment(self._session, record, pipeline)
        raise NotFound(404, "not_found", f"no active deployment {name!r} in workspace {workspace.name}")

    def infer(self, deployment: str, pipeline: str, data_in: Any, *, timeout: float = 60.0) -> Any:
        """Run rows through a deployment by its names alone (`<deploy_id>-<id>` and the pipeline's name), as an
        inference client's token may (it cannot list pipelines); types as in Pipeline.infer."""
        return infer_at(self._session, deployment, pipeline, data_in, timeout=timeout)

    # --- users, connections ----------------------------------------------------------------------------------

    def users(self) -> list[User]:
        """Every user the caller may see, oldest first (read a page at a time: docs/api-paging.md)."""
        return [User(self._session, record) for record in self._session.post_pages("users/query", {}, "users")]

    def invite_user(self, email: str, password: str | None = None) -> dict[str, Any]:
        """Create a user (admins only): `user_id`, and `temporary_password` when no password was given."""
        return self._session.post("users/invite", {"email": email, "password": password})

    def update_password(self, password: str, current_password: str | None = None, *, email: str | None = None,
                        user_id: str | UUID | None = None) -> None:
        """Set the caller's own password (the current one is required); the caller's tokens stop working, so log
        in again with the new password. An administrator sets another user's (it becomes temporary; no current
        password) named by `email` (seed 001's way) or by `user_id` (`User.id`: a user invited before emails were
        bounded, with one over EMAIL_MAX characters that no command takes), one of the two (ValueError, nothing sent,
        for both); their tokens stop working. `User.set_password` names a listed user as `User.deactivate` does."""
        if email is not None and user_id is not None:
            raise ValueError("name the user by email or by user_id, not both: users/update_password takes one of them")
        body = {"password": password, "current_password": current_password, "email": email,
                "user_id": None if user_id is None else str(user_id)}
        self._session.post("users/update_password", {key: value for key, value in body.items() if value is not None})

    def create_connection(self, name: str, type: str, details: dict[str, Any]) -> Connection:
        """Create a data connection (details are kept encrypted); attach it with `add_to_workspace`."""
        created = self._session.post("connections/create", {"name": name, "type": type, "details": details})
        return Connection(self._session, self._session.post("connections/get_by_id", {"id": created["id"]}))

    def connection(self, name: str) -> Connection:
        """A data connection by name, with its whole details. A name means your own connection of that name, else
        the one attached to your workspaces (names are unique per owner and per workspace, not across the
        platform): NotFound when you see none; Conflict (409, naming the workspaces) when you own none and two of
        your workspaces each have another user's of that name attached: `Workspace.connections()` of the one you
        mean lists it (details masked), and `connection_by_id` reads it whole."""
        return Connection(self._session, self._session.post("connections/get", {"name": name}))

    def connection_by_id(self, connection_id: str | UUID) -> Connection:
        """A data connection by its id (`Connection.id`, a UUID), with its whole details: the one a name cannot
        tell apart (`connection` answers Conflict when two of your workspaces each have another user's of that
        name). NotFound when you do not see it (neither yours nor attached to one of your workspaces). ValueError,
        nothing sent, for an id that is not a UUID: the API reads such a value as a name."""
        try:
            wanted = str(UUID(str(connection_id)))
        except ValueError:
            raise ValueError(f"a connection id is a UUID, not {str(connection_id)[:80]!r}: "
                             "Client.connection(name) reads one by name") from None
        return Connection(self._session, self._session.post("connections/get_by_id", {"id": wanted}))

    # --- task runs -------------------------------------------------------------------------------------------

    @staticmethod
    def in_task() -> bool:
        """True inside an orchestration task run (see `railyard_client.tasks` for the environment contract)."""
        return tasks.in_task()

    @staticmethod
    def task_args() -> dict[str, Any]:
        """The arguments of the current task run ({} outside one)."""
        return tasks.task_args()

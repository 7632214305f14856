"""Data connections: named, encrypted settings for external data stores, shared with workspaces."""

from __future__ import annotations

from typing import Any

from railyard_client.errors import Conflict
from railyard_client.resource import Resource


class Connection(Resource):
    """A data connection (its `details` are masked in listings and whole from `Client.connection` and
    `Client.connection_by_id`)."""

    @property
    def id(self) -> str:
        """The connection's UUID."""
        return str(self._record["id"])

    @property
    def name(self) -> str:
        """The connection's name: unique among its owner's connections and among those attached to one workspace,
        not across the platform (another user's connection, or one attached to another of your workspaces, may have
        the same name; `Client.connection(name)` gives your own first)."""
        return str(self._record["name"])

    @property
    def type(self) -> str:
        """What kind of store it reaches (free text, e.g. `BIGQUERY`, `HTTP`)."""
        return str(self._record.get("type", ""))

    @property
    def details(self) -> dict[str, Any]:
        """The connection's settings."""
        return dict(self._record.get("details") or {})

    def add_to_workspace(self, workspace_id: int) -> None:
        """Make the connection visible to a workspace's members."""
        self._session.post("connections/add_to_workspace", {"workspace_id": workspace_id, "connection_id": self.id})

    def remove_from_workspace(self, workspace_id: int) -> None:
        """Remove the connection from a workspace."""
        self._session.post("connections/remove_from_workspace",
                           {"workspace_id": workspace_id, "connection_id": self.id})

    def delete(self) -> None:
        """Delete the connection (refused with Conflict while any workspace uses it). The API deletes by name, and
        a name means the caller's own connection of that name first, else the one attached to their workspaces: when
        it means another connection to you (this one is another user's and you have one of the same name), Conflict,
        and nothing is deleted. Only the owner deletes a connection (an administrator: also one they see)."""
        meant = self._session.post("connections/get", {"name": self.name})
        if str(meant["id"]) != self.id:
            raise Conflict(409, "conflict", f"connections/delete takes a name, and {self.name!r} means another"
                                            f" connection to you ({meant['id']}), not this one ({self.id}): nothing"
                                            " was deleted")
        self._session.post("connections/delete", {"name": self.name})

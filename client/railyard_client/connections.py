"""Data connections: named, encrypted settings for external data stores, shared with workspaces."""

from __future__ import annotations

from typing import Any

from railyard_client.resource import Resource


class Connection(Resource):
    """A data connection (its `details` are masked in listings and whole from `Client.connection`)."""

    @property
    def id(self) -> str:
        """The connection's UUID."""
        return str(self._record["id"])

    @property
    def name(self) -> str:
        """The connection's unique name."""
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
        """Delete the connection (refused with Conflict while any workspace uses it)."""
        self._session.post("connections/delete", {"name": self.name})

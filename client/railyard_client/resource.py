"""What every object the SDK hands out shares: its session and the server's record."""

from __future__ import annotations

from typing import Any

from railyard_client.session import Session


class Resource:
    """A server-side object as the API last described it."""

    def __init__(self, session: Session, record: dict[str, Any]) -> None:
        self._session = session
        self._record = dict(record)

    def to_dict(self) -> dict[str, Any]:
        """The server's record of this object, as JSON-ready data."""
        return dict(self._record)

    def __repr__(self) -> str:
        keys = ("id", "name", "version", "status")
        shown = ", ".join(f"{k}={self._record[k]!r}" for k in keys if self._record.get(k) is not None)
        return f"{type(self).__name__}({shown})"

"""auth's start and stop hooks (services/auth/app.py) run in a unit test: what they need from outside the process
replaced (the admin bootstrap and the password hashing set-up read the database; the revocation feed subscribes on
the bus), the rest of their wiring the real one."""

from __future__ import annotations

from services.auth import app, handlers


class Broker:
    """A broker with no connection (what the hooks read of it)."""

    class config:  # noqa: N801 - the shape of FastStream's broker.config.connection_state.connection
        class connection_state:  # noqa: N801
            connection = None


def start_without_database_or_bus(monkeypatch, feed: type) -> None:
    """The hooks' bootstrap and password hashing set-up do nothing, and `feed` stands for their VerifierFeed."""
    async def nothing(*args) -> None:
        pass

    monkeypatch.setattr(handlers, "bootstrap", nothing)
    monkeypatch.setattr(handlers, "configure_password_hashing", lambda settings: None)
    monkeypatch.setattr(app, "VerifierFeed", feed)

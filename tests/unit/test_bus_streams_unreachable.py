"""The stream bootstrap (shared/bus_streams.py) fails within its time limit, naming NATS and why, when the bus is
away or refuses the identity: it connected with max_reconnect_attempts=0, which nats-py reads as no limit, so a
bus that was down kept `railyard up`'s start for its 60 s and a docker-compose / Kubernetes bootstrap for ever
(the Job never failed, the services waited for streams nobody made)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from shared.settings import NatsSettings, Settings


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect_bounds(monkeypatch) -> list[float]:
    """The time limits the bootstrap puts on its connect to the bus (asyncio.wait_for around the broker's connect)."""
    bounds: list[float] = []
    wait_for = asyncio.wait_for

    def recorded(awaitable, timeout):
        if getattr(getattr(awaitable, "cr_code", None), "co_name", "") == "connect":
            bounds.append(timeout)
        return wait_for(awaitable, timeout)

    monkeypatch.setattr(asyncio, "wait_for", recorded)
    return bounds


def _settings(url: str) -> Settings:
    return Settings().model_copy(update={"nats": NatsSettings(url=url, user="bootstrap", password="s3cret-pw")})


async def test_a_bus_that_is_down_fails_the_bootstrap_within_its_timeout(monkeypatch):
    from shared.bus_streams import BusUnreachable, bootstrap_streams

    url = f"nats://127.0.0.1:{_closed_port()}"
    bounds = _connect_bounds(monkeypatch)
    with pytest.raises(BusUnreachable) as raised:
        await asyncio.wait_for(bootstrap_streams(_settings(url), timeout=1.5), 60)
    # the connect (whose retries of a bus not listening never end by themselves) was bounded by the bootstrap's
    # 1.5 s: the bound given, not the wall time (under 10 s, which a loaded machine could miss); the 60 s guard is
    # against a connect left unbounded
    assert bounds and all(bound <= 1.5 for bound in bounds), bounds
    message = str(raised.value)
    assert url in message and "s3cret-pw" not in message
    assert "connect call failed" in message.lower(), message  # the last attempt's error, not a bare timeout


async def test_a_bus_that_refuses_the_identity_fails_the_bootstrap_at_once():
    """A server answering INFO, then refusing the CONNECT: the reason is the server's, and no retry waits."""
    from shared.bus_streams import BusUnreachable, bootstrap_streams

    connections: list[int] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.write(b'INFO {"server_id":"fake","version":"2.10.22","proto":1,"max_payload":1048576,'
                     b'"auth_required":true,"headers":true}\r\n')
        await writer.drain()
        await reader.readline()  # CONNECT
        writer.write(b"-ERR 'Authorization Violation'\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(BusUnreachable) as raised:
            await asyncio.wait_for(bootstrap_streams(_settings(f"nats://127.0.0.1:{port}"), timeout=15), 60)
        assert "authorization violation" in str(raised.value).lower(), raised.value
        # at once: one CONNECT refused, none tried again until the 15 s ran out (connections counted, not the wall
        # time under 5 s, which a loaded machine could miss)
        assert connections == [1], connections
    finally:
        server.close()


def test_main_prints_one_line_and_exits_1(monkeypatch, capsys):
    from shared import bus_streams

    url = f"nats://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("RAILYARD_NATS__URL", url)
    monkeypatch.setenv("RAILYARD_NATS__USER", "bootstrap")
    monkeypatch.setenv("RAILYARD_NATS__PASSWORD", "s3cret-pw")
    monkeypatch.setattr(bus_streams, "TIMEOUT", 1.0)
    assert bus_streams.main() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("railyard-bus-streams: ") and url in err[0], err


def test_a_refused_stream_ends_the_bootstrap_job_with_one_line(monkeypatch, capsys):
    """JetStream refusing a stream or the log store's consumer (shared.bus names it and JetStream's reason) ends the
    compose / Kubernetes one-shot with that line and exit 1, not a traceback."""
    import shared.bus_streams as bus_streams
    from shared.errors import RailyardError

    async def refused(settings, timeout):
        raise RailyardError("JetStream refused stream EVENTS: subjects overlap with an existing stream")

    monkeypatch.setenv("RAILYARD_NATS__USER", "bootstrap")
    monkeypatch.setenv("RAILYARD_NATS__PASSWORD", "s3cret-pw")
    monkeypatch.setattr(bus_streams, "bootstrap_streams", refused)
    assert bus_streams.main() == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["railyard-bus-streams: JetStream refused stream EVENTS: subjects overlap with an "
                                "existing stream"]

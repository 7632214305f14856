"""An inference while the gateway's connection to NATS is down is a typed 503, as `shared.bus.request` since
db8cb64. nats-py keeps publishes in its reconnect buffer while NATS is away, and once that is full (2 MiB by
default: moments into an outage under load) each publish raises OutboundBufferLimitError; the inference path's own
Requester (services/gateway/bus_request.py) mapped only NoRespondersError and TimeoutError, so every inference of
the outage was a 500 with a stack trace."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from faststream.nats import NatsBroker

from services.gateway import inference
from shared.errors import RailyardError, Unavailable
from tests.local_nats import local_nats_server


async def test_an_inference_while_the_bus_is_away_is_a_typed_503(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(inference, "FIRST_ATTEMPT", 0.2)
    monkeypatch.setattr(inference, "INFER_TIMEOUT", 0.4)
    server = local_nats_server(tmp_path)
    url = server.__enter__()
    broker = NatsBroker(url, max_reconnect_attempts=-1, pending_size=1024)
    runtime = SimpleNamespace(broker=broker, objects=None)  # a 700-byte table never goes by reference
    try:
        await broker.start()
        server.__exit__(None, None, None)  # the server goes away; the client reconnects, buffering
        raised = []
        for _ in range(3):  # the first fill the 1 KiB buffer (timeouts), then publishes are refused
            with pytest.raises(RailyardError) as caught:
                await inference._ask_engine(runtime, "ccfraud-1", b"x" * 700)
            raised.append(caught.value)
        assert isinstance(raised[-1], Unavailable) and (raised[-1].status, raised[-1].code) == (503, "unavailable")
        assert raised[-1].msg == "the gateway's connection to the bus is down; retry shortly"
    finally:
        with contextlib.suppress(Exception):
            server.__exit__(None, None, None)
        with contextlib.suppress(Exception):
            await broker.stop()

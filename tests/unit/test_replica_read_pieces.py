"""An engine replica's bus connections read their socket in pieces of READ_PIECE bytes, not nats-py's 32 KiB
(services/engine/replica.py, docs/performance.md item 95): main() sets nats-py's module value before anything
connects, and nats-py still reads that value where it connects and where it reads."""

from __future__ import annotations

import inspect
import sys

import nats.aio.client

from services.engine import replica


def test_main_sets_the_read_piece_before_it_runs(monkeypatch):
    monkeypatch.setattr(nats.aio.client, "DEFAULT_BUFFER_SIZE", 32768)
    seen = []

    def run(coroutine):
        seen.append(nats.aio.client.DEFAULT_BUFFER_SIZE)  # what the replica's connections will be opened with
        coroutine.close()
        return 0

    import uvloop

    monkeypatch.setattr(uvloop, "run", run)
    monkeypatch.setattr(replica, "load_settings", lambda name: object())
    # main()'s basicConfig would leave a root handler on this test's captured stderr for every later test
    monkeypatch.setattr(replica.logging, "basicConfig", lambda **kwargs: None)
    monkeypatch.setattr(sys, "argv", ["replica", "spec.json", "r0"])
    try:
        replica.main()
    except SystemExit as exit_:
        assert exit_.code == 0
    assert seen == [replica.READ_PIECE]
    assert replica.READ_PIECE > 64 * 1024  # a 1,000-row request (~120 KB) in one read


def test_nats_py_reads_the_module_value_when_it_connects_and_reads():
    # a nats-py that took its read size from elsewhere would leave replicas at 32 KiB without a word
    assert "self._transport.read(DEFAULT_BUFFER_SIZE)" in inspect.getsource(nats.aio.client.Client._read_loop)
    assert "buffer_size=DEFAULT_BUFFER_SIZE" in inspect.getsource(nats.aio.client.Client._connect_to_server)

"""Shared fixtures. The embedded stack is started once per test session, only if a test asks for it."""

from __future__ import annotations

import os

import pytest

from tests import file_seconds
from tests.stack import RunningStack, stack_directory, start_stack


def _share_httpx_default_ssl_context() -> None:
    """One default SSL context for every httpx client this test process makes, instead of one per client.

    httpx builds a context for each Client (and `httpx.post()`/`get()` make a Client per call), loading certifi's CA
    bundle each time: 52-58 ms of CPU per call on 2026-12-02's VM against 3.8 ms with the context shared, for
    thousands of calls to http:// URLs (every poll of a waiting test included) on a suite that keeps both cores busy.
    Each call still gets its own client and connection, as before. Only the default case is shared (verify=True, no
    client certificate); a test passing its own context or certificate gets what it asked for. Services run in their
    own processes and are untouched."""
    try:
        from httpx._transports import default as transports
    except ImportError:  # another httpx layout: every client builds its own context, as httpx does
        return
    build = getattr(transports, "create_ssl_context", None)
    if build is None or getattr(build, "shared_by_tests", False):
        return
    made: dict[tuple, object] = {}

    def create_ssl_context(verify=True, cert=None, trust_env=True):
        if verify is not True or cert is not None:
            return build(verify=verify, cert=cert, trust_env=trust_env)
        key = (trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        if key not in made:
            made[key] = build(verify=verify, cert=cert, trust_env=trust_env)
        return made[key]

    create_ssl_context.shared_by_tests = True
    transports.create_ssl_context = create_ssl_context


_share_httpx_default_ssl_context()


def pytest_collection_modifyitems(config, items) -> None:
    """The slowest files first (tests/file_seconds.py says why); a file's own tests keep their order."""
    seconds = file_seconds.load()
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::", 1)[0], 0.0))


@pytest.fixture(scope="session")
def stack() -> RunningStack:
    with stack_directory() as data_dir:
        running = start_stack(data_dir)
        try:
            running.wait_healthy()
            yield running
        finally:
            running.stop()

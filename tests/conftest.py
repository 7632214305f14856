"""Shared fixtures. The embedded stack is started once per test session, only if a test asks for it."""

from __future__ import annotations

import pytest

from tests.stack import RunningStack, start_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> RunningStack:
    running = start_stack(tmp_path_factory.mktemp("stack") / "data")
    try:
        running.wait_healthy()
        yield running
    finally:
        running.stop()

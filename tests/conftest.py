"""Shared fixtures. The embedded stack is started once per test session, only if a test asks for it."""

from __future__ import annotations

import pytest

from tests.stack import RunningStack, stack_directory, start_stack


@pytest.fixture(scope="session")
def stack() -> RunningStack:
    with stack_directory() as data_dir:
        running = start_stack(data_dir)
        try:
            running.wait_healthy()
            yield running
        finally:
            running.stop()

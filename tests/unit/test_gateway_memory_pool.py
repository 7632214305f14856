"""The gateway's Arrow buffers come from glibc's heap (as the log store's and the replicas'): under mimalloc,
pyarrow's default, it reserved OS memory and faulted it in again request after request."""

from __future__ import annotations

import os
import subprocess
import sys


def _pool(**extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"} | extra
    code = "import services.gateway.__main__, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def test_the_gateway_uses_the_system_allocator_unless_the_operator_chose_one():
    assert _pool() == "system"
    assert _pool(ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"

"""The log store's Arrow buffers come from glibc's heap (docs/performance.md item 19): under mimalloc, pyarrow's
default, the memory of every flush went back to the kernel and was faulted in again as zeroed huge pages."""

from __future__ import annotations

import os
import subprocess
import sys


def _pool(**extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"} | extra
    code = "import services.log_store.__main__, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def test_the_log_store_uses_the_system_allocator_unless_the_operator_chose_one():
    assert _pool() == "system"
    assert _pool(ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"

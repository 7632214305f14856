"""`python -m bench.idle_cpu [seconds]`: CPU per second of each process of an idle embedded stack without
deployments (docs/performance.md items 38-39: the task scheduler's idle cost before/after its wake-up change). Run
from the tree to measure (cwd and PYTHONPATH)."""
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.cpu_account import _cpu, _role, cmdline
from bench.peers.harness import descendants
from tests.stack import stack_env, start_stack

folder = Path(tempfile.mkdtemp(prefix="idlebare-"))
stack = start_stack(folder / "data", stack_env(folder / "data"))
try:
    stack.wait_healthy(180)
    time.sleep(20)
    pids = descendants(stack.process.pid) + [stack.process.pid]
    before = {p: _cpu(p) for p in pids}
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30
    time.sleep(seconds)
    rows = []
    for p in pids:
        try:
            used = _cpu(p) - before[p]
        except Exception:
            continue
        rows.append((used / seconds * 1000, _role(p), cmdline(p)[:90]))
    for ms, role, line in sorted(rows, reverse=True):
        print(f"{ms:7.2f} ms/s  {role:15s} {line}")
    print(f"total {sum(r[0] for r in rows):.1f} ms/s")
finally:
    stack.stop()
    shutil.rmtree(folder, ignore_errors=True)

"""A cancel of a replica's stop (services/deployer/backend.py _stop_replica) that comes in the step the replica
exits. Its wait was asyncio.wait_for, which on Python 3.11 returns the inner result instead of raising
CancelledError when the inner wait ends in the step the cancel comes (bpo-42130). Today's callers reach
_stop_replica through asyncio.gather (_stop_set, close), which raises the cancel its child swallowed, so the test
looks at _stop_replica itself: a caller awaiting it directly went on as if never cancelled."""

from __future__ import annotations

import asyncio
import time

from services.deployer.backend import LocalBackend, Replica


class ExitingProcess:
    """Stands for asyncio.subprocess.Process: wait() ends when exit() is called, as the real one's does when the
    child watcher reports the exit (a future set, the waiting coroutine resumed in the loop's next step)."""

    def __init__(self) -> None:
        self.returncode: int | None = None
        self.pid = 0
        self.signals: list[int] = []
        self.waiting = asyncio.Event()
        self._exited = asyncio.get_running_loop().create_future()

    def send_signal(self, signal: int) -> None:
        self.signals.append(signal)

    def kill(self) -> None:
        raise AssertionError("killed: the stop timeout passed")

    async def wait(self) -> int:
        self.waiting.set()
        return await self._exited

    def exit(self) -> None:
        self.returncode = 0
        self._exited.set_result(0)


def test_a_cancel_that_comes_as_the_replica_exits_is_not_lost(tmp_path):
    async def scenario() -> asyncio.Task:
        backend = LocalBackend(tmp_path, nats_request=None, scale_down_after=60.0, ready_timeout=60.0,
                               stop_timeout=30.0)
        process = ExitingProcess()
        replica = Replica(replica_id="0", process=process, started_at=time.monotonic())
        stopping = asyncio.create_task(backend._stop_replica(replica))
        await asyncio.wait_for(process.waiting.wait(), 5.0)  # SIGTERM sent, it waits for the exit
        for _ in range(3):  # a few steps more: the wait under its bound, whatever wraps it
            await asyncio.sleep(0)
        assert process.signals and not stopping.done()
        process.exit()  # the replica exits ...
        stopping.cancel()  # ... and the caller's bound cancels the stop, in the same step
        await asyncio.wait({stopping}, timeout=5.0)
        assert stopping.done(), "the stop still waits after 5 s"
        return stopping

    stopping = asyncio.run(scenario())
    assert stopping.cancelled(), f"the cancel was lost: the stop returned {stopping.result()!r}"

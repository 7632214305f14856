"""One background task a service owns: started with the service, cancelled and awaited when it stops.

Subclasses implement `_run()` (their loop: what wakes it, what it does, how it survives a failing pass)."""

from __future__ import annotations

import asyncio


class BackgroundTask:
    """Start/stop of one named asyncio task running `self._run()`."""

    task_name = "background"
    _task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        """Cancel the loop and wait until it has let go (a pass in flight is cancelled with it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError

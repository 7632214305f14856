"""`shared.sandbox.run` cancelled as its process ends: the cancel ends the run. Its wait for the process was
asyncio.wait_for, which on Python 3.11 returns the output instead of raising CancelledError when the process's output
comes in the step the cancel does (bpo-42130): the caller went on as if never cancelled (the registry's stop cancels
the conversions under way; one whose convert step ended then went on to its inspect step, another sandboxed run of up
to its wall time, while the stop waited for it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared import sandbox


def test_a_run_cancelled_as_its_process_ends_is_cancelled(monkeypatch, tmp_path: Path):
    async def scenario() -> tuple[asyncio.Task, list[str]]:
        loop = asyncio.get_running_loop()
        said: list[str] = []

        class Ending:
            """A launcher whose output comes back to the loop in the step the run's cancel comes."""

            pid = 0
            returncode: int | None = None

            async def communicate(self, input=None):  # noqa: A002 - asyncio's name
                said.append("communicate")
                output = loop.create_future()
                loop.call_soon(output.set_result, (b"done", b""))
                loop.call_soon(running.cancel)
                self.returncode = 0
                return await output

            async def wait(self) -> int:
                said.append("wait")
                return 0

        async def spawn(spec, **kwargs):
            return Ending()

        monkeypatch.setattr(sandbox, "spawn", spawn)
        spec = sandbox.SandboxSpec(argv=["true"], workdir=tmp_path, limits=sandbox.Limits(wall_seconds=5.0))
        running = asyncio.create_task(sandbox.run(spec))
        await asyncio.wait({running}, timeout=3.0)
        return running, said

    running, said = asyncio.run(scenario())
    assert running.done()
    assert running.cancelled(), f"the cancel was lost: the run answered {running.result()}"
    assert said == ["communicate", "wait"]  # its process waited for (killed first, when still running)

"""The replica's side of a sandboxed worker: a runtime (same `predict` as the others) whose Python step or
bring-your-own-predict model runs in services/engine/worker.py inside shared.sandbox, fed Arrow IPC frames over
pipes.

What happens when the worker misbehaves: the request it was serving fails with an error Railyard writes (the
time limit, the memory limit, a crash; plus a bounded excerpt of the worker's stderr), the worker is killed with
its whole sandbox and a new one is started and loaded in the background; requests that come meanwhile wait for
it. The replica, its other steps and other deployments keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sys
from pathlib import Path

import pyarrow as pa

from services.engine.runtimes import RESOURCE_LIMIT
from services.engine.worker import PREFIX, encode_frame, frame_sizes
from shared import sandbox
from shared.arrow_codec import from_ipc, to_ipc_stream
from shared.errors import InvalidRequest, RailyardError, UpstreamTimeout
from shared.sandbox import Limits, SandboxSpec
from shared.settings import Settings
from shared.traceback_paths import PATH_ROOM, named_files

log = logging.getLogger("railyard.engine.worker")
LOAD_TIMEOUT = 50.0  # under the deployer's 60 s readiness wait, so a hanging load is reported with its reason
STDERR_KEPT = 64 * 1024
EXCERPT = 600
# the worker's whole environment: one thread per library (its process limit counts threads)
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMEXPR_MAX_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
KIND_NAMES = {"python": "the Python step", "custom": "the model"}
# a request's table up to this size is written for the worker on the event loop (~25 us for 1000 rows of 29
# float64, 232 KB); a thread's hop cost the replica ~340 us of CPU a request more than that; larger ones go to one
INLINE_IPC_BYTES = 1 << 20


class WorkerFailed(RailyardError):
    """The worker serving a request crashed or hit a limit (the user's code did, not the platform)."""

    status = 500
    code = "model_worker_failed"


class _Oversized(Exception):
    """A frame announcing a body larger than the worker's memory limit (its code wrote the frame itself)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class _Forged(Exception):
    """A frame header services/engine/worker.py does not write (its code wrote a frame of its own)."""


def _well_formed(header: object, seq: int) -> bool:
    """An answer's header as services/engine/worker.py writes it: {"ok": true} or {"error": {"code", "msg"}}, with
    the request's `seq` (a frame the code forged with the right one leaves the worker's own answer to be read by
    the next request, whose `seq` it does not carry)."""
    if not isinstance(header, dict) or header.get("seq") != seq or type(header["seq"]) is not int:
        return False
    if "error" in header:
        error = header["error"]
        return isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("msg"), str)
    return header.get("ok") is True


def _answer_header(raw: bytes, seq: int) -> dict:
    """The header of the answer to request `seq`, or _Forged. Whatever the parser raises counts as forged: the bytes
    are the user's code's to write, and an array nested 1 MiB deep raises RecursionError, not ValueError."""
    try:
        header = json.loads(raw)
    except Exception:  # noqa: BLE001 - see above
        raise _Forged from None
    if not _well_formed(header, seq):
        raise _Forged
    return header


class SandboxedRuntime:
    """A code runtime ("python" or "custom") served by a sandboxed worker process."""

    def __init__(self, kind: str, path: Path, workdir: Path, settings: Settings, name: str) -> None:
        self.kind = kind
        self.path = path
        self.workdir = workdir
        self.settings = settings
        self.name = name
        self.inputs: list = []
        self.ready = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.stderr = bytearray()
        self.stderr_task: asyncio.Task | None = None
        self.lock = asyncio.Lock()
        self.replacement: asyncio.Task | None = None
        self.replaced = 0
        self.sequence = 0  # each request frame's `seq`, which its answer must carry

    @property
    def limits(self) -> Limits:
        # the CPU limit is a process's whole life: a worker serving for days must not hit it, the wall time
        # of each request bounds a spinning step instead
        return Limits.from_settings(self.settings.sandbox, cpu_seconds=max(self.settings.sandbox.cpu_seconds,
                                                                           7 * 24 * 3600))

    async def start(self) -> None:
        """Start the worker and load the model in it; RailyardError with the reason if it cannot."""
        self.loop = asyncio.get_running_loop()
        if self.path.stat().st_mode & 0o044 != 0o044:  # the sandbox's identity reads the artifact, nothing else
            await asyncio.to_thread(self.path.chmod, 0o644)
        spec = SandboxSpec(argv=[sys.executable, "-m", "services.engine.worker"], workdir=self.workdir,
                           env=dict(WORKER_ENV), readonly_paths=(self.path,), limits=self.limits)
        self.stderr = bytearray()
        self.process = await sandbox.spawn(spec, settings=self.settings)
        self.stderr_task = asyncio.create_task(self._drain_stderr(self.process))
        try:
            header, _ = await self._exchange({"op": "load", "runtime": self.kind, "path": str(self.path)}, b"",
                                             LOAD_TIMEOUT, f"loading {KIND_NAMES[self.kind]}")
        except BaseException:  # whatever ends a start (cancelled by stop(), an error of any kind) leaves no worker
            await self._kill()
            raise
        if "error" in header:
            await self._stderr_settled(0)
            await self._kill()
            error = header["error"]
            cls = InvalidRequest if error["code"] == "invalid_request" else RailyardError
            raise cls(self._with_excerpt(error["msg"], 0), code=error["code"])
        self.ready = True

    async def _drain_stderr(self, process: asyncio.subprocess.Process) -> None:
        buffer = self.stderr  # this worker's own: a replacement gets a new one
        while chunk := await process.stderr.read(65536):
            buffer += chunk
            if len(buffer) > STDERR_KEPT:
                del buffer[:-STDERR_KEPT]

    def _with_excerpt(self, message: str, since: int, buffer: bytearray | None = None) -> str:
        buffer = self.stderr if buffer is None else buffer
        # the end only (with room for a path cut at its start), each traceback file named as users_code_failed names
        # them: a traceback it did not write (a thread's, a crash's, one the user's code printed) showed host paths
        tail = bytes(buffer[since:][-(EXCERPT + PATH_ROOM):]).decode(errors="replace")
        tail = named_files(tail).strip()
        if not tail:
            return message
        lines = " | ".join(line.rstrip() for line in tail[-EXCERPT:].splitlines() if line.strip())
        return f"{message}; its stderr ends with: {lines}"

    async def _exchange(self, header: dict, body: bytes, timeout: float, doing: str) -> tuple[dict, bytes]:
        """Send one frame and read its answer; on a hang or death, kill the worker and raise why."""
        process, buffer, stderr_task = self.process, self.stderr, self.stderr_task
        since = len(buffer)
        replace = header.get("op") == "predict"  # a worker that fails to load is not retried here
        self.sequence += 1
        seq = self.sequence
        try:
            async with asyncio.timeout(timeout):
                process.stdin.write(encode_frame(header | {"seq": seq}, body))
                await process.stdin.drain()
                try:
                    head_size, body_size = frame_sizes(await process.stdout.readexactly(PREFIX.size))
                except ValueError:  # lengths worker.py never writes
                    raise _Forged from None
                if body_size > self.limits.memory_bytes:  # more than the worker could have built: not read in here
                    raise _Oversized(body_size)
                # the process runs the user's code, which can write to the protocol's pipe itself: a header that
                # is not one worker.py writes means a worker no longer to be trusted
                answer = _answer_header(await process.stdout.readexactly(head_size), seq)
                return answer, await process.stdout.readexactly(body_size)
        except _Oversized as oversized:
            await self._kill()
            if replace:
                self._replace_soon()
            raise WorkerFailed(f"{KIND_NAMES[self.kind]} ({self.name}) announced an answer of {oversized.size} bytes, "
                               f"more than its memory limit, while {doing}{self._replaced(replace)}") from None
        except _Forged:
            await self._kill()
            if replace:
                self._replace_soon()
            raise WorkerFailed(f"{KIND_NAMES[self.kind]} ({self.name}) answered with a frame the worker does not "
                               f"write while {doing}{self._replaced(replace)}") from None
        except TimeoutError:
            await self._kill()
            if replace:
                self._replace_soon()
            raise UpstreamTimeout(self._with_excerpt(
                f"{KIND_NAMES[self.kind]} ({self.name}) took longer than {timeout:g} s while {doing} and was "
                "stopped (time limit)", since, buffer), code="model_time_limit") from None
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError, ValueError):
            returncode = await self._kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stderr_task), 2)
            since = min(since, len(buffer))
            said = bytes(buffer[since:]).decode(errors="replace")
            # the launcher's verdict; status 125 and its words are the code's too
            if failure := sandbox.setup_failure(process, said):
                raise failure from None
            if replace:
                self._replace_soon()
            verdict = sandbox.quota_verdict(process)
            hit = sandbox.limit_hit(returncode, said, self.limits, verdict)
            reason = (f"was stopped: {sandbox.describe_limit(hit, self.limits)}" if hit
                      else f"crashed (exit status {returncode})")
            message = self._with_excerpt(f"{KIND_NAMES[self.kind]} ({self.name}) {reason} while {doing}", since,
                                         buffer)
            # the launcher's own verdict (disk quota, its memory cgroup's OOM kill, or a worker that failed after its
            # pids limit refused a fork): the user's code passed a limit, 400; a kill only guessed from the exit
            # status (the host's OOM killer) stays a worker failure
            if verdict in sandbox.VERDICT_LIMITS:
                raise InvalidRequest(message, code=RESOURCE_LIMIT) from None
            raise WorkerFailed(message) from None
        except Exception as exc:  # noqa: BLE001 - anything else leaves the pipes at an unknown point of a frame
            await self._kill()
            if replace:
                self._replace_soon()
            raise WorkerFailed(f"{KIND_NAMES[self.kind]} ({self.name}) broke the worker's protocol while {doing} "
                               f"({type(exc).__name__}){self._replaced(replace)}") from None
        except BaseException:  # cancelled mid-exchange: its answer would be the next request's; the next one starts
            await self._kill()  # a new worker (not here: a cancelled replica may be stopping)
            raise

    @staticmethod
    def _replaced(replace: bool) -> str:
        return "; the worker was replaced" if replace else ""

    async def _kill(self) -> int | None:
        self.ready = False
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                sandbox.kill(process)  # the launcher: its death takes the whole sandbox with it
        return await process.wait()

    async def _replace(self) -> None:
        self.replaced += 1
        log.warning("worker of %s (%s) replaced (%d so far)", self.name, self.kind, self.replaced)
        await self.start()

    def _replace_soon(self) -> None:
        """A new worker starts at once (after the failed request lets go of the lock), so the next request
        does not wait for its startup; if that fails, the next request tries again and reports why."""
        async def replace() -> None:
            async with self.lock:
                if not self.ready:
                    try:
                        await self._replace()
                    except RailyardError:
                        pass
                    except Exception:  # start() killed what it spawned; the next request tries again
                        log.exception("replacing the worker of %s (%s) failed", self.name, self.kind)

        if self.replacement is None or self.replacement.done():
            self.replacement = asyncio.create_task(replace())

    async def _stderr_settled(self, since: int) -> None:
        """The worker writes a traceback to stderr before its error answer: let the drain catch up."""
        for _ in range(20):
            if len(self.stderr) > since:
                await asyncio.sleep(0.002)
                return
            await asyncio.sleep(0.005)

    async def predict_async(self, batch: pa.Table) -> pa.Table:
        async with self.lock:
            if not self.ready:
                try:
                    await self._replace()
                except RailyardError as exc:
                    # the platform's failure (the host cannot build a sandbox) stays the platform's: 503
                    failed = sandbox.SandboxUnavailable if isinstance(exc, sandbox.SandboxUnavailable) else WorkerFailed
                    raise failed(f"{KIND_NAMES[self.kind]} ({self.name}) could not be restarted: {exc.msg}") from None
            body = await asyncio.to_thread(to_ipc_stream, batch) if batch.get_total_buffer_size() > INLINE_IPC_BYTES \
                else to_ipc_stream(batch)
            since = len(self.stderr)
            # a header that is not what worker.py writes fails the request and replaces the worker in _exchange
            header, output = await self._exchange({"op": "predict"}, body, self.settings.sandbox.wall_seconds,
                                                  "serving a request")
            if "error" in header:
                error = header["error"]
                await self._stderr_settled(since)
                if error["code"] == RESOURCE_LIMIT:  # what it left behind (forked processes, a heap) goes too
                    await self._kill()
                    self._replace_soon()
                cls = InvalidRequest if error["code"] in ("invalid_request", RESOURCE_LIMIT) else RailyardError
                raise cls(self._with_excerpt(error["msg"], since), code=error["code"])
            try:  # every buffer checked (Arrow reads a forged length as a table, which crashes its reader later),
                # and no more decoded than the worker's own memory limit could have held
                return from_ipc(output, max_decoded_bytes=self.limits.memory_bytes, validate=True)
            except RailyardError as exc:
                raise await self._untrusted(f"answered with a table that is not valid ({exc.msg})") from None
            except Exception as exc:  # noqa: BLE001 - the bytes are the user's code's: whatever Arrow raises on them
                raise await self._untrusted(f"answered with a table that is not valid ({type(exc).__name__})") \
                    from None

    async def _untrusted(self, what: str) -> WorkerFailed:
        """The worker broke the protocol (its code wrote a frame of its own): it is killed and replaced (the next
        answer on its pipe would be the next request's), and the request fails saying so."""
        await self._kill()
        self._replace_soon()
        return WorkerFailed(f"{KIND_NAMES[self.kind]} ({self.name}) {what}; the worker was replaced")

    def predict(self, batch: pa.Table) -> pa.Table:
        """For the replica's worker threads: runs the exchange on the replica's event loop."""
        return asyncio.run_coroutine_threadsafe(self.predict_async(batch), self.loop).result()

    async def stop(self) -> None:
        """Close the worker and its working directory. A replacement under way is cancelled first: it would start
        a worker after this returned, which nobody stops (its launcher is in a session of its own), and whose
        process outlives the event loop."""
        if self.replacement is not None:
            self.replacement.cancel()
            await asyncio.gather(self.replacement, return_exceptions=True)
            self.replacement = None
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(Exception):
                self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 2)
            except TimeoutError:
                await self._kill()
        self.ready = False
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)

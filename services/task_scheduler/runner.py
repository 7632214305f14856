"""One task run: `main.py` of an orchestration in the sandbox, its output captured line by line.

The run's process starts through shared/sandbox.py with exactly the environment below, its own working
directory (the zip is unpacked there, inside the sandbox), the network to the gateway only, and CPU, memory and
wall-time limits. stdout and stderr are read in chunks and cut into lines (a line longer than MAX_LINE is stored
in pieces tagged P, as the CRI log format does; whole lines are tagged F); lines are written to PostgreSQL in
small batches as they come, so `get_logs_for_run` reads a run while it is going. A write failing on a transient
database error is retried with backoff (tenacity), its lines kept in order under the same sequence numbers; a write
the database does not answer is given up at FLUSH_ATTEMPT_SECONDS and counts as such an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

from shared import db
from shared.data_errors import database_retryable
from shared.pg_text import no_nul
from shared.sandbox import (
    Limits,
    Network,
    SandboxSpec,
    describe_limit,
    limit_hit,
    quota_verdict,
    setup_failure,
    spawn,
    stderr_excerpt,
)
from shared.traceback_paths import FILE_ROOM, cut_outside_files, named_files

log = logging.getLogger("railyard.task_scheduler.runner")

T = TypeVar("T")

MAX_LINE = 16 * 1024
KILLED = "killed (task/kill)"
FLUSH_SECONDS = 0.2
FLUSH_WAIT = 30.0  # seconds the end of a run waits for a log flush under way
FLUSH_TRIES = 5  # attempts of a periodic flush; lines it could not write wait for the next one
FLUSH_ATTEMPT_SECONDS = 5.0  # one attempt's bound (a server that stopped answering): TimeoutError, tried again
FINAL_FLUSH_SECONDS = 30.0  # how long the end of a run retries writing its last lines before it drops them
FLUSH_BACKOFF = 0.1  # the first wait between two attempts, doubled each time up to FLUSH_BACKOFF_MAX
FLUSH_BACKOFF_MAX = 2.0
PUMP_WAIT = 10.0  # seconds the end of a run waits for the rest of its output (a child may hold the pipes open)
TERM_GRACE = 5.0  # seconds a stopped run's process (a kill, its timeout, a stop) has after its SIGTERM before SIGKILL
CHUNK = 64 * 1024


def transient(exc: BaseException) -> bool:
    """Whether a retry may get past `exc`: our own bound on a database step (a TimeoutError: `bounded`, a flush's
    attempt), or what every command's 503 rule says may answer if asked again (shared/data_errors.py
    database_retryable): the connection lost or refused, the server restarting or out of connections, a statement
    prepared before another process's migration changed its table (InvalidCachedStatementError: asyncpg retries it
    itself outside a transaction only, and drops the pool's statement cache with it, so the next attempt prepares it
    again; before session 39 a run's end recorded then, finish_run reading `SELECT * FROM runs` in its transaction,
    was not retried and the run stayed `running` until the lost-run step failed it), and a deadlock or serialization
    failure (the transaction rolled back whole: every step retried here may be run again, append_logs skipping lines
    already stored, finish_run finding a run already ended). Not a data error (a line PostgreSQL refuses stays
    refused: that batch is dropped with a WARNING). Before session 40 it was a tuple (TRANSIENT) that took any OSError
    (a file's, not asyncpg's) for a database failing, and retried it for END_RECORD_SECONDS in vain; a protocol
    violation or a role's statement_timeout (57014) likewise: data_errors says why those are not asked again."""
    return isinstance(exc, TimeoutError) or database_retryable(exc)


# Runs inside the sandbox, in the run's working directory: unpack the orchestration, run its entrypoint as
# __main__ with its own folder first on sys.path. argv: zip path, entrypoint path inside the zip.
_BOOTSTRAP = r"""
import os, runpy, sys, zipfile
archive, entrypoint = sys.argv[1:3]
with zipfile.ZipFile(archive) as z:
    z.extractall(".")
path = os.path.abspath(entrypoint)
sys.argv = [path]
sys.path[0] = os.path.dirname(path)
os.chdir(os.path.dirname(path))
runpy.run_path(path, run_name="__main__")
"""


@dataclass
class RunPlan:
    """Everything one run needs, resolved before it starts."""

    run_id: str
    workdir: Path
    zip_path: Path
    entrypoint: str
    python: str
    env_dir: Path | None
    env: dict[str, str]
    timeout: int
    memory_bytes: int
    cpu_seconds: int
    disk_bytes: int = 4096 << 20  # the sandbox's disk quota (TaskSettings.run_disk_mb)
    disk_files: int = 50_000  # and its file quota (TaskSettings.run_disk_files)
    at_once: int = 1  # runs its scheduler may run at once (TaskSettings.max_runs_per_process): its share of the CPUs
    # the owner's number (store.relay_number): its relay's address to a loopback gateway, no other owner's; None: one
    # from a digest of its id (SandboxSpec.source_number)
    owner_number: int | None = None


@dataclass
class RunOutcome:
    status: str  # success | failure
    exit_code: int | None
    reason: str | None
    # main.py was started (False: the run was killed before its setup ended; scheduler._supervise puts one the stop
    # killed back in the queue)
    ran: bool = True


LogSink = Callable[[list[tuple[datetime, str, bool, str]]], Awaitable[None]]


@dataclass
class LogWriter:
    """Buffers captured lines and writes them every FLUSH_SECONDS; stops keeping lines past max_bytes."""

    sink: LogSink
    max_bytes: int
    pending: list[tuple[datetime, str, bool, str]] = field(default_factory=list)
    kept_bytes: int = 0
    truncated: bool = False
    stderr_tail: deque = field(default_factory=lambda: deque(maxlen=40))
    # the run's working folder (execute sets it): a traceback's file under it is named by its path in the orchestration
    roots: tuple[str, ...] = ()

    def add(self, stream: str, partial: bool, line: str) -> None:
        # without its NULs (PostgreSQL refuses them in text): a run printing one lost every line it printed and
        # ended as `failure` ("could not be started: CharacterNotInRepertoireError") though main.py exited 0;
        # the stderr tail, which a run's reason quotes, is NUL-free with it
        line = no_nul(line)
        # a traceback's files named without the host's folders (the run's working folder in the data directory, the
        # orchestration's environment, the Python installation), as a request's error names them (docs/security.md)
        line = named_files(line, self.roots)
        if stream == "stderr":
            self.stderr_tail.append(line)
        if self.truncated:
            return
        self.kept_bytes += len(line) + 1
        if self.kept_bytes > self.max_bytes:
            self.truncated = True
            line, partial, stream = f"[railyard: log cut at {self.max_bytes} bytes]", False, "stderr"
        self.pending.append((datetime.now(UTC), stream, partial, line))

    async def flush(self, *, final: bool = False) -> None:
        """Write the pending lines. A `transient` error is retried with exponential backoff, FLUSH_TRIES attempts (the
        final flush: for FINAL_FLUSH_SECONDS); a batch still not written, or whose flush was cancelled, goes back in
        front of `pending` and the error is raised: the next flush writes it with the lines since, in order. The sink
        numbers a batch's lines only once they are written (scheduler.py), so every attempt writes them under the
        same sequence numbers, and an attempt whose INSERT committed but whose answer was lost is not stored twice
        (store.append_logs skips lines already stored). Any other error drops the batch (a retry cannot fix it):
        LinesDropped."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        written: list[bool] = []  # an attempt's write stored the batch (the sink numbered it): never put back
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_delay(FINAL_FLUSH_SECONDS) if final else stop_after_attempt(FLUSH_TRIES),
                    wait=wait_exponential(multiplier=FLUSH_BACKOFF, max=FLUSH_BACKOFF_MAX),
                    retry=retry_if_exception(transient), reraise=True):
                with attempt:
                    await self._attempt(batch, written)
        except asyncio.CancelledError:
            if not written:
                self.pending[:0] = batch
            raise
        except Exception as exc:
            if not transient(exc):
                raise LinesDropped(f"{len(batch)} log lines dropped: {type(exc).__name__}: {exc}") from exc
            if not written:
                self.pending[:0] = batch
            raise

    async def _attempt(self, batch: list[tuple[datetime, str, bool, str]], written: list[bool]) -> None:
        """One write of `batch`, given up after FLUSH_ATTEMPT_SECONDS (TimeoutError: `transient`, tried again). Before,
        an attempt had no bound of its own: one on a connection whose server stopped answering (stopped, a network
        partition) held the flusher, the retries' stop counting only attempts that ended. The write runs as a task of
        its own, waited for with asyncio.wait (neither asyncio.wait_for, which on Python 3.11 loses a cancel that
        comes as the write ends, bpo-42130, nor asyncio.timeout, which waits for the cancelled write to end): at the
        bound, or when the flush is cancelled, it is cancelled and left to end in the background. A query cancelled
        on a connection whose server stopped answering ends only once the server answers asyncpg's cancel request
        and the pool's reset, which have no timeout of their own (services/deployer/handlers.py `_answered_within`
        found it first). A write left so either stored nothing (the sink numbers a batch only once its write
        returned, in the write's own task) or stored its lines under the numbers the next attempt writes again,
        which store.append_logs skips. `written` gets True when the write stored the batch, even in the step the
        flush was cancelled: that batch must not be written again under new numbers."""
        write = db.begin(self.sink(batch))  # its connection cut if left and the server does not answer
        try:
            done, _ = await asyncio.wait({write}, timeout=FLUSH_ATTEMPT_SECONDS)
        finally:
            if not write.done():
                db.leave(write)
            elif not write.cancelled() and write.exception() is None:
                written.append(True)
        if not done:
            raise TimeoutError(f"the database did not answer a log write within {FLUSH_ATTEMPT_SECONDS:.3g} s")
        write.result()


async def bounded(step: Coroutine[Any, Any, T] | asyncio.Future[T], seconds: float, what: str) -> T:
    """`step` (a coroutine, or a task shared.db.begin made) waited for at most `seconds` (shared.db.within: past it,
    or when the caller is cancelled, it is cancelled and left to end in the background, for the reasons
    LogWriter._attempt says), TimeoutError naming `what`. Its result otherwise, or its exception."""
    return await db.within(seconds, step, lambda: TimeoutError(f"{what}: no answer within {seconds:.3g} s"))


class LinesDropped(Exception):
    """A batch of log lines the database refused for a reason a retry cannot fix (not `transient`)."""


async def _pump(reader: asyncio.StreamReader, stream: str, writer: LogWriter) -> None:
    """Lines as they come; a line not ended that is longer than MAX_LINE in pieces. A piece's end is chosen once
    FILE_ROOM bytes past it have come (_piece_end: what may follow a file there), or once FLUSH_SECONDS have passed
    since the line went over MAX_LINE, with what has come: a run printing over 16 KiB of a line and then sleeping, or
    going on a few bytes at a time (a progress bar's '\r' updates), had none of it stored until it printed 6 KiB more
    or ended (3e4fbc32, review). The read is a task then, waited for again after the cut, never cancelled and read
    anew (a second read while the first still waits is a RuntimeError)."""
    loop = asyncio.get_running_loop()
    buffer = b""
    read: asyncio.Future[bytes] | None = None  # a read still waited for when a piece was cut without it
    over: float | None = None  # when the line not ended went over MAX_LINE
    try:
        while True:
            if len(buffer) > MAX_LINE:
                over = loop.time() if over is None else over
                read = read or asyncio.ensure_future(reader.read(CHUNK))
                done, _ = await asyncio.wait({read}, timeout=max(0.0, over + FLUSH_SECONDS - loop.time()))
                if not done:
                    while len(buffer) > MAX_LINE:
                        end = _piece_end(buffer)
                        writer.add(stream, True, buffer[:end].decode(errors="replace"))
                        buffer = buffer[end:]
                    over = None
                    continue
                chunk, read = read.result(), None
            elif read is not None:
                chunk, read = await read, None
            else:
                chunk = await reader.read(CHUNK)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                _emit(writer, stream, line)
            if lines:
                over = None
            while len(buffer) > MAX_LINE + FILE_ROOM:  # a piece's end is chosen once what may follow it has come
                end = _piece_end(buffer)
                writer.add(stream, True, buffer[:end].decode(errors="replace"))
                buffer = buffer[end:]
                over = None
    finally:
        if read is not None:
            read.cancel()  # the pump cancelled (the run's end): nothing reads this stream again
    if buffer:
        _emit(writer, stream, buffer)


def _emit(writer: LogWriter, stream: str, line: bytes) -> None:
    line = line.rstrip(b"\r")
    while len(line) > MAX_LINE:
        end = _piece_end(line)
        writer.add(stream, True, line[:end].decode(errors="replace"))
        line = line[end:]
    writer.add(stream, False, line.decode(errors="replace"))


def _piece_end(line: bytes) -> int:
    """Where the next piece of a line longer than MAX_LINE ends: at MAX_LINE bytes, or before, where no file the
    line names is cut (traceback_paths.cut_outside_files; read as latin-1, a byte a character). Each piece is named
    alone (LogWriter.add): cut at MAX_LINE whatever stood there, a host path across two pieces was named in neither
    and showed whole (session 43). A cut inside a UTF-8 character (its continuation bytes after it) is moved back to
    the character's first byte, at most 3 bytes: each piece is decoded alone, and the character was stored as two or
    three U+FFFD. Only to a lead byte (not ASCII): no file's match starts or ends there, so none is cut."""
    end = cut_outside_files(line[:MAX_LINE + FILE_ROOM].decode("latin-1"), MAX_LINE)
    back = end
    while back > max(end - 3, 1) and 0x80 <= line[back] < 0xC0:
        back -= 1
    return back if back < end and line[back] >= 0xC0 else end


def sandbox_spec(plan: RunPlan) -> SandboxSpec:
    readonly = (plan.zip_path,) + ((plan.env_dir,) if plan.env_dir else ())
    return SandboxSpec(
        argv=[plan.python, "-u", "-c", _BOOTSTRAP, str(plan.zip_path), plan.entrypoint],
        workdir=plan.workdir,
        env=plan.env,
        readonly_paths=readonly,
        limits=Limits(memory_bytes=plan.memory_bytes, cpu_seconds=plan.cpu_seconds, processes=128,
                      open_files=1024, file_size_bytes=1 << 30, wall_seconds=plan.timeout,
                      disk_bytes=plan.disk_bytes, disk_files=plan.disk_files),
        network=Network.GATEWAY_ONLY,
        source_key=plan.env.get("ORCH_OWNER_ID", ""),  # the gateway counts an owner's runs as one source
        source_number=plan.owner_number,  # ... at an address of its own (shared.sandbox.relay_source)
        at_once=plan.at_once,  # the numeric libraries' threads: the CPUs shared among the runs (sandbox.thread_env)
    )


async def execute(plan: RunPlan, writer: LogWriter, kill: asyncio.Event) -> RunOutcome:
    """Run the plan to its end (exit, a limit, the timeout, or `kill` being set); the logs go to `writer`.
    SandboxUnavailable when the launcher says it could not build the sandbox: main.py never ran."""
    spec = sandbox_spec(plan)
    # as the run's process sees it: the folder given, and its real path (os.getcwd() resolves a symlinked data
    # directory)
    writer.roots = tuple(dict.fromkeys((str(plan.workdir.absolute()), str(plan.workdir.resolve()))))
    process = await spawn(spec, stdin=asyncio.subprocess.DEVNULL)
    pumps = [asyncio.create_task(_pump(process.stdout, "stdout", writer)),
             asyncio.create_task(_pump(process.stderr, "stderr", writer))]

    stop_flushing = asyncio.Event()

    async def flusher() -> None:
        # stopped between two flushes, never inside one: a flush cancelled while its batch was being written lost the
        # batch (taken out of `pending`, not stored), so a run whose end came during a periodic flush kept no lines of
        # it, all of them for a short run (a fresh-clone CI on a slow machine: a successful run with no logs)
        while not stop_flushing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_flushing.wait(), FLUSH_SECONDS)
            if not stop_flushing.is_set():
                try:
                    await writer.flush()
                except LinesDropped as exc:  # the next lines are written still
                    log.warning("run %s: %s", plan.run_id, exc)
                except Exception as exc:  # `transient` (flush drops the rest): its lines stay pending, the next
                    # flush (or the final one) writes them
                    log.warning("run %s: writing its log lines failed (%s: %s), tried again at the next flush",
                                plan.run_id, type(exc).__name__, exc)

    flushing = asyncio.create_task(flusher())
    waited = asyncio.create_task(process.wait())
    killed = asyncio.create_task(kill.wait())
    started = time.monotonic()
    stopped_by: str | None = None
    try:
        done, _ = await asyncio.wait({waited, killed}, timeout=plan.timeout, return_when=asyncio.FIRST_COMPLETED)
        if waited not in done:
            stopped_by = "killed" if killed in done else "timeout"
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)  # the launcher kills the whole sandbox
            try:
                await asyncio.wait_for(asyncio.shield(waited), TERM_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await waited
        try:
            await asyncio.wait_for(asyncio.gather(*pumps, return_exceptions=True), PUMP_WAIT)
        except TimeoutError:  # was raised out of execute: no final flush, and the run "could not be started"
            log.warning("run %s: its output was still open %.0f s after its process ended; the rest is not read",
                        plan.run_id, PUMP_WAIT)
    finally:
        killed.cancel()
        stop_flushing.set()
        for pump in pumps:
            pump.cancel()
        with contextlib.suppress(ProcessLookupError):
            if process.returncode is None:
                process.kill()
        await asyncio.wait({flushing}, timeout=FLUSH_WAIT)  # the flush under way, if any, ends
        if not flushing.done():
            flushing.cancel()  # its batch goes back to `pending`, for the final flush
            await asyncio.wait({flushing})
        # whatever happened above: the last lines (a failed run's traceback) are written, retried for a while; a
        # failure to write them is logged, never the run's outcome (it was "could not be started" though it ran)
        try:
            async with asyncio.timeout(2 * FINAL_FLUSH_SECONDS):  # an attempt that hangs is bounded too
                await writer.flush(final=True)
        except LinesDropped as exc:
            log.warning("run %s: %s", plan.run_id, exc)
        except Exception as exc:  # `transient` (flush drops the rest)
            log.warning("run %s: its last %d log lines are lost: writing them failed for %.0f s or more (%s: %s)",
                        plan.run_id, len(writer.pending), FINAL_FLUSH_SECONDS, type(exc).__name__, exc)
    code = process.returncode
    said = stderr_excerpt("\n".join(writer.stderr_tail).encode())
    if failure := setup_failure(process, said):  # the launcher's verdict; status 125 and its words are main.py's too
        raise failure
    if stopped_by == "killed":
        return RunOutcome("failure", code, KILLED)
    if stopped_by == "timeout":
        return RunOutcome("failure", code, f"timed out after {plan.timeout} s (the task's timeout)")
    if code == 0:
        return RunOutcome("success", 0, None)
    hit = limit_hit(code, said, spec.limits, quota_verdict(process))
    if hit:
        return RunOutcome("failure", code, describe_limit(hit, spec.limits))
    elapsed = time.monotonic() - started
    return RunOutcome("failure", code, f"main.py exited with status {code} after {elapsed:.1f} s")


def cleanup(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)


def run_env(*, task_id: str, run_id: str, orch_sha: str, owner_id: str, workspace_id: int, gateway_url: str,
            token: str, args: dict) -> dict[str, str]:
    """What a run's process gets, and nothing else (see docs/orchestrations.md)."""
    return {
        "TASK_ID": task_id,
        "TASK_RUN_ID": run_id,
        "ORCH_SHA": orch_sha,
        "ORCH_OWNER_ID": owner_id,
        "RAILYARD_CLIENT_URL": gateway_url,
        "RAILYARD_CLIENT_TOKEN": token,
        "RAILYARD_CLIENT_WORKSPACE": str(workspace_id),
        "TASK_ARGS": json.dumps(args),
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
    }


def base_python() -> str:
    return sys.executable

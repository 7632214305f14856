"""The registry's checks and conversions of uploaded files, run in the sandbox (shared/sandbox.py).

Unpickling a user's file runs the user's code (a pickle's `__reduce__` is a call of their choosing), and even
an ONNX or zip check parses hostile bytes. So `services.registry.artifacts` runs through `shared.sandbox.run`:
no network, its own /proc and pid namespace, a scrubbed environment, another identity, only its working
directory writable (the uploaded file is copied into it), and limits on memory, CPU, processes, file size and
wall time.

What the worker prints is no longer trusted once it has unpickled anything: the user's code could have printed
it. So the registry reads only `{"ok": ..., "error": ...}` of a bounded size from it, and when the worker ends
without an answer the message is written here, from how it ended (which limit), with at most a short excerpt
of its stderr. A user never sees raw exception text of their own code at length, and the sandbox has nothing
secret to put in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.settings import RegistrySettings

log = logging.getLogger("railyard.registry")

SEE = "see docs/security.md#conversions"
MAX_ANSWER_BYTES = 64 * 1024  # the worker's JSON answer (two Arrow schemas and a sentence)
MAX_ERROR_CHARS = 500  # an error sentence from the worker, as the user sees it
MAX_STDERR_EXCERPT = 300  # the end of the worker's stderr added to a message written here

SUBJECTS = {
    "sklearn": "the uploaded sklearn pickle", "xgboost": "the uploaded XGBoost model",
    "onnx": "the uploaded ONNX model", "python": "the uploaded Python step", "custom": "the uploaded BYOP archive",
}

LIMIT_REASONS = {
    "memory": "it needed more memory than the registry allows ({memory_mb} MiB)",
    "cpu": "it used more CPU time than the registry allows ({cpu_seconds} s)",
    "wall_time": "it did not finish within {wall_seconds:g} s",
    "file_size": "it wrote a file larger than the registry allows ({file_size_mb} MiB)",
    "processes": "it started more processes or threads than the registry allows ({processes})",
    "disk_bytes": "the sandbox's disk quota of {disk_mb} MiB was exceeded (what a check or conversion may write)",
    "disk_files": "the sandbox's file quota of {disk_files} files was exceeded (files and directories a check or "
                  "conversion may write)",
}


@dataclass(frozen=True)
class WorkerEnd:
    """How a worker run ended, whatever ran it."""

    returncode: int
    stdout: bytes
    stderr_tail: str
    limit_hit: str | None


def clean_text(text: str, limit: int) -> str:
    """One line of printable text, at most `limit` characters."""
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    flat = " ".join(flat.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _limit_values(settings: RegistrySettings) -> dict[str, Any]:
    cpu_seconds = settings.worker_cpu_seconds or int(settings.worker_timeout) + 1
    return {"memory_mb": settings.worker_memory_mb, "cpu_seconds": cpu_seconds,
            "wall_seconds": settings.worker_timeout, "file_size_mb": settings.worker_file_size_mb,
            "processes": settings.worker_processes, "disk_mb": settings.worker_disk_mb,
            "disk_files": settings.worker_disk_files}


def answer(settings: RegistrySettings, framework: str, end: WorkerEnd, *, stderr_allowed: bool) -> dict[str, Any]:
    """The worker's answer, or a Railyard-written failure: `{"ok": False, "error": sentence}`."""
    subject = SUBJECTS.get(framework, "the uploaded file")
    if end.limit_hit is None and end.returncode == 0:
        lines = end.stdout[-MAX_ANSWER_BYTES:].decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (ValueError, IndexError):
            result = None
        if isinstance(result, dict) and result.get("ok") is True:
            return result
        if isinstance(result, dict) and result.get("ok") is False and isinstance(result.get("error"), str):
            return {"ok": False, "error": clean_text(result["error"], MAX_ERROR_CHARS)}
    if end.limit_hit in LIMIT_REASONS:
        reason = LIMIT_REASONS[end.limit_hit].format(**_limit_values(settings))
    elif end.returncode < 0:
        reason = f"its process was ended by signal {signal.Signals(-end.returncode).name}" \
            if -end.returncode in signal.valid_signals() else "its process was ended by a signal"
    else:
        reason = "its process ended without an answer"
    message = f"{subject} could not be checked or converted: {reason}; {SEE}"
    excerpt = clean_text(end.stderr_tail[-MAX_STDERR_EXCERPT:], MAX_STDERR_EXCERPT) if stderr_allowed else ""
    if excerpt:
        message += f" (the end of its output: {excerpt})"
    log.info("artifact worker for %s ended with %s, limit %s", framework, end.returncode, end.limit_hit)
    return {"ok": False, "error": message}


def _argv(args: tuple[str, ...]) -> list[str]:
    # -I: not the working directory (which the user's code may have written) on sys.path, no PYTHON* variables
    return [sys.executable, "-I", "-m", "services.registry.artifacts", *args]


WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


async def run_worker(settings: RegistrySettings, framework: str, workdir: Path, *args: str) -> dict[str, Any]:
    """Run `python -m services.registry.artifacts <args>` in the sandbox with `workdir` (which holds the
    uploaded file) as its only writable directory; its answer or a Railyard-written failure."""
    try:
        from shared import sandbox
    except ImportError:  # a tree without the sandbox module: the limited subprocess below
        sandbox = None
    values = _limit_values(settings)
    if sandbox is None:
        end = await _run_unsandboxed(settings, workdir, args)
        return answer(settings, framework, end, stderr_allowed=False)
    limits = sandbox.Limits(
        memory_bytes=values["memory_mb"] << 20, cpu_seconds=values["cpu_seconds"],
        processes=values["processes"], open_files=256, file_size_bytes=values["file_size_mb"] << 20,
        wall_seconds=values["wall_seconds"], disk_bytes=values["disk_mb"] << 20, disk_files=values["disk_files"])
    spec = sandbox.SandboxSpec(argv=_argv(args), workdir=workdir, env=dict(WORKER_ENV), limits=limits,
                               network=sandbox.Network.NONE)
    result = await sandbox.run(spec)
    end = WorkerEnd(result.returncode, result.stdout, result.stderr_tail, result.limit_hit)
    return answer(settings, framework, end, stderr_allowed=True)


async def _run_unsandboxed(settings: RegistrySettings, workdir: Path, args: tuple[str, ...]) -> WorkerEnd:
    """Only for a tree without shared/sandbox.py: rlimits and a scrubbed environment, no isolation; its stderr
    is never shown (it could hold what the code read from this host)."""
    values = _limit_values(settings)
    memory, cpu, size = values["memory_mb"] << 20, values["cpu_seconds"], values["file_size_mb"] << 20

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    process = await asyncio.create_subprocess_exec(
        *_argv(args), cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, preexec_fn=limits, start_new_session=True,
        env={**WORKER_ENV, "PATH": "/usr/bin:/bin"})
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), settings.worker_timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        return WorkerEnd(process.returncode, b"", "", "wall_time")
    tail = stderr.decode(errors="replace")[-2000:]
    hit = None
    if process.returncode == -signal.SIGXCPU:
        hit = "cpu"
    elif process.returncode == -signal.SIGXFSZ or "File too large" in tail:
        hit = "file_size"
    elif "MemoryError" in tail:
        hit = "memory"
    return WorkerEnd(process.returncode, stdout, tail, hit)

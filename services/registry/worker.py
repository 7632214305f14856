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

import json
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import sandbox
from shared.settings import RegistrySettings
from shared.traceback_paths import PATH_ROOM, named_files

log = logging.getLogger("railyard.registry")

SEE = "see docs/security.md#conversions"
MAX_ANSWER_BYTES = 64 * 1024  # the worker's JSON answer (two Arrow schemas and a sentence)
MAX_ERROR_CHARS = 500  # an error sentence from the worker, as the user sees it
MAX_STDERR_EXCERPT = 300  # the end of the worker's stderr added to a message written here

SUBJECTS = {
    "sklearn": "the uploaded sklearn pickle", "xgboost": "the uploaded XGBoost model",
    "onnx": "the uploaded ONNX model", "python": "the uploaded Python step", "custom": "the uploaded BYOP archive",
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


def worker_limits(settings: RegistrySettings) -> sandbox.Limits:
    """The sandbox limits of a check or conversion (RAILYARD_REGISTRY__WORKER_*)."""
    return sandbox.Limits(
        memory_bytes=settings.worker_memory_mb << 20,
        cpu_seconds=settings.worker_cpu_seconds or int(settings.worker_timeout) + 1,
        processes=settings.worker_processes, open_files=256, file_size_bytes=settings.worker_file_size_mb << 20,
        wall_seconds=settings.worker_timeout, disk_bytes=settings.worker_disk_mb << 20,
        disk_files=settings.worker_disk_files)


def answer(settings: RegistrySettings, framework: str, end: WorkerEnd, *, stderr_allowed: bool) -> dict[str, Any]:
    """The worker's answer, or a Railyard-written failure: `{"ok": False, "error": sentence}`."""
    return answer_and_verdict(settings, framework, end, stderr_allowed=stderr_allowed)[0]


def answer_and_verdict(settings: RegistrySettings, framework: str, end: WorkerEnd, *,
                       stderr_allowed: bool) -> tuple[dict[str, Any], bool]:
    """`answer`, and whether it is the worker's verdict on the bytes themselves: it printed an answer and ended
    within its limits, not by running out of memory (`"limit"` in its answer). Only a verdict is what the same
    bytes get again; a limit, a signal or no answer can depend on the host's load at the time. (Meaningful for a
    check only: a conversion's worker ran the user's code, which could have printed anything.)"""
    subject = SUBJECTS.get(framework, "the uploaded file")
    if end.limit_hit is None and end.returncode == 0:
        lines = end.stdout[-MAX_ANSWER_BYTES:].decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (ValueError, IndexError):
            result = None
        if isinstance(result, dict) and result.get("ok") is True:
            return result, True
        if isinstance(result, dict) and result.get("ok") is False and isinstance(result.get("error"), str):
            return {"ok": False, "error": clean_text(result["error"], MAX_ERROR_CHARS)}, "limit" not in result
    if end.limit_hit in sandbox.LIMIT_REASONS:
        reason = sandbox.describe_limit(end.limit_hit, worker_limits(settings), by="the registry")
    elif end.returncode < 0:
        reason = f"its process was ended by signal {signal.Signals(-end.returncode).name}" \
            if -end.returncode in signal.valid_signals() else "its process was ended by a signal"
    else:
        reason = "its process ended without an answer"
    message = f"{subject} could not be checked or converted: {reason}; {SEE}"
    # each traceback file named as a request's error names it (shared/traceback_paths.py): the work folder, the data
    # directory and the installation showed in it; read with room before the end, so a path cut there is named too
    tail = named_files(end.stderr_tail[-(MAX_STDERR_EXCERPT + PATH_ROOM):])
    excerpt = clean_text(tail[-MAX_STDERR_EXCERPT:], MAX_STDERR_EXCERPT) if stderr_allowed else ""
    if excerpt:
        message += f" (the end of its output: {excerpt})"
    log.info("artifact worker for %s ended with %s, limit %s", framework, end.returncode, end.limit_hit)
    return {"ok": False, "error": message}, False


def _argv(args: tuple[str, ...]) -> list[str]:
    # -I: not the working directory (which the user's code may have written) on sys.path, no PYTHON* variables
    return [sys.executable, "-I", "-m", "services.registry.artifacts", *args]


WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


async def run_worker(settings: RegistrySettings, framework: str, workdir: Path, *args: str) -> dict[str, Any]:
    """Run `python -m services.registry.artifacts <args>` in the sandbox with `workdir` (which holds the
    uploaded file) as its only writable directory; its answer or a Railyard-written failure."""
    return (await run_worker_verdict(settings, framework, workdir, *args))[0]


async def run_worker_verdict(settings: RegistrySettings, framework: str, workdir: Path,
                             *args: str) -> tuple[dict[str, Any], bool]:
    """`run_worker`, and whether its answer is the worker's verdict on the bytes (`answer_and_verdict`)."""
    spec = sandbox.SandboxSpec(argv=_argv(args), workdir=workdir, env=dict(WORKER_ENV),
                               limits=worker_limits(settings), network=sandbox.Network.NONE)
    result = await sandbox.run(spec)
    end = WorkerEnd(result.returncode, result.stdout, result.stderr_tail, result.limit_hit)
    return answer_and_verdict(settings, framework, end, stderr_allowed=True)

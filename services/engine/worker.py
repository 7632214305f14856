"""The engine's sandboxed worker: `python -m services.engine.worker`, started by a replica through
shared.sandbox.spawn, serves one Python step or bring-your-own-predict model so that users' code never runs in
the replica's process (which holds the bus connection and the object-store credentials).

It talks to its replica over its stdin and stdout in frames: an 12-byte prefix (the lengths of a JSON header and
of a body, big-endian u32 and u64), the header, then the body (an Arrow IPC stream, or nothing). The replica
sends `{"op": "load", "runtime": "python"|"custom", "path": ...}` once, then `{"op": "predict"}` with a table for
each request, each with a number `seq` of its own; every frame gets one answer, `{"ok": true}` (with the output
table) or `{"error": {"code", "msg"}}`, with the request's `seq`: the user's code, which runs in this process, can
write a frame of its own to the pipe, and the replica refuses an answer whose `seq` is not the request's.
Anything the user's code prints goes to stderr (fd 1 is pointed there before it runs), so it cannot corrupt the
frames; the replica keeps a bounded tail of that stderr for its error messages.

The worker knows nothing of Railyard's settings: its environment holds only thread-count variables.
"""

from __future__ import annotations

import gc
import json
import os
import struct
import sys
from pathlib import Path
from typing import BinaryIO

PREFIX = struct.Struct(">IQ")
MAX_HEADER = 1 << 20
MAX_BODY = 1 << 31  # a frame above this is a broken peer, not a table


def encode_frame(header: dict, body: bytes = b"") -> bytes:
    """One frame: prefix, JSON header, body."""
    head = json.dumps(header).encode()
    return PREFIX.pack(len(head), len(body)) + head + body


def frame_sizes(prefix: bytes) -> tuple[int, int]:
    """(header length, body length) of a frame prefix; ValueError when they cannot be a frame."""
    head, body = PREFIX.unpack(prefix)
    if head > MAX_HEADER or body > MAX_BODY:
        raise ValueError("frame too large")
    return head, body


def read_frame(stream: BinaryIO) -> tuple[dict, bytes] | None:
    """The next frame of a blocking stream, or None at its end."""
    prefix = stream.read(PREFIX.size)
    if len(prefix) < PREFIX.size:
        return None
    head, body = frame_sizes(prefix)
    return json.loads(stream.read(head)), stream.read(body)


def freeze_loaded_objects() -> None:
    """Once the step is loaded: move what exists (pandas', pyarrow's and the step's own objects) to the permanent
    generation so collections stop re-scanning them. The thresholds stay Python's defaults, unlike a replica's
    (shared.collector): the code collected here is the user's, whose reference cycles (a kept exception holding
    a large array) must be freed as often as in any Python process, not every 50,000 allocations, or they pile up
    to the worker's memory limit."""
    gc.collect()
    gc.freeze()


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer frames until the replica closes the pipe."""
    from services.engine.runtimes import ByopRuntime, PythonStepRuntime
    from shared.arrow_codec import from_ipc, to_ipc_stream
    from shared.errors import RailyardError

    worker = os.getpid()
    runtime = None
    while (frame := read_frame(requests)) is not None:
        header, body = frame
        output = b""
        try:
            if header.get("op") == "load":
                if header["runtime"] == "python":
                    import services.engine.step_tables  # noqa: F401 - pandas too: once here, not in the first request
                path = Path(header["path"])
                runtime = PythonStepRuntime(path) if header["runtime"] == "python" else ByopRuntime(path, Path.cwd())
                runtime.load()
                freeze_loaded_objects()  # the libraries' and the step's objects: not re-scanned per request
            elif header.get("op") == "predict" and runtime is not None:
                output = to_ipc_stream(runtime.predict(from_ipc(body)))
            else:
                raise RailyardError(f"the worker cannot {header.get('op')!r} now")
            answer: dict = {"ok": True}
        except RailyardError as exc:
            answer = {"error": {"code": exc.code, "msg": exc.msg}}
        except Exception as exc:  # conversion of what the code returned, not the code itself
            print(f"railyard worker: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            answer = {"error": {"code": "invalid_request",
                                "msg": f"the model's output could not be converted ({type(exc).__name__})"}}
        if os.getpid() != worker:  # a process the user's code forked got here: it must not answer
            os._exit(0)
        answer["seq"] = header.get("seq")
        replies.write(encode_frame(answer, output))
        replies.flush()


def main() -> None:
    requests = open(os.dup(0), "rb")  # noqa: SIM115 - the protocol's pipes, for the worker's life
    replies = open(os.dup(1), "wb")  # noqa: SIM115
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)  # print() in users' code lands in stderr, never in a frame
    sys.stdout = sys.stderr
    serve(requests, replies)


if __name__ == "__main__":
    main()

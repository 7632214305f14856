"""What FastStream logs about its JetStream pull consumers that is not an error (shared/bus.py attaches it to every
service's FastStream logger).

A pull consumer's loop (FastStream 0.7, `PullStreamSubscriber._consume_pull`) fetches with a timeout and treats
`nats.errors.TimeoutError` as "no message in time". Since nats-py 2.15 (nats-io/nats.py#934) `fetch` also raises
the builtin `TimeoutError` when the fetch's deadline runs out between its two pull requests, which happens under
load; FastStream does not catch that one, so the loop's task ends, and FastStream's task supervisor logs an ERROR
with the traceback ("Task-N raised an exception, retrying...") and starts the loop again. Nothing was lost: no
message was taken. nats-io/nats.py#1008 (open) restores the nats exception; until a release has it, the supervisor's
record of that timeout is dropped here, as are its "callback for Task-N is being executed..." lines (one per loop
that ends: at each such retry and for every subscriber at stop), which tell an operator nothing. Any other
exception of the loop is still logged, with its traceback.
"""

from __future__ import annotations

import logging
from types import TracebackType

CONSUME_LOOP = "_consume_pull"


def _in_pull_loop(traceback: TracebackType | None) -> bool:
    while traceback is not None:
        code = traceback.tb_frame.f_code
        if code.co_name == CONSUME_LOOP and "faststream" in code.co_filename:
            return True
        traceback = traceback.tb_next
    return False


class PullTimeoutRetries(logging.Filter):
    """Drops FastStream's supervisor records for a pull loop's fetch timeout, and its task-callback lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return not (isinstance(exc, TimeoutError) and _in_pull_loop(exc.__traceback__))
        message = record.msg if isinstance(record.msg, str) else ""
        return not (message.startswith("callback for ") and message.endswith(" is being executed..."))


PULL_TIMEOUT_RETRIES = PullTimeoutRetries()

"""`railyard dead-letters replay` stops waiting on a bus call (the durable's info, the publish) as soon as the
server's permissions violation for that call's subject arrives (shared.dead_letters._unless_refused, read by
shared.raw_bus.PublishRefusals as a service's broker reads its own), raised as the server sent it: the server
drops the message and answers nothing, so the call could only time out. A violation for another subject, or one
that arrived before the call, leaves the call to answer or time out as before."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest

from shared.dead_letters import _BusErrors, _unless_refused

SUBJECT = "events.model.uploaded"
DURABLE_INFO = "$JS.API.CONSUMER.INFO.DEAD_LETTERS.replay"  # the durable's info, a subject with capitals


def violation(subject: str) -> Exception:
    """A publish's permissions violation as nats-py hands it to the error callback: its parser lowercases the whole
    -ERR line, the subject in it too (nats/protocol/parser.py), and the client strips its quotes and says "nats: "."""
    server_sent = f"'Permissions Violation for Publish to \"{subject}\"'"
    return nats.errors.Error(f"nats: {server_sent.lower().strip(chr(39))}")


def test_a_violation_for_the_calls_subject_ends_its_wait_at_once():
    async def scenario() -> None:
        errors = _BusErrors()
        never = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.05, errors.add, violation(DURABLE_INFO))  # delivered lowercased
        with pytest.raises(Exception, match="permissions violation for publish to") as refused:
            await asyncio.wait_for(_unless_refused(never, errors, DURABLE_INFO), 5)
        assert refused.value is errors[-1]  # not wait_for's TimeoutError: the violation ended the wait
        await asyncio.sleep(0)
        assert never.cancelled()

    asyncio.run(scenario())


def test_another_subjects_violation_or_an_earlier_one_leaves_the_call_to_answer():
    async def scenario() -> None:
        errors = _BusErrors()
        errors.add(violation(SUBJECT))  # before the call: not this call's
        answer = asyncio.get_running_loop().create_future()

        def later() -> None:
            errors.add(violation("events.model.other"))
            asyncio.get_running_loop().call_later(0.05, answer.set_result, "acked")

        asyncio.get_running_loop().call_later(0.05, later)
        assert await asyncio.wait_for(_unless_refused(answer, errors, SUBJECT), 5) == "acked"

    asyncio.run(scenario())


def test_the_calls_own_error_is_raised_as_before():
    async def scenario() -> None:
        async def times_out() -> None:
            raise TimeoutError("nats: timeout")

        with pytest.raises(TimeoutError, match="nats: timeout"):
            await _unless_refused(times_out(), _BusErrors(), SUBJECT)

    asyncio.run(scenario())

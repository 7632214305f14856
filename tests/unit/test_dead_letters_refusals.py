"""`railyard dead-letters replay` stops waiting on a bus call (the durable's info, the publish) as soon as the
server's permissions violation for that call's subject arrives (shared.dead_letters._unless_refused, read by
shared.raw_bus.PublishRefusals as a service's broker reads its own), raised as the server sent it: the server
drops the message and answers nothing, so the call could only time out. A violation for another subject, or one
that arrived before the call, leaves the call to answer or time out as before."""

from __future__ import annotations

import asyncio

import pytest

from shared.dead_letters import _BusErrors, _unless_refused

SUBJECT = "events.model.uploaded"


def violation(subject: str) -> Exception:
    return Exception(f'nats: permissions violation for publish to "{subject}"')


def test_a_violation_for_the_calls_subject_ends_its_wait_at_once():
    async def scenario() -> None:
        errors = _BusErrors()
        never = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.05, errors.add, violation(SUBJECT.upper()))
        with pytest.raises(Exception, match="permissions violation for publish to") as refused:
            await asyncio.wait_for(_unless_refused(never, errors, SUBJECT), 5)
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

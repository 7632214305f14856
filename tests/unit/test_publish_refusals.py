"""shared.raw_bus.PublishRefusals (a service's broker's, make_broker; `railyard dead-letters`' own connection's) reads
a permissions violation whatever the case of its subject: nats-py's parser lowercases the whole -ERR line, so a
publish to "$JS.API.CONSUMER.INFO.EVENTS.x" is refused as "$js.api.consumer.info.events.x". Before, the broker's
copy matched the subject exactly: a call to a subject with capitals (a JetStream API request) waited its whole
timeout, and `refused_within` never said it was refused."""

from __future__ import annotations

import asyncio

import pytest

from shared.bus import PublishRefusals, PublishRefused

SUBJECT = "$JS.API.CONSUMER.INFO.EVENTS.auth-model-uploaded"


def violation(subject: str) -> Exception:
    """What nats-py's error callback gets: the server's -ERR, lowercased (nats/protocol/parser.py)."""
    return Exception(f'nats: permissions violation for publish to "{subject}"'.lower())


def test_a_lowercased_violation_ends_the_wait_of_a_subject_with_capitals():
    async def scenario() -> None:
        refusals = PublishRefusals()
        never = asyncio.get_running_loop().create_future()
        sent = violation(SUBJECT)
        asyncio.get_running_loop().call_later(0.05, refusals.note, sent)
        with pytest.raises(PublishRefused) as refused:
            await asyncio.wait_for(refusals.unless_refused(never, SUBJECT), 5)
        assert refused.value.violation is sent  # the server's own error, which `railyard dead-letters` prints
        assert SUBJECT in refused.value.msg
        await asyncio.sleep(0)
        assert never.cancelled()
        assert refusals.refused_within(SUBJECT, 60)

    asyncio.run(scenario())


def test_only_a_publish_violation_is_a_refusal():
    """A subscription's violation (a reply inbox the identity may not read) or another error refuses no subject; the
    answer-or-violation race itself is tests/unit/test_dead_letters_refusals.py's (the same class under the CLI)."""
    refusals = PublishRefusals()
    refusals.note(Exception('nats: permissions violation for subscription to "_inbox.x.y"'))
    refusals.note(Exception("nats: stale connection"))
    assert not refusals.refused_within("_INBOX.x.y", 60) and not refusals.refused_within("_inbox.x.y", 60)

"""A re-sent inference request is answered from its first attempt (services/engine/answers.py): while it runs (a
future the repeat waits on) or, when it was slow, for a while after."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from services.engine.answers import SLOW, RepeatedRequests
from shared.logrecords import ATTEMPT, REQUEST_ID


@dataclass
class Msg:
    headers: dict = field(default_factory=dict)


def test_a_repeat_while_the_first_attempt_runs_gets_its_answer():
    async def main():
        answers = RepeatedRequests()
        first, repeat = Msg({REQUEST_ID: "a"}), Msg({REQUEST_ID: "a", ATTEMPT: "2"})
        assert answers.earlier(first) is None  # now the running attempt
        waiting = answers.earlier(repeat)
        assert isinstance(waiting, asyncio.Future) and answers.earlier(repeat) is waiting
        answers.answered(first, b"body", {"h": "v"}, 0.01)
        assert await waiting == (b"body", {"h": "v"})
        assert answers.earlier(Msg({REQUEST_ID: "a"})) is None  # answered fast: not kept, a new attempt runs

    asyncio.run(main())


def test_a_slow_answer_is_kept_for_a_later_repeat_and_a_fast_one_without_a_repeat_leaves_nothing():
    async def main():
        answers = RepeatedRequests()
        assert answers.earlier(Msg({REQUEST_ID: "slow"})) is None and answers.earlier(Msg({REQUEST_ID: "fast"})) is None
        answers.answered(Msg({REQUEST_ID: "slow"}), b"s", {}, SLOW + 0.5)
        answers.answered(Msg({REQUEST_ID: "fast"}), b"f", {}, 0.001)
        assert answers.earlier(Msg({REQUEST_ID: "slow", ATTEMPT: "2"})) == (b"s", {})
        assert answers.running == {} and list(answers.kept) == ["slow"]
        assert answers.earlier(Msg()) is None and answers.running == {}  # no id: nothing to remember

    asyncio.run(main())


def test_a_failed_first_attempt_lets_its_waiting_repeat_go():
    async def main():
        answers = RepeatedRequests()
        first = Msg({REQUEST_ID: "x"})
        answers.earlier(first)
        waiting = answers.earlier(Msg({REQUEST_ID: "x", ATTEMPT: "2"}))
        answers.forget(first)
        assert waiting.cancelled() and answers.running == {}
        answers.earlier(Msg({REQUEST_ID: "y"}))
        answers.forget(Msg({REQUEST_ID: "y"}))  # nobody waited: forgotten all the same
        assert answers.running == {}

    asyncio.run(main())

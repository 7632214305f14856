"""An ML-backend deployment's predict looks up its shadow challenger's labeling alongside its champion's (one
registry round trip, not a second one after the engine answers), and a failed challenger lookup still counts only
where it did before: when the challenger answered."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from services.monitoring import ml_backend_predictions, predictions
from shared.errors import Conflict, Forbidden
from shared.messages.monitoring import ModelVersionRef

CHAMPION = ModelVersionRef(name="squares", version="1", sha="a" * 64)
RIVAL = ModelVersionRef(name="rival", version="1", sha="b" * 64)
OTHER = ModelVersionRef(name="other", version="2", sha="c" * 64)
FOUND = ml_backend_predictions.BackendLabeling(control="found", kind="detection", labels=["cat"], value="image")
SPOTTED = ml_backend_predictions.BackendLabeling(control="spotted", kind="detection", labels=["cat"], value="image")


def view(*challengers: ModelVersionRef) -> Any:
    step = ({"ShadowDeploy": {"champion": CHAMPION.model_dump(), "challengers": [c.model_dump() for c in challengers]}}
            if challengers else {"ModelInference": {"models": [CHAMPION.model_dump()]}})
    return SimpleNamespace(route=SimpleNamespace(workspace_id=7), definition={"steps": [step]})


class Registry:
    """ml_backend_predictions.labeling's stand-in: each model's lookup waits until its gate opens; records which
    started, how many were in flight at once, and which were cancelled."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.started: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.cancelled: list[str] = []
        self.gates = {name: asyncio.Event() for name in answers}
        self.released = False

    def release(self) -> None:
        """Every lookup, now and later, answers at once."""
        self.released = True
        for gate in self.gates.values():
            gate.set()

    async def labeling(self, deps: Any, token: str | None, workspace_id: int, model: ModelVersionRef) -> Any:
        assert workspace_id == 7
        self.started.append(model.name)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            gate = self.gates.setdefault(model.name, asyncio.Event())
            if self.released:
                gate.set()
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(model.name)
            raise
        finally:
            self.in_flight -= 1
        answer = self.answers[model.name]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def ask(registry: Registry, deployment: Any) -> Any:
    """_ml_backend, with the registry answering once both lookups could have started."""
    task = asyncio.ensure_future(predictions._ml_backend(None, "token", deployment))
    for _ in range(5):
        await asyncio.sleep(0)
    registry.release()
    return await task


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch):
    def make(answers: dict[str, Any]) -> Registry:
        fake = Registry(answers)
        monkeypatch.setattr(ml_backend_predictions, "labeling", fake.labeling)
        return fake
    return make


def test_the_challengers_labeling_is_looked_up_alongside_the_champions(registry):
    async def main() -> None:
        fake = registry({"squares": FOUND, "rival": SPOTTED})
        backend, challenger = await ask(fake, view(RIVAL))
        assert backend == FOUND
        assert fake.most_in_flight == 2, "the two lookups ran one after the other"
        fake.started.clear()
        # the engine's answer came from the same challenger: no second lookup
        assert await predictions._challenger_labeling(None, "token", view(RIVAL), RIVAL, challenger) == SPOTTED
        assert fake.started == []
        # a swap served another version whose challenger differs: that one is asked for then
        fake.answers["other"] = None
        assert await predictions._challenger_labeling(None, "token", view(RIVAL), OTHER, challenger) is None
        assert fake.started == ["other"]

    asyncio.run(main())


def test_a_failed_challenger_lookup_is_raised_only_where_the_challenger_answered(registry):
    async def main() -> None:
        fake = registry({"squares": FOUND, "rival": Forbidden("not yours")})
        backend, challenger = await ask(fake, view(RIVAL))  # the champion's part stands
        assert backend == FOUND
        with pytest.raises(Forbidden, match="not yours"):
            await predictions._challenger_labeling(None, "token", view(RIVAL), RIVAL, challenger)

    asyncio.run(main())


def test_a_failed_champion_lookup_fails_the_predict_and_stops_the_challengers(registry):
    async def main() -> None:
        fake = registry({"squares": Conflict("invalid config"), "rival": SPOTTED})
        task = asyncio.ensure_future(predictions._ml_backend(None, "token", view(RIVAL)))
        for _ in range(5):
            await asyncio.sleep(0)
        assert sorted(fake.started) == ["rival", "squares"]
        fake.gates["squares"].set()  # the champion's lookup fails while the challenger's still waits
        with pytest.raises(Conflict, match="invalid config"):
            await task
        await asyncio.sleep(0)
        assert fake.cancelled == ["rival"]

    asyncio.run(main())


def test_without_a_shadow_or_as_no_backend_nothing_more_is_kept(registry):
    async def main() -> None:
        fake = registry({"squares": FOUND})
        assert await ask(fake, view()) == (FOUND, None)
        assert fake.started == ["squares"]
        fake = registry({"squares": None, "rival": SPOTTED})
        task = asyncio.ensure_future(predictions._ml_backend(None, "token", view(RIVAL)))
        for _ in range(5):
            await asyncio.sleep(0)
        fake.gates["squares"].set()  # no ML backend: its challenger's lookup, still waiting, is stopped
        assert await task == (None, None)
        await asyncio.sleep(0)
        assert fake.cancelled == ["rival"]

    asyncio.run(main())


def test_an_image_configured_champions_challenger_is_looked_up_alone_and_a_failure_kept(registry):
    """An ONNX champion (image configuration) is no ML backend: only its challenger is looked up (an ML backend is
    then sent the image as a task), and a failed lookup is kept for where the challenger answered, not raised."""
    from tests.image_models import detector_image_config

    async def main() -> None:
        configured = view(RIVAL)
        configured.definition["steps"][0]["ShadowDeploy"]["image"] = detector_image_config()
        fake = registry({"rival": SPOTTED})
        assert await ask(fake, configured) == (None, predictions._ChallengerLabeling(RIVAL, SPOTTED))
        assert fake.started == ["rival"]
        fake = registry({"rival": Forbidden("not yours")})
        backend, challenger = await ask(fake, configured)
        assert backend is None and isinstance(challenger.outcome, Forbidden)
        alone = view()
        alone.definition["steps"][0]["ModelInference"]["image"] = detector_image_config()
        fake = registry({})
        assert await ask(fake, alone) == (None, None) and fake.started == []  # no challenger: nothing looked up

    asyncio.run(main())

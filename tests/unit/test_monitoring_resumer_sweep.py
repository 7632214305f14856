"""The continuous-deployment resume sweep (services/monitoring/continuous.py DeliveryResumer.sweep): its four steps
(resume_deliveries, resume_swaps, prune_sent_deploys, prune_finished_conversions) each run whatever the one before it
raised, a failure raised at the end (the Sweeper logs it); a cancel (the service stopping: BackgroundTask.stop) ends
the sweep there. Before, the steps were chained by `finally`: a stop during the deliveries' resumes ran the swaps'
resumes, whose deploys are waited for up to deploy_wait (305 s), and the prune, while the service stopped."""

from __future__ import annotations

import asyncio

import pytest

from services.monitoring import continuous


def steps(monkeypatch, fail: tuple[str, ...] = (), hang: str | None = None) -> tuple[list[str], asyncio.Event]:
    """The four steps stood in: what ran, in order; `fail` raise, `hang` waits for ever (after setting the event)."""
    ran: list[str] = []
    hanging = asyncio.Event()

    def step(name: str):
        async def run(deps) -> None:
            ran.append(name)
            if name == hang:
                hanging.set()
                await asyncio.Event().wait()
            if name in fail:
                raise RuntimeError(f"{name} failed")
        return run

    for name in ("resume_deliveries", "resume_swaps", "prune_sent_deploys", "prune_finished_conversions"):
        monkeypatch.setattr(continuous, name, step(name))
    return ran, hanging


def test_a_stop_during_the_deliveries_resumes_ends_the_sweep(monkeypatch):
    async def scenario() -> list[str]:
        ran, hanging = steps(monkeypatch, hang="resume_deliveries")
        sweep = asyncio.create_task(continuous.DeliveryResumer(None).sweep())
        await hanging.wait()
        sweep.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(sweep, 5)
        return ran

    assert asyncio.run(scenario()) == ["resume_deliveries"]  # was: then resume_swaps and prune_sent_deploys


@pytest.mark.parametrize("fail", [("resume_deliveries",), ("resume_swaps",), ("resume_deliveries", "resume_swaps")],
                         ids=["deliveries", "swaps", "both"])
def test_a_failed_step_does_not_hold_the_next_ones_back(monkeypatch, fail):
    ran, _ = steps(monkeypatch, fail=fail)
    with pytest.raises(RuntimeError, match="failed"):
        asyncio.run(continuous.DeliveryResumer(None).sweep())
    assert ran == ["resume_deliveries", "resume_swaps", "prune_sent_deploys", "prune_finished_conversions"]

"""When a stalled continuous delivery or swap is taken up again (services/monitoring/continuous.py stale_swap,
ContinuousDeps.stale_swap): past the deploy's own wait of the settings in use (shared.settings.deploy_wait) and the
requests before it. It was a fixed 300 s, below deploy_wait (305 s at the defaults, 1300 s with
deployer.ready_timeout 600): another process could take up (resume_deliveries, resume_swap) a delivery or swap whose
first process still waited for its deploy, and send a second deploy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.monitoring import continuous
from shared.settings import Settings, deploy_wait


def settings(**changes: float) -> Settings:
    s = Settings()
    for key, value in changes.items():
        section, name = key.split("__")
        setattr(getattr(s, section), name, value)
    return s


@pytest.mark.parametrize("changes", [
    {}, {"deployer__ready_timeout": 600.0}, {"nats__request_timeout": 30.0}, {"registry__worker_timeout": 1800.0},
    {"deployer__stop_timeout": 120.0},
], ids=["defaults", "ready_timeout 600", "request_timeout 30", "worker_timeout 1800", "stop_timeout 120"])
def test_a_stalled_swap_is_taken_up_only_after_its_deploy_could_still_answer(changes):
    s = settings(**changes)
    stale = continuous.stale_swap(s)
    # the deploy's wait and the requests a delivery or swap makes before it (STALE_MARGIN of them)
    assert stale >= deploy_wait(s) + 5 * s.nats.request_timeout, (stale, deploy_wait(s))


def test_the_default_is_the_default_settings():
    """ContinuousDeps.stale_swap's default (STALE_SWAP, what tests and a deps made without settings use) is
    stale_swap of the default settings: 345 s (deploy_wait 305 s and 8 request timeouts of 5 s)."""
    assert continuous.STALE_SWAP > deploy_wait(Settings()) == 305.0  # was 300 s
    assert continuous.STALE_SWAP == continuous.stale_swap(Settings()) == 345.0
    deps = continuous.ContinuousDeps(base=None, verify=None, events_committed=lambda: None, max_task_timeout=3600)
    assert deps.stale_swap == continuous.STALE_SWAP


def test_the_service_uses_its_settings():
    """The service's deps (continuous._deps) take stale_swap of the settings it runs with."""
    s = settings(deployer__ready_timeout=600.0)
    runtime = SimpleNamespace(settings=s, db=None, broker=None,
                              extras={"deps": None, "verifier": SimpleNamespace(verify=None)})
    deps = continuous._deps(runtime)
    assert deps.stale_swap == continuous.stale_swap(s) > deploy_wait(s) == 1300.0

"""The words of a 503 for a deployment that serves no request now, in the deployer's route's terms (starting, or
failing to start: a crash loop), shared by every service that answers one: the gateway's inference (a request no
replica took) and monitoring's predict on images. Here, not in the gateway, so monitoring says what the gateway says
without importing the gateway."""

from __future__ import annotations

import math

from shared.errors import Unavailable
from shared.messages.deployer import DeploymentRoute

CRASH_LOOP = "deployment_crash_loop"


class CrashLoop(Unavailable):
    """The deployment's replicas all keep exiting soon after they start (the deployer's route says `Error`): a 503
    whose Retry-After is the deployer's wait before it starts one again (services/gateway/errors.py)."""

    code = CRASH_LOOP

    def __init__(self, msg: str, *, retry_after: float) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


def not_serving(route: DeploymentRoute, reason_shown: bool = False) -> Unavailable:
    """The 503 for a deployment whose route is not Running, in the words of the deployer's route: starting, or failing
    to start (a crash loop: code `deployment_crash_loop`). Before 2026-12-05 a crash loop read 'deployment X is
    starting; retry shortly' for as long as it lasted (the deployer said Starting). The loop's reason (the last line of
    a replica's log: a user's step's exception, the platform's paths and hosts) is said to a workspace member or a run
    (`reason_shown`), who may read it in status/get_deployment too, not to an inference token: those are handed to
    external applications, which get the same code, words without the reason, and Retry-After."""
    name = route.name
    if route.status != "Error":
        return Unavailable(f"deployment {name!r} is {route.status.lower()}; retry shortly")
    wait = route.retry_after if route.retry_after is not None and math.isfinite(route.retry_after) else None
    when = "a replica is starting again now" if wait is None else \
        f"the deployer starts a replica again in {max(1, math.ceil(wait))} s"  # as Retry-After
    return CrashLoop(f"deployment {name!r} is failing to start: its engine replicas keep exiting soon after they start "
                     f"(crash loop){': ' + (route.reason or 'no reason given') if reason_shown else ''}. Retry later "
                     f"({when}); if it keeps failing, "
                     + ("fix the model or the pipeline and redeploy (its replicas: status/get_deployment)"
                        if reason_shown else "a member of its workspace sees why in status/get_deployment"),
                     retry_after=min(max(1.0, wait or 1.0), 3600.0))

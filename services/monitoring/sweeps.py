"""How monitoring's background sweeps wait at rest (docs/monitoring.md, "At rest"; docs/performance.md, item 61).

The training starter, the feedback exporter and the training reference's computer each look when their next work is
due, at most IDLE_WAIT apart: the commands of their own process that make work wake them at once (a trigger, a
review, a loop set up or turned on, a reference asked for), what another process made (its own sweeper is woken) or
left (it stopped) is found within IDLE_WAIT. They looked every 2 s, so an idle stack's monitoring never let its
PostgreSQL connection idle the 30 s after which the pool closes it. A look nobody woke after a long wait closes the
connection it opened (`Sweeper.quiet_pool`), and so does each sweeper's first look, just after the start (it looks at
once for what a stopped process left, and its connection outlived the start's own close of idle ones by 30 s): both
are shared.background.Sweeper's, for every sweeper with a quiet_pool."""

from __future__ import annotations

IDLE_WAIT = 60.0
"""The longest wait between a sweeper's looks: what another process made or left is found within it."""


def until(due: float | None, soonest: float) -> float:
    """The wait until work due in `due` seconds (None: nothing due): at least `soonest` (work due now that this look
    did not take is looked for again then, not at once), at most IDLE_WAIT."""
    return IDLE_WAIT if due is None else min(max(due, soonest), IDLE_WAIT)

"""How long the log store's two consumer loops wait for work once idle: ingestion's (handlers.py, `Ingestor`) and
the deployment announcements' (deployments.py, `Deployments`). One definition both import (handlers.py imports
deployments.py, so neither could define it for the other without the two drifting apart, as they could when each
had its own)."""

IDLE_FETCH = 5.0
"""Seconds an idle consumer loop waits for its next message in one fetch of one message, which the server answers as
soon as one is published: ingestion's when nothing is gathering or held (`Ingestor.idle_fetch`; before, it fetched
with `flush_interval`, 0.25 s, as its timeout, waking four times a second with nothing to do), the announcements'
when caught up and owing nothing (before session 32 it fetched with FETCH_WAIT, a pull request and a wake-up every
second). Bounded, not for ever: a pull request the server forgets (a reconnect) is renewed within it, and the
announcements' `caught_up` moves on at each end of a wait (a batch is judged unknown only UNKNOWN_WAIT, an hour,
after it came: the seconds do not matter). A stop ends either wait at once."""

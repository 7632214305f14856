"""The embedded stack's servers and services die with their supervisor (shared/embedded/stack.py, Child.start: the
kernel's parent-death signal, asked for in the child between fork and exec). The window this closes is the child's
own start: a supervisor that dies while a child is between its fork and its exec."""

from __future__ import annotations

import signal

import pytest

from tests.unit.parent_death import assert_the_child_dies_with_its_parent

SUPERVISING = """
import signal, time
from shared.embedded import stack

work, program, stop = Path(sys.argv[1]), sys.argv[3], int(sys.argv[5])

# up()'s own handlers, which a forked child has until its exec: they only set the supervisor's flag
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, lambda signum, frame: None)
child = stack.Child("a-server", [program], dict(os.environ), work / "child.log", stop_signal=stop, slice_us=1000)
child.start()
time.sleep(60)
"""


# the services' stop signal in one window, PostgreSQL's (a fast shutdown) in the other: the handler a child must drop
# before the exec is its own stop signal's
@pytest.mark.parametrize("when, stop", [("before", signal.SIGTERM), ("after", signal.SIGINT)],
                         ids=["before-sigterm", "after-sigint"])
def test_a_child_whose_supervisor_dies_before_its_exec_does_not_run_on(tmp_path, when, stop):
    """A supervisor killed before the child asked for its death signal (the kernel then sends nothing to a child
    already reparented), or after it asked and before the exec (the supervisor's handler, still the child's then,
    took the signal), left the server or service running with no supervisor, for good. Now the child takes its stop
    signal's default action (SIGINT: PostgreSQL's), asks, then checks its parent, and exits when the supervisor is
    gone. Before, the stand-in server ran on in both windows (`when` the supervisor dies)."""
    assert_the_child_dies_with_its_parent(tmp_path, SUPERVISING, when, str(int(stop)), child="child",
                                          parent="supervisor")

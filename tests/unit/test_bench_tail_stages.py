"""bench/tail_stages.py (docs/performance.md item 104): each request's window on the load generator's clock is cut at
the gateway's and the replica's stamps inside it, so a slow request's excess is put on the hop or stage it was
spent in."""

from __future__ import annotations

import numpy as np
import pytest

from bench import tail_stages


def test_a_window_takes_the_first_stamp_of_a_kind_that_starts_inside_it():
    events = np.array([[0.5, 0.1], [1.2, 0.2], [1.3, 0.05], [3.5, 0.1]])
    starts, ends = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.9, 2.9, 3.4, 4.9])
    found, took = tail_stages.inside(starts, ends, events)
    assert found[0] == 1.2 and took[0] == 0.2  # not the earlier stamp, nor the second one inside
    assert np.isnan(found[1:]).all() and np.isnan(took[1:]).all()  # none inside; 3.5 is after the third's end
    assert np.isnan(tail_stages.inside(starts, ends, None)[0]).all()


def test_a_requests_parts_add_up_to_its_latency_and_name_the_hop_that_grew():
    gateway = {1: [(0.0001, 0.0008), (0.0101, 0.0030)], 4: [(0.0002, 0.0006), (0.0102, 0.0028)],
               6: [(0.00025, 0.0001), (0.01025, 0.0001)], 2: [(0.00011, 0.00001), (0.01011, 0.00001)],
               3: [(0.00012, 0.00005), (0.01012, 0.00005)], 5: [(0.0008, 0.00005), (0.0130, 0.00005)]}
    # the second request's answer waited 2.2 ms more between the replica's write and the gateway's await (bus->gateway)
    replica = {11: [(0.0004, 0.0002), (0.0104, 0.0002)], 12: [(0.00055, 0.00003), (0.01055, 0.00003)],
               13: [(0.00045, 0.00005), (0.01045, 0.00005)]}
    stages = {"gateway": {k: np.array(v) for k, v in gateway.items()},
              "engine replica": {k: np.array(v) for k, v in replica.items()}}
    samples = [(0.0, 0.001), (0.01, 0.0032)]
    found = tail_stages.points(samples, stages)
    parts = {name: found[b] - found[a] for name, a, b in tail_stages.PARTS}
    total = sum(parts.values())
    assert total == pytest.approx(np.array([0.001, 0.0032]))
    growth = {name: values[1] - values[0] for name, values in parts.items()}
    assert max(growth, key=growth.get) == "bus->gateway"
    assert growth["bus->gateway"] == pytest.approx(0.0022)
    assert found["  fast lane"] == pytest.approx([0.00005, 0.00005])

"""engine_config's integer settings (replica_count, replica_autoscale_min_max's minimum and maximum) are integers or
refused with the setting and the value named. Session 37's walk-through: `replica_count` "two" was answered
"engine_config.cpus must be a number and replica_count an integer", about cpus it had not given; and 2.5 deployed 2
replicas, `true` 1, both with a 200 (int() cut them), as did an autoscale minimum of 0.5."""

from __future__ import annotations

import pytest

from services.deployer.handlers import _engine_config
from shared.errors import InvalidRequest


@pytest.mark.parametrize("config, said", [
    ({"replica_count": "two"}, r"^engine_config.replica_count must be an integer \(got 'two'\)$"),
    ({"replica_count": 2.5}, r"^engine_config.replica_count must be an integer \(got '2.5'\)$"),
    ({"replica_count": True}, r"^engine_config.replica_count must be an integer \(got 'true'\)$"),
    ({"replica_count": None}, r"^engine_config.replica_count must be an integer \(got 'null'\)$"),
    ({"replica_count": [2]}, r"^engine_config.replica_count must be an integer \(got '\[2\]'\)$"),
    ({"replica_count": "inf"}, r"^engine_config.replica_count must be an integer"),
    ({"cpus": "x"}, r"^engine_config.cpus must be a number \(got 'x'\)$"),
    ({"replica_autoscale_min_max": {"minimum": 0.5, "maximum": 2}},
     r"^engine_config.replica_autoscale_min_max.minimum must be an integer \(got '0.5'\)$"),
    ({"replica_autoscale_min_max": {"minimum": 1}}, "needs integer minimum and maximum"),
    ({"replica_autoscale_min_max": [1, 2]}, "needs integer minimum and maximum"),
])
def test_a_setting_that_is_not_an_integer_is_named_with_its_value(config, said):
    with pytest.raises(InvalidRequest, match=said):
        _engine_config(config)


def test_integers_however_written_are_taken():
    assert _engine_config({"replica_count": 3})["replica_count"] == 3
    assert _engine_config({"replica_count": 3.0})["replica_count"] == 3
    assert _engine_config({"replica_count": "3"})["replica_count"] == 3
    assert _engine_config({"replica_autoscale_min_max": {"minimum": 2.0, "maximum": "4"}})["replica_count"] == 2
    with pytest.raises(InvalidRequest, match=r"between 1 and 16 \(got 10000000000000000000000000000000000000000"):
        _engine_config({"replica_count": 10**40})  # a huge integer is out of range, not an overflow

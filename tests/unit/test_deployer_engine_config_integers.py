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


def test_the_autoscale_bounds_are_kept_as_the_integers_read():
    # the autoscaler reads them with int(): a "4.0" kept as given would fail there
    config = _engine_config({"replica_autoscale_min_max": {"minimum": "2.0", "maximum": 4.0}})
    assert config["replica_autoscale_min_max"] == {"minimum": 2, "maximum": 4}
    assert all(type(v) is int for v in config["replica_autoscale_min_max"].values())


@pytest.mark.parametrize("config, said", [
    # float("nan") passed `> 100` and was stored: the batcher then slept NaN seconds
    ({"batch_max_delay_ms": "nan"}, r"^engine_config.batch_max_delay_ms must be a number of at most 100 .*'nan'$"),
    ({"batch_max_delay_ms": float("nan")}, r"^engine_config.batch_max_delay_ms must be a number"),
    ({"batch_max_delay_ms": True}, r"^engine_config.batch_max_delay_ms must be a number"),
    ({"batch_max_delay_ms": 101}, r"^engine_config.batch_max_delay_ms must be a number of at most 100"),
    ({"batch_max_delay_ms": "soon"}, r"^engine_config.batch_max_delay_ms must be a number"),
    ({"batch_max_rows": 2.5}, r"^engine_config.batch_max_rows must be an integer of at least 1, not '2.5'$"),
    ({"batch_max_rows": True}, r"^engine_config.batch_max_rows must be an integer"),
    ({"batch_max_rows": "3.0"}, r"^engine_config.batch_max_rows must be an integer"),  # the engine's int() refuses it
    ({"batch_max_rows": 0}, r"^engine_config.batch_max_rows must be an integer of at least 1, not '0'$"),
])
def test_batching_settings_are_numbers_the_engine_reads_whole(config, said):
    with pytest.raises(InvalidRequest, match=said):
        _engine_config(config)


def test_batching_settings_the_engine_reads_are_taken():
    for config in ({"batch_max_delay_ms": 5, "batch_max_rows": 8}, {"batch_max_delay_ms": "-1"},
                   {"batch_max_rows": "3"}, {"batch_max_rows": 3.0}, {"batch_max_delay_ms": float("-inf")}):
        assert _engine_config(config)["replica_count"] == 1

"""The deployer's engine_config check (services/deployer/handlers.py::_engine_config): values that would start an
unbounded number of replicas or threads, or that are not numbers at all (NaN), are refused with 400 before anything
starts (found in the `make fuzz-api` pass's review, docs/testing.md)."""

from __future__ import annotations

import pytest

from services.deployer.handlers import _engine_config
from shared.errors import InvalidRequest


@pytest.mark.parametrize("config, said", [
    ({"replica_autoscale_min_max": {"minimum": 1, "maximum": 1_000_000}}, "maximum <= 16"),
    ({"cpus": 1_000_000}, "at most 64"),
    ({"cpus": "nan"}, "cpus must be a number above 0"),
    ({"cpus": "inf"}, "cpus must be a number above 0"),
    ({"cpus": 0}, "cpus must be a number above 0"),
    ({"replica_count": 17}, r"^engine_config.replica_count must be between 1 and 16 \(got 17\)$"),
    ({"replica_count": 0, "cpus": 2}, r"^engine_config.replica_count must be between 1 and 16 \(got 0\)$"),
    ({"cpus": 65}, r"^engine_config.cpus must be a number above 0, at most 64 \(got 65\)$"),
    ({"autoscale_cpu_utilization": "nan"}, "percentage"),
    ({"autoscale_cpu_utilization": 0}, "percentage"),
    ({"autoscale_cpu_utilization": "x"}, "percentage"),
])
def test_unbounded_or_not_a_number_is_refused(config, said):
    with pytest.raises(InvalidRequest, match=said):
        _engine_config(config)


def test_the_bounds_themselves_are_accepted():
    config = _engine_config({"cpus": 64, "replica_autoscale_min_max": {"minimum": 0, "maximum": 16},
                             "autoscale_cpu_utilization": 100})
    assert config["cpus"] == 64 and config["replica_count"] == 1
    assert _engine_config(None) == {"cpus": 1.0, "replica_count": 1}


@pytest.mark.parametrize("key", ["memory", "lb_memory"])
@pytest.mark.parametrize("value", ["lots", "999", "-1Gi", "1.5.2Mi", "Mi", 512, True, ["1Gi"]])
def test_a_memory_that_is_not_a_memory_spec_is_refused(key, value):
    # seed 001 lines 3367-3373 and 3376-3381: "{size as number}{unit value}", units KiB, MiB, GiB, TiB. Before,
    # anything was stored and the Kubernetes backend silently replaced what it could not read by 2Gi
    with pytest.raises(InvalidRequest, match=rf"^engine_config.{key} must be a size with a unit"):
        _engine_config({key: value})


@pytest.mark.parametrize("given, kept", [("999Mi", "999Mi"), ("1Gi", "1Gi"), ("0.5Gi", "0.5Gi"), ("512MiB", "512Mi"),
                                         ("2 GiB", "2Gi"), ("65536KiB", "65536Ki"), ("1TiB", "1Ti")])
def test_the_seeds_memory_units_are_kept_as_kubernetes_writes_them(given, kept):
    config = _engine_config({"memory": given, "lb_memory": given})
    assert config["memory"] == kept and config["lb_memory"] == kept


@pytest.mark.parametrize("value", ["0.001Ki", "64KiB", "15Mi", "1.01Ti", "99999999Ti"])
def test_a_memory_no_replica_or_node_could_have_is_refused(value):
    # found by review: '0.001Ki' deployed with 200 and the Kubernetes pod then failed to start
    with pytest.raises(InvalidRequest, match=r"^engine_config.memory must be between 16MiB and 1TiB"):
        _engine_config({"memory": value})
    assert _engine_config({"memory": "16Mi"})["memory"] == "16Mi"


@pytest.mark.parametrize("config, said", [
    ({"cpus": 10**400}, r"^engine_config.cpus must be a number above 0, at most 64 \(got '1000.*\(401 characters\)\)$"),
    ({"cpus": -(10**400)}, r"^engine_config.cpus must be a number above 0, at most 64 \(got '-1000"),
    ({"autoscale_cpu_utilization": 10**400}, r"^engine_config.autoscale_cpu_utilization must be a percentage"),
    ({"replica_count": 10**400},
     r"^engine_config.replica_count must be between 1 and 16 \(got '1000.*\(401 characters\)\)$"),
    ({"batch_max_delay_ms": -(10**400)}, r"^engine_config.batch_max_delay_ms must be a number .* past a float's range"),
    ({"replica_autoscale_min_max": {"minimum": 1, "maximum": 10**400}}, "maximum <= 16"),
    ({"log_policy": {"mode": "sampled", "fraction": 10**400}}, "fraction in"),
    ({"memory": "1" * 400 + "Mi"}, "between 16MiB and 1TiB"),
])
def test_an_integer_past_a_floats_range_is_refused_naming_the_setting(config, said):
    # session 37: JSON's 1 and 400 zeros reaches the deployer on the bus (a free-form object may hold any integer;
    # the gateway's reader refuses it over HTTP, below): float() of it raised OverflowError, which no handler caught
    with pytest.raises(InvalidRequest, match=said):
        _engine_config(config)


@pytest.mark.parametrize("number", ["1" + "0" * 400, "-1" + "0" * 400, "1e400", "18446744073709551616"])
def test_the_http_entry_refuses_such_a_number_before_the_deployer(number):
    from services.gateway import json_body

    body = f'{{"deploy_id": "d", "pipeline_id": 1, "pipeline_version_pk_id": 1, "engine_config": {{"cpus": {number}}}}}'
    with pytest.raises((InvalidRequest, ValueError)):
        json_body.loads(body)

"""`make bench-peers` (bench/peers/logpath.py, harness.py): a Railyard figure starts once its stack has stored every
row it was sent (the replicas' `logs.held_rows` and the log store's INFERENCE_LOGS consumer read), the wait is
bounded and said, and Railyard's forms and models go in the reverse order in round 2 as the systems do."""

from __future__ import annotations

import pytest

from bench.peers import harness, logpath


def jsz(pending: int, ack_pending: int, durable: str = "log-store", stream: str = "INFERENCE_LOGS") -> dict:
    """nats-server's /jsz?accounts=true&streams=true&consumers=true answer, trimmed to what is read (as 2.10+ answer
    it: one account, its streams, each stream's consumers)."""
    return {"server_id": "N", "streams": 2, "consumers": 2, "account_details": [{"name": "$G", "id": "$G",
            "stream_detail": [
                {"name": "EVENTS", "consumer_detail": [{"name": "log-store", "num_pending": 7, "num_ack_pending": 3}]},
                {"name": stream, "state": {"messages": pending + ack_pending},
                 "consumer_detail": [{"stream_name": stream, "name": durable, "num_pending": pending,
                                      "num_ack_pending": ack_pending, "num_waiting": 1, "num_redelivered": 0}]},
            ]}]}


def status(*held: int | None) -> dict:
    engines = [{"name": f"engine-{i}", "status": "Running"} | ({} if h is None else {"logs": {"held_rows": h}})
               for i, h in enumerate(held)]
    return {"status": "Running", "details": [], "engines": engines, "engine_lbs": [], "sidekicks": []}


def test_the_log_stores_consumer_counts_what_it_has_not_acknowledged_on_the_log_stream_only():
    assert logpath.consumer_backlog(jsz(0, 0)) == 0
    assert logpath.consumer_backlog(jsz(5, 0)) == 5  # not yet delivered
    assert logpath.consumer_backlog(jsz(0, 4)) == 4  # delivered, being indexed
    assert logpath.consumer_backlog(jsz(2, 3)) == 5
    assert logpath.consumer_backlog(jsz(0, 0, durable="other")) is None  # EVENTS' consumer of that name not read
    assert logpath.consumer_backlog({"server_id": "N"}) is None  # no account details asked for


def test_the_replicas_held_rows_are_summed_and_a_replica_without_a_count_is_not_idle():
    assert logpath.held_rows(status(0, 0)) == 0
    assert logpath.held_rows(status(1000, 24)) == 1024
    assert logpath.held_rows(status(0, None)) is None
    assert logpath.held_rows(status()) is None  # no replica: nothing says its rows are stored
    assert logpath.backlog([status(0), status(0, 0)], jsz(0, 0)) == (0, 0)
    assert logpath.backlog([status(0), status(3)], jsz(0, 1)) == (3, 1)
    assert logpath.backlog([status(None), status(3)], jsz(0, 1)) == (None, 1)
    assert logpath.idle(0, 0)
    assert not logpath.idle(0, 1) and not logpath.idle(1, 0) and not logpath.idle(None, 0) and not logpath.idle(0, None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_wait_ends_when_the_path_is_idle_and_is_bounded_when_it_never_is():
    clock = Clock()
    answers = iter([False, False, True])
    assert logpath.wait_until(lambda: next(answers), 10.0, 0.5, clock, clock.sleep) == (1.0, True)
    assert clock.sleeps == [0.5, 0.5]
    clock = Clock()
    waited, emptied = logpath.wait_until(lambda: False, 3.0, 0.5, clock, clock.sleep)
    assert (waited, emptied) == (3.0, False) and len(clock.sleeps) == 6
    clock = Clock()

    def refused() -> bool:  # a status read refused while the stack is busy: not idle yet, not the bench's end
        raise OSError("connection reset")

    assert logpath.wait_until(refused, 1.0, 0.5, clock, clock.sleep) == (1.0, False)
    clock = Clock()
    assert logpath.wait_until(lambda: True, 5.0, 0.5, clock, clock.sleep) == (0.0, True) and not clock.sleeps


def test_railyards_forms_and_models_go_in_the_reverse_order_in_round_two(monkeypatch):
    forms, models = ["records", "Arrow", "OIP v2"], ["ccfraud", "seed-mlp"]
    first = harness.railyard_plan(["default"], forms, models, 0)
    assert first == [(("default", "records"), models), (("default", "Arrow"), models),
                     (("default", "OIP v2"), models)]
    second = harness.railyard_plan(["default"], forms, models, 1)
    assert second == [(("default", "OIP v2"), ["seed-mlp", "ccfraud"]), (("default", "Arrow"), ["seed-mlp", "ccfraud"]),
                      (("default", "records"), ["seed-mlp", "ccfraud"])]
    flat = [(form, model) for (_, form), ms in second for model in ms]
    assert flat[flat.index(("Arrow", "ccfraud")) - 1] == ("Arrow", "seed-mlp")  # not the records form's load
    assert harness.railyard_plan(["default", "nobatch"], ["Arrow"], ["ccfraud"], 1) == [
        (("nobatch", "Arrow"), ["ccfraud"]), (("default", "Arrow"), ["ccfraud"])]
    assert harness.railyard_plan(["default"], forms, models, 2) == first
    monkeypatch.setattr(harness, "ALTERNATE", False)  # BENCH_FIXED_ORDER=1: the harness before session 39
    assert harness.railyard_plan(["default"], forms, models, 1) == first


def target(backlog) -> harness.Target:
    return harness.Target("http://127.0.0.1:1/x", b"", b"", float, len, backlog)


def test_a_railyard_figure_waits_for_its_stacks_log_path_and_says_how_long(monkeypatch, capsys):
    monkeypatch.setattr(harness, "LOG_POLL", 0.01)
    readings = iter([(3000, 2), (0, 1), (0, 0)])
    waited = harness.wait_for_log_path(target(lambda: next(readings)))
    assert 0.015 <= waited < 1.0
    said = capsys.readouterr().out
    assert f"waited {waited:.1f} s" in said and "3000 rows held by the replicas, 2 messages" in said
    monkeypatch.setattr(harness, "LOG_WAIT_MAX", 0.05)
    waited = harness.wait_for_log_path(target(lambda: (0, 7)))
    assert 0.05 <= waited < 1.0
    assert "NOT idle after" in capsys.readouterr().out


@pytest.mark.parametrize("value, wanted", [("", ["ccfraud", "seed-mlp"]), ("ccfraud", ["ccfraud"]),
                                           ("seed-mlp,ccfraud", ["ccfraud", "seed-mlp"])])
def test_a_subset_of_the_models_is_read_in_the_harness_order(monkeypatch, value, wanted):
    monkeypatch.setenv("BENCH_MODELS", value)
    assert harness._subset("BENCH_MODELS", tuple(harness.MODELS)) == wanted


def test_an_unknown_model_or_form_is_refused(monkeypatch):
    monkeypatch.setenv("BENCH_RAILYARD_FORMS", "records,arrow")
    with pytest.raises(SystemExit, match="arrow not among records, Arrow, OIP v2"):
        harness._subset("BENCH_RAILYARD_FORMS", harness.FORMS)


def test_the_hosts_steal_is_read_as_a_share_of_the_machines_time():
    assert harness.steal_share((100, 10_000), (150, 10_200)) == 0.25  # 50 of 200 ticks stolen
    assert harness.steal_share((100, 10_000), (100, 10_000)) == 0.0  # no tick between the readings
    stolen, total = harness._steal_jiffies()
    assert 0 <= stolen <= total
    r = harness.Results(rounds=[{"Railyard Arrow": {"ccfraud": {
        "p50_ms": 1.0, "p99_ms": 2.0, "rps8": 3, "rps32": 4, "rows1000": 5, "loadgen_us": 6, "settle_s": 1.0,
        "sync_s": 0.0, "log_wait_s": 0.7, "steal": 0.29}}}], load=["1 1 1"])
    text = harness.report(r, 60)
    assert "| the host's steal of the VM's CPU during the figures | 29 % |" in text
    assert "| waited for Railyard's log path to store the earlier rows | 0.7 s |" in text

"""At its start the deployer removes the folders of deployment names no deployment has any more
(services/deployer/handlers.py sweep_gone_folders, LocalBackend.remove_gone): a name whose row does not exist, and a
name other than its inactive row's own (an earlier deploy_id). Before session 32 (2026-12-05) deployments/<name>/ was
never removed, so such folders stayed for ever: no later undeploy names them.
Never an active row's folders (a failed renamed redeploy's logs stay until its undeploy), nor an inactive row's own
name's (a failed deploy's logs, kept until an undeploy), nor a name a set runs under or a start uses."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import services.deployer.backend as backend_module
from services.deployer.backend import REMOVING, LocalBackend, ReplicaSet
from services.deployer.handlers import sweep_gone_folders


class _Pool:
    """The deployments table: (deploy_id, active) by id."""

    def __init__(self, rows: dict[int, tuple[str, bool]], fails: BaseException | None = None) -> None:
        self.rows, self.fails, self.asked = rows, fails, []

    async def fetch(self, sql: str, ids: list[int]):
        self.asked.append(ids)
        if self.fails is not None:
            raise self.fails
        return [{"id": i, "deploy_id": self.rows[i][0], "active": self.rows[i][1]} for i in ids if i in self.rows]


def _backend(tmp_path) -> LocalBackend:
    async def request(subject: str, payload: bytes, wait: float) -> bytes:
        raise AssertionError("nothing probes here")

    swept = []
    backend = LocalBackend(tmp_path / "deployments", request, scale_down_after=60, ready_timeout=10,
                           stop_timeout=0.05, engine_work_dir=tmp_path / "engine-work",
                           sweep_cgroups=lambda: swept.append(1) or 0)
    backend.cgroup_sweeps = swept  # type: ignore[attr-defined]
    return backend


NAMES = ["gone-7", "old-5", "new-5", "live-6", "other-6", "run-8", "starting-9", "nodash", "x-12ab", "-4",
         "huge-99999999999999999999", "odd-\u0663"]


def _folders(tmp_path) -> None:
    for name in NAMES:
        folder = tmp_path / "deployments" / name
        folder.mkdir(parents=True)
        (folder / "replica-ab.log").write_text("railyard-engine: it failed\n")
        (folder / "spec-1.json").write_text("{}")
    for name in ("gone-7", "old-5", "new-5"):
        (tmp_path / "engine-work" / name / "ab-0").mkdir(parents=True)
    (tmp_path / "deployments" / f"{REMOVING}x-1-abcd").mkdir()


def _left(tmp_path, top: str) -> set[str]:
    return {path.name for path in (tmp_path / top).iterdir() if not path.name.startswith(REMOVING)}


async def test_folders_of_names_no_deployment_has_go_and_every_other_stays(tmp_path):
    _folders(tmp_path)
    backend = _backend(tmp_path)
    backend.sets["run-8"] = ReplicaSet(name="run-8", spec_path=tmp_path / "spec.json")  # runs (no row: a guard)
    backend._users["starting-9"] += 1  # a start of it is under way
    # 5: renamed from old to new, inactive; 6: active as live (other-6: a failed renamed redeploy's logs); 7, 8, 9:
    # no row
    pool = _Pool({5: ("new", False), 6: ("live", True)})
    removing = await sweep_gone_folders(SimpleNamespace(backend=backend, pool=pool, timeout=4.0))
    assert removing == ["gone-7", "old-5"]
    assert pool.asked == [[5, 6, 7, 8, 9]]  # the names' ids once; none of a name of another shape or past bigint
    await backend.swept()
    assert _left(tmp_path, "deployments") == set(NAMES) - {"gone-7", "old-5"}
    assert _left(tmp_path, "engine-work") == {"new-5"}
    # the renamed folders are removed whole, as an undeploy's (the one a dead deployer left is sweep_stale_work's)
    assert [p.name for p in (tmp_path / "deployments").iterdir() if p.name.startswith(REMOVING)] == \
        [f"{REMOVING}x-1-abcd"]
    assert not [p for p in (tmp_path / "engine-work").iterdir() if p.name.startswith(REMOVING)]
    assert backend.cgroup_sweeps == []  # no replica of them ran here: no cgroup sweep for them
    assert "run-8" in backend.sets and backend._undeployed == {}
    await backend.close()


async def test_a_database_that_fails_or_does_not_answer_removes_nothing(tmp_path, caplog):
    _folders(tmp_path)
    backend = _backend(tmp_path)
    failing = _Pool({}, fails=OSError("connection refused"))
    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=failing, timeout=4.0)) == []
    assert "could not look for the folders of deployments that are gone" in caplog.text

    class Silent(_Pool):
        async def fetch(self, sql, ids):
            await asyncio.sleep(60)

    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=Silent({}), timeout=0.05)) == []
    await backend.swept()
    assert _left(tmp_path, "deployments") == set(NAMES)
    await backend.close()


async def test_nothing_to_look_up_asks_nothing(tmp_path):
    backend = _backend(tmp_path)
    pool = _Pool({})
    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=pool, timeout=4.0)) == []
    assert pool.asked == []
    await backend.close()


async def test_many_names_go_with_one_listing_of_the_live_processes_and_a_live_replica_s_log_stays(tmp_path,
                                                                                                  monkeypatch):
    """Each folder was removed in a job of its own that listed every process first (_live_replicas: ~10-30 ms of CPU):
    the thousands of names a start may find took that many listings of the sweep thread, the undeploys' removals and
    cgroup sweeps queued behind them. One listing serves a batch's removals for LIVE_LISTING_FOR seconds; what a live
    replica uses (a previous deployer's draining replica's log) still stays and is looked at again."""
    listings = []

    def live_replicas(cwds=False):
        listings.append(cwds)
        return {"live1"}, set(), set()

    monkeypatch.setattr(backend_module, "_live_replicas", live_replicas)
    monkeypatch.setattr(backend_module, "LIVE_LISTING_FOR", 60.0)
    for number in range(1, 41):
        folder = tmp_path / "deployments" / f"old-{number}"
        folder.mkdir(parents=True)
        (folder / "replica-ab.log").write_text("railyard-engine: it failed\n")
    (tmp_path / "deployments" / "old-7" / "replica-live1.log").write_text("draining\n")
    backend = _backend(tmp_path)
    removing = await sweep_gone_folders(SimpleNamespace(backend=backend, pool=_Pool({}), timeout=4.0))
    assert len(removing) == 40
    await backend.swept()
    await asyncio.sleep(0)
    assert listings == [True]  # one listing for the 40 folders (40 before)
    [left] = (tmp_path / "deployments").iterdir()
    assert left.name.startswith(f"{REMOVING}old-7-") and [p.name for p in left.iterdir()] == ["replica-live1.log"]
    assert left in backend._later  # looked at again (RECHECK_EVERY)
    await backend.close()
    # a listing older than LIVE_LISTING_FOR is taken again
    monkeypatch.setattr(backend_module, "LIVE_LISTING_FOR", 0.0)
    listings.clear()
    for number in range(41, 44):
        folder = tmp_path / "deployments" / f"old-{number}"
        folder.mkdir(parents=True)
        (folder / "replica-ab.log").write_text("railyard-engine: it failed\n")
    backend = _backend(tmp_path)
    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=_Pool({}), timeout=4.0)) == \
        ["old-41", "old-42", "old-43"]
    await backend.swept()
    assert listings == [True] * 3
    await backend.close()

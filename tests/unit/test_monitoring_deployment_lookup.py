"""services/monitoring/handlers._deployment, which every predict and monitor call (and most monitoring routes) runs
first: the deployment's route, then its pipeline's one record (pipelines/get by the route's pipeline_id), not the
caller's workspace's whole pipelines/list page by page; same answers and errors as the list walk gave."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from services.monitoring import handlers
from shared import subjects
from shared.authz import Principal
from shared.errors import NotFound
from shared.messages.deployer import DeploymentRoute, PipelineRecord, Pipelines

CALLER = Principal(subject="u1", kind="user", admin=False, client_id="c", username="alice", issued_at=0)
SERVED = {"steps": [{"ModelInference": {"models": [{"name": "m", "version": "2", "sha": "s"}]}}]}
PAGES = 4  # the workspace's pipelines/list: several pages, the deployment's pipeline on the last


def _record(pipeline_id: int, deployed: bool = True, cut: bool = False) -> PipelineRecord:
    deployment = {"id": 30 + pipeline_id, "name": f"dep-{30 + pipeline_id}",
                  "pipeline_version_pk_id": 900 + pipeline_id, "engine_config": {"cpus": 1}} if deployed else None
    # a cut record lists the newest versions and the deployed one (deployer _pipeline_record)
    versions = [{"id": 900 + pipeline_id, "version": "v2", "definition": SERVED, "created_at": ""},
                {"id": 950, "version": "v9", "definition": {}, "created_at": ""}]
    return PipelineRecord(id=pipeline_id, name=f"p{pipeline_id}", workspace_id=1, created_at="", updated_at="",
                          versions=versions, deployment=deployment, versions_cursor="950" if cut else None,
                          versions_omitted=7 if cut else None)


class _Deployer:
    """The deployer's answers to the monitoring service, every request kept."""

    def __init__(self, route: DeploymentRoute, record: PipelineRecord | None, member: bool = True):
        self.route, self.record, self.member, self.asked = route, record, member, []

    async def request(self, broker, subject, cmd, *, token, timeout, reply_model):
        self.asked.append(subject)
        if subject == subjects.DEPLOYER_DEPLOYMENTS_RESOLVE:
            return self.route
        if subject == subjects.DEPLOYER_PIPELINES_GET:
            if self.record is None or cmd.pipeline_id != self.record.id:
                raise NotFound(f"pipeline {cmd.pipeline_id} not found")
            return self.record
        assert subject == subjects.DEPLOYER_PIPELINES_LIST
        page = int(cmd.cursor or 0)
        listed = [_record(page * 10 + k, deployed=False) for k in range(1, 4)]
        if page == PAGES - 1 and self.record is not None:
            listed.append(self.record)
        return Pipelines(pipelines=listed, next_cursor=str(page + 1) if page < PAGES - 1 else None)

    def deps(self, monkeypatch):
        monkeypatch.setattr("services.monitoring.handlers.request", self.request)
        monkeypatch.setattr("shared.pipeline_pages.request", self.request)

        def membership(token):
            async def lookup(user_id, workspace_id):
                return "member" if self.member else None
            return lookup

        return SimpleNamespace(broker=None, timeout=1.0, membership=membership)


def _route(pipeline_id: int | None = 38, deployment_id: int = 68) -> DeploymentRoute:
    return DeploymentRoute(deployment_id=deployment_id, name=f"dep-{deployment_id}", pipeline_name="p38",
                           workspace_id=1, status="Running", pipeline_version="v2", input_schema=None,
                           pipeline_id=pipeline_id)


def _lookup(deps, name="dep-68"):
    return asyncio.run(handlers._deployment(deps, CALLER, "t", name))


def test_the_deployment_is_read_with_one_pipelines_get_not_the_workspace_s_list(monkeypatch):
    """Before, each call read every page of the workspace's pipelines/list (PAGES requests here, several 4 MiB
    pages in a workspace of many pipelines) to find the one pipeline."""
    deployer = _Deployer(_route(), _record(38, cut=True))
    view = _lookup(deployer.deps(monkeypatch))
    assert deployer.asked == [subjects.DEPLOYER_DEPLOYMENTS_RESOLVE, subjects.DEPLOYER_PIPELINES_GET]
    assert (view.pipeline_id, view.deploy_id, view.definition, view.engine_config) == (38, "dep", SERVED, {"cpus": 1})
    assert view.route.deployment_id == 68


@pytest.mark.parametrize("record", [None, _record(38, deployed=False), _record(38).model_copy(
    update={"deployment": {"id": 99, "name": "dep-99", "pipeline_version_pk_id": 938, "engine_config": None}})],
    ids=["pipeline deleted", "undeployed", "another deployment active"])
def test_a_deployment_that_is_no_longer_its_pipeline_s_active_one_is_not_deployed(monkeypatch, record):
    deployer = _Deployer(_route(), record)
    with pytest.raises(NotFound, match="'dep-68' is not deployed"):
        _lookup(deployer.deps(monkeypatch))
    assert subjects.DEPLOYER_PIPELINES_LIST not in deployer.asked


def test_a_caller_outside_the_workspace_gets_not_found_and_no_pipeline_is_read(monkeypatch):
    deployer = _Deployer(_route(), _record(38), member=False)
    with pytest.raises(NotFound, match="'dep-68' not found"):
        _lookup(deployer.deps(monkeypatch))
    assert deployer.asked == [subjects.DEPLOYER_DEPLOYMENTS_RESOLVE]


def test_a_route_from_a_deployer_without_pipeline_id_is_found_in_the_list_as_before(monkeypatch):
    deployer = _Deployer(_route(pipeline_id=None), _record(38))
    view = _lookup(deployer.deps(monkeypatch))
    assert (view.pipeline_id, view.definition) == (38, SERVED)
    assert deployer.asked == [subjects.DEPLOYER_DEPLOYMENTS_RESOLVE] + [subjects.DEPLOYER_PIPELINES_LIST] * PAGES
    deployer = _Deployer(_route(pipeline_id=None), None)
    with pytest.raises(NotFound, match="'dep-68' is not deployed"):
        _lookup(deployer.deps(monkeypatch))

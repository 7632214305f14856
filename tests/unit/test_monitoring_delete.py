"""monitoring's delete without force_delete (services/monitoring/handlers.py `delete`, `kept_settings`), with the
deployer and PostgreSQL as fakes: refused while tags or settings would be lost, and a settings row whose values were
all cleared counts as no settings."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from services.monitoring import continuous, feedback_store, handlers, store
from shared.errors import Conflict
from shared.messages.monitoring import DeleteDeployment

CLEARED = {"deployment_id": 7, "workspace_id": 1, "display_name": None, "target_datalake": None,
           "min_threshold": None, "updated_at": None}


@pytest.fixture
def deployment(monkeypatch):
    """One deployment with no feedback or continuous state; `kept` holds its tags and settings row, `undeployed`
    the undeploy commands sent."""
    kept = {"tags": [], "settings": None}
    undeployed: list = []

    async def view(deps, principal, token, name):
        return SimpleNamespace(route=SimpleNamespace(deployment_id=7, workspace_id=1), pipeline_id=3)

    async def nothing(*args, **kwargs):
        return []

    async def request(broker, subject, command, **kwargs):
        undeployed.append(command)

    async def tags(pool, deployment_id):
        return kept["tags"]

    async def settings(pool, deployment_id):
        return kept["settings"]

    monkeypatch.setattr(handlers, "_deployment", view)
    monkeypatch.setattr(handlers, "request", request)
    monkeypatch.setattr(feedback_store, "feedback_state", nothing)
    monkeypatch.setattr(feedback_store, "forget_feedback", nothing)
    monkeypatch.setattr(continuous, "kept_state", nothing)
    monkeypatch.setattr(continuous, "forget", nothing)
    monkeypatch.setattr(store, "tags", tags)
    monkeypatch.setattr(store, "settings", settings)
    monkeypatch.setattr(store, "forget", nothing)
    return kept, undeployed


def delete(force: bool = False):
    deps = SimpleNamespace(pool=None, broker=None, deploy_timeout=1.0)
    return asyncio.run(handlers.delete(deps, None, "token", DeleteDeployment(deployment="d", force_delete=force)))


def test_a_settings_row_whose_values_were_all_cleared_is_no_settings(deployment):
    kept, undeployed = deployment
    kept["settings"] = CLEARED
    assert delete().deleted and len(undeployed) == 1


@pytest.mark.parametrize("setting", [{"display_name": "cam"}, {"target_datalake": "frames"}, {"min_threshold": 0.0}])
def test_a_setting_still_held_refuses_delete_without_force(deployment, setting):
    kept, undeployed = deployment
    kept["settings"] = CLEARED | setting
    with pytest.raises(Conflict, match="force_delete"):
        delete()
    assert not undeployed
    assert delete(force=True).deleted and len(undeployed) == 1


def test_tags_refuse_delete_without_force_and_nothing_kept_does_not(deployment):
    kept, undeployed = deployment
    kept["tags"] = ["night"]
    with pytest.raises(Conflict):
        delete()
    kept["tags"] = []
    assert delete().deleted and len(undeployed) == 1


def test_kept_settings_names_what_is_set():
    assert handlers.kept_settings(None) == [] and handlers.kept_settings(CLEARED) == []
    assert handlers.kept_settings(CLEARED | {"min_threshold": 0.0, "display_name": "x"}) == ["display_name",
                                                                                             "min_threshold"]

"""models/attach_registry_to_workspace and remove_registry_from_workspace with seed 001's body shape
(`{'id': ..., 'workspace_id': 1}`) and no id: the 400 names `id`, the field the seed's body uses (`registry_id` too,
which the same commands accept). Before, it said "registry_id is required", a field such a body does not have
(j2's contract journey, session 27). Commands that take only `registry_id` still name it alone."""

from __future__ import annotations

import uuid

import pytest

from services.registry import registries
from shared.authz import Principal
from shared.errors import InvalidRequest
from shared.messages.registry import AttachRegistry


@pytest.mark.parametrize("body", [{"id": None, "workspace_id": 1}, {"id": "", "workspace_id": 1},
                                  {"workspace_id": 1}, {"registry_id": None, "workspace_id": 1}],
                         ids=["id-null", "id-empty", "neither", "registry_id-null"])
def test_a_missing_id_names_the_seeds_field(body):
    cmd = AttachRegistry.model_validate(body)
    with pytest.raises(InvalidRequest) as caught:
        registries._registry_id(cmd.registry_id, cmd.id, names=registries.EITHER)
    assert str(caught.value).startswith("id (or registry_id) is required: "), str(caught.value)


async def test_attach_and_detach_say_so_before_reading_anything(monkeypatch):
    """Through the handlers themselves: the member check passes, the id check answers before any read."""
    async def member(*args):
        return None

    monkeypatch.setattr(registries, "require_member", member)
    deps = type("Deps", (), {"pool": None, "membership": staticmethod(lambda token: None)})()
    service = registries.RegistryService(deps, box=None, rules=None)  # type: ignore[arg-type]
    principal = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="c", username="u",
                          issued_at=0.0)
    cmd = AttachRegistry.model_validate({"id": None, "workspace_id": 1})
    for handler in (service.attach, service.detach):
        with pytest.raises(InvalidRequest, match=r"^id \(or registry_id\) is required"):
            await handler(principal, "t", cmd)


def test_registry_id_only_commands_name_registry_id():
    with pytest.raises(InvalidRequest, match="^registry_id is required"):
        registries._registry_id(None)

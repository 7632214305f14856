"""projects/restore_version into a name the workspace holds: the 409 says what to do in both cases. It said
"give a name" also to a caller who had given one."""

from __future__ import annotations

import pytest

from tests.integration.conftest import post
from tests.integration.test_lineage import ok, upload_file

pytestmark = pytest.mark.integration


def test_a_taken_name_is_said_with_what_to_do(stack, alice):
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id,
                                                              "name": "restore-names"}))
    files = ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "f",
                                                            "kind": "files"}))
    ok(upload_file(stack, alice, files["id"], "a.txt", b"a"))
    ok(post(stack, "projects/create_version", alice.token, {"project_id": project["id"]}))
    restore = {"project_id": project["id"], "version_num": 1}
    assert ok(post(stack, "projects/restore_version", alice.token, restore))["project"]["name"] == "restore-names (v1)"
    taken = post(stack, "projects/restore_version", alice.token, restore)  # the default name, taken by the first
    assert taken.status_code == 409 and taken.json()["msg"] == (
        f"workspace {alice.workspace_id} already has a project named 'restore-names (v1)'; give the restored project"
        " a name (name)")
    given = post(stack, "projects/restore_version", alice.token, {**restore, "name": "restore-names"})
    assert given.status_code == 409 and given.json()["msg"] == (
        f"workspace {alice.workspace_id} already has a project named 'restore-names'; give another name")
    listed = ok(post(stack, "projects/list", alice.token, {"workspace_id": alice.workspace_id}))["projects"]
    assert sorted(p["name"] for p in listed) == ["restore-names", "restore-names (v1)"]

"""orchestration/upload with a body that is not multipart/form-data (a JSON body, as every other route of the API
takes, or none) says what the route takes and what it got: 400 invalid_request. Before, its form read empty and the
answer was "the multipart body needs a 'metadata' part with {"workspace_id": ...}", about a multipart body the caller
never sent; a caller who then added `metadata` to the JSON got the same answer again. Nothing is staged or stored."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import post

pytestmark = pytest.mark.integration


def test_a_body_that_is_not_multipart_says_what_the_route_takes(stack, alice):
    url, auth = f"{stack.api}/orchestration/upload", {"Authorization": f"Bearer {alice.token}"}
    for sent, kind in ((dict(json={"workspace_id": alice.workspace_id, "metadata": {"workspace_id": 1}}),
                        "application/json"),
                       (dict(content=b"PK\x03\x04", headers={"Content-Type": "application/zip"}), "application/zip"),
                       (dict(content=b""), "a body without a Content-Type")):
        headers = {**auth, **sent.pop("headers", {})}
        refused = httpx.post(url, headers=headers, timeout=60, **sent)
        assert refused.status_code == 400, refused.text
        assert refused.json() == {"code": "invalid_request", "msg": (
            "orchestration/upload takes multipart/form-data (a 'file' part with the zip and a 'metadata' part with "
            f"{{\"workspace_id\": ...}}), not {kind}")}
    # the multipart upload is answered as before (here: no 'metadata' part)
    missing = httpx.post(url, headers=auth, timeout=60, files={"file": ("o.zip", b"PK", "application/zip")})
    assert missing.status_code == 400 and "needs a 'metadata' part" in missing.json()["msg"]
    assert post(stack, "orchestration/list", alice.token, {"workspace_id": alice.workspace_id}).json() == []

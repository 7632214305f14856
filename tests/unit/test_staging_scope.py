"""Staged uploads are bound to their uploader's user and token scope (shared/staging.py): a task run's token (scoped
to one workspace) stages at staging/<user id>/ws-<workspace id>/<uuid>, a session at staging/<user id>/<uuid>, and
check_staged lets only the same user with the same scope consume a key: another scope either way is 403
`out_of_scope`, before anything is read or deleted (the consumers call it first)."""

from __future__ import annotations

import pytest

from shared.authz import Principal
from shared.errors import Forbidden, InvalidRequest
from shared.staging import STAGED_KEY, check_staged, staged_key, staged_key_for


def principal(subject: str, run_workspace: int | None = None) -> Principal:
    """A session's token, or (run_workspace) a task run's token scoped to that workspace."""
    scoped = {} if run_workspace is None else {"workspace_id": run_workspace, "scoped_task": "t", "scoped_run": "r"}
    return Principal(subject=subject, kind="user", admin=False, client_id="c", username="u", issued_at=0.0, **scoped)


def test_a_staged_upload_is_consumed_only_by_its_user_with_the_scope_it_was_staged_with():
    session, run, other_run = principal("alice"), principal("alice", 7), principal("alice", 8)
    by_session, by_run = staged_key(session), staged_key(run)
    assert STAGED_KEY.match(by_session)["workspace"] is None and by_session.startswith("staging/alice/")
    assert by_run.startswith("staging/alice/ws-7/") and STAGED_KEY.match(by_run)["workspace"] == "7"
    assert staged_key_for("alice", 7).startswith("staging/alice/ws-7/")  # a token a service minted for the run's scope
    check_staged(by_session, session)
    check_staged(by_run, run)
    # a run's token may not take what its owner staged from a session (which reaches all their workspaces) ...
    with pytest.raises(Forbidden) as refused:
        check_staged(by_session, run)
    assert refused.value.code == "out_of_scope" and "upload the file with this token" in refused.value.msg
    # ... nor a session what a run staged, nor a run of another workspace
    for key, caller in ((by_run, session), (by_run, other_run)):
        with pytest.raises(Forbidden) as refused:
            check_staged(key, caller)
        assert refused.value.code == "out_of_scope"
    # another user: 403 whatever the scope; a key the stager did not make: 400
    for key in (by_session, by_run):
        with pytest.raises(Forbidden) as refused:
            check_staged(key, principal("bob", 7))
        assert refused.value.code == "forbidden"
    for odd in ("staging/alice/ws-0/" + by_run[-36:], "staging/alice/ws-7/x/" + by_run[-36:], "staging/alice/x"):
        with pytest.raises(InvalidRequest):
            check_staged(odd, run)

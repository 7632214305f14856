"""Lists the services read a page at a time, asked as their caller: caller_pages, and the workspace's pipelines.

The monitoring service (the orchestrations continuous training checks, a served version's older definitions; a
deployment's pipeline only when the deployer's resolve answer lacks its pipeline_id), the log store (does a pipeline
that logged nothing yet exist) and the registry (the caller's workspaces) read lists that grow with what users create;
asked whole, a list past a reply was a 422 relayed to their caller, whatever the caller asked (docs/api-paging.md). Not
in shared/paging.py: the deployer's messages import it (its `limit`/`cursor` fields), so it cannot import them and the
bus's `request` back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from shared import paging, subjects
from shared.bus import request
from shared.messages.deployer import ListPipelines, Pipelines

R = TypeVar("R", bound=BaseModel)


async def caller_pages(broker: Any, subject: str, ask: Callable[[str | None], BaseModel], reply_model: type[R],
                       token: str | None, timeout: float, cursor_key: str = "next_cursor") -> AsyncIterator[R]:
    """Every page of the list `subject` answers, first to last, asked as the caller (`token`): `ask(cursor)` is the
    command for one page (with `limit`, and `cursor` or whatever field takes it), `cursor_key` the reply's field
    holding the next one. shared.paging.pages follows the cursors (RepeatedCursor at one answered before). A caller
    that stops at the page holding what it looks for reads no further."""
    async def page(cursor: str | None) -> R:
        return await request(broker, subject, ask(cursor), token=token, timeout=timeout, reply_model=reply_model)

    async for listed in paging.pages(page, cursor_key):
        yield listed


async def workspace_pipelines(broker: Any, workspace_id: int, token: str | None,
                              timeout: float) -> AsyncIterator[Pipelines]:
    """Every page of the workspace's pipelines/list (MAX_PAGE pipelines at most each), first to last, asked as the
    caller (`token`)."""
    async for listed in caller_pages(broker, subjects.DEPLOYER_PIPELINES_LIST, lambda cursor: ListPipelines(
            workspace_id=workspace_id, limit=paging.MAX_PAGE, cursor=cursor), Pipelines, token, timeout):
        yield listed

"""A workspace's pipelines as the services that read them read them: pipelines/list a page at a time.

The monitoring service (a deployment's pipeline) and the log store (does a pipeline that logged nothing yet exist)
read a workspace's pipelines; asked whole, a list past a reply was a 422 relayed to
their caller, whatever the caller asked (docs/api-paging.md). Not in shared/paging.py: the deployer's messages import
it (its `limit`/`cursor` fields), so it cannot import them and the bus's `request` back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from shared import paging, subjects
from shared.bus import request
from shared.messages.deployer import ListPipelines, Pipelines


async def workspace_pipelines(broker: Any, workspace_id: int, token: str | None,
                              timeout: float) -> AsyncIterator[Pipelines]:
    """Every page of the workspace's pipelines/list (MAX_PAGE pipelines at most each), first to last, asked as the
    caller (`token`): a caller that stops at the page holding what it looks for reads no further."""
    async def page(cursor: str | None) -> Pipelines:
        return await request(broker, subjects.DEPLOYER_PIPELINES_LIST, ListPipelines(
            workspace_id=workspace_id, limit=paging.MAX_PAGE, cursor=cursor), token=token, timeout=timeout,
            reply_model=Pipelines)

    async for listed in paging.pages(page):
        yield listed

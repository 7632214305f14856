"""pipelines/create's and copy's model check (services/deployer/handlers.py _check_models_exist) on a NATS server
still on the permissions of the release before registry.models.exist (a ConfigMap rolling, a docker-compose NATS not
recreated): the server drops the deployer's publish to it and sends a permissions violation, and nothing answers. It
was read as a slow registry: every create naming a model a 504 after half the request timeout, until NATS restarted.
Now the violation (shared/bus.py PublishRefusals, fed by make_broker's error callback) sends the look-ups one by one
at once, and the next creates for a while do not try the new subject. A registry that is only slow is still the 504.
A real nats-server (tests/local_nats.py) with a users config; the deployer's broker is make_broker's."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import nats
import pytest

from services.deployer import handlers
from shared import subjects
from shared.bus import make_broker
from shared.errors import UpstreamTimeout
from shared.settings import Settings
from tests.local_nats import local_nats_server, subscribed

OLD_DEPLOYER = ["registry.models.resolve", "_INBOX.>"]
"""What the deployer may publish on the old config (the part of it this check uses): no registry.models.exist."""
REFS = {(f"m{i}", None, None): f"definition.steps[{i}].ModelInference" for i in range(3)}
TIMEOUT = 4.0  # the request timeout: the look-ups end by half of it


def _config(path: Path, deployer_publishes: list[str]) -> Path:
    deployer = {"publish": {"allow": deployer_publishes}, "subscribe": {"allow": ["_INBOX.>"]}}
    path.write_text("authorization {\n  users = [\n"
                    f'    {{user: "deployer", password: "d", permissions: {json.dumps(deployer)}}}\n'
                    '    {user: "registry", password: "r"}\n  ]\n}\n')
    return path


async def _registry(url: str, asked: list[str], *, answer_exist: bool) -> nats.NATS:
    """A stand-in registry that has every model: resolve (exists_only) answers found; registry.models.exist is
    heard (counted) and answered "none missing", or never answered (`answer_exist` False: a slow registry)."""
    nc = await nats.connect(url, user="registry", password="r", max_reconnect_attempts=0)

    async def answer(msg) -> None:
        asked.append(msg.subject)
        if msg.subject == subjects.REGISTRY_MODELS_RESOLVE:
            name = json.loads(msg.data)["name"]
            await msg.respond(json.dumps({"ok": True, "data": {
                "model_id": 1, "name": name, "model_version": "v", "status": "ready"}}).encode())
        elif answer_exist:
            await msg.respond(b'{"ok": true, "data": {"missing": []}}')

    await nc.subscribe(subjects.REGISTRY_MODELS_RESOLVE, cb=answer)
    await nc.subscribe(subjects.REGISTRY_MODELS_EXIST, cb=answer)
    await subscribed(nc)
    return nc


def _refused(caplog) -> list[str]:
    """The violations make_broker's error callback logged (FastStream logs each once more, as a broken connection)."""
    return [r.getMessage() for r in caplog.records if r.name == "railyard.bus" and "permissions violation" in
            r.getMessage()]


async def _check(broker) -> float:
    """One create's model check of REFS; the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deps = SimpleNamespace(broker=broker, timeout=TIMEOUT)
    await handlers._check_models_exist(deps, "t", 7, "p", REFS, started + TIMEOUT * handlers.MODEL_LOOKUPS_WITHIN)
    return loop.time() - started


def test_a_refused_models_exist_falls_back_at_once_and_is_not_tried_again_for_a_while(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="railyard.bus")
    config = _config(tmp_path / "nats.conf", OLD_DEPLOYER)
    with local_nats_server(tmp_path, config=config) as url:
        async def main() -> None:
            asked: list[str] = []
            registry = await _registry(url, asked, answer_exist=True)
            broker = make_broker(Settings(nats={"url": url, "user": "deployer", "password": "d"}), "deployer")
            await broker.start()
            try:
                took = await _check(broker)  # before: UpstreamTimeout after TIMEOUT / 2
                assert took < 1.0, took
                assert asked == [subjects.REGISTRY_MODELS_RESOLVE] * 3  # the exist request never reached it
                assert len(_refused(caplog)) == 1, _refused(caplog)
                asked.clear()
                await _check(broker)  # remembered: straight to the one-by-one look-ups, nothing refused again
                await asyncio.wait_for(broker.config.connection_state.connection.flush(), 2)  # any -ERR is in
                assert asked == [subjects.REGISTRY_MODELS_RESOLVE] * 3
                assert len(_refused(caplog)) == 1, _refused(caplog)  # not published again
            finally:
                await broker.stop()
                await registry.close()

        asyncio.run(main())


def test_a_registry_that_does_not_answer_models_exist_in_time_is_still_the_504(tmp_path):
    config = _config(tmp_path / "nats.conf", [subjects.REGISTRY_MODELS_EXIST, *OLD_DEPLOYER])
    with local_nats_server(tmp_path, config=config) as url:
        async def main() -> None:
            asked: list[str] = []
            registry = await _registry(url, asked, answer_exist=False)
            broker = make_broker(Settings(nats={"url": url, "user": "deployer", "password": "d"}), "deployer")
            await broker.start()
            try:
                with pytest.raises(UpstreamTimeout):
                    await _check(broker)
                assert asked == [subjects.REGISTRY_MODELS_EXIST]  # heard, never answered: no fallback
            finally:
                await broker.stop()
                await registry.close()

        asyncio.run(main())

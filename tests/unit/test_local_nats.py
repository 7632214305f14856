"""tests/local_nats.py's `config=` is the server's configuration with or without JetStream. Before, it was read only
with `jetstream=True`: a test that gave users and permissions without JetStream got a server that let anyone in and
publish anything, so a refusal it meant to test never came (test_models_exist_refused.py asked for JetStream it does
not use, to have its config read)."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest

from tests.local_nats import local_nats_server, subscribed


@pytest.mark.parametrize("jetstream", [False, True])
def test_the_config_is_read_with_or_without_jetstream(tmp_path, jetstream):
    config = tmp_path / "users.conf"
    config.write_text('authorization {\n  users = [\n'
                      '    {user: "writer", password: "w"}\n'
                      '    {user: "reader", password: "r", permissions: {publish: {deny: ["orders.>"]}}}\n'
                      '  ]\n}\n')
    with local_nats_server(tmp_path, jetstream=jetstream, config=config) as url:
        async def main() -> None:
            async def kept(exc: Exception) -> None:  # not printed
                pass

            with pytest.raises(nats.errors.Error, match="Authorization Violation"):  # no user: refused
                await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, error_cb=kept)
            refused = asyncio.Event()

            async def noted(exc: Exception) -> None:
                if "permissions violation for publish" in str(exc):
                    refused.set()

            reader = await nats.connect(url, user="reader", password="r", error_cb=noted,
                                        max_reconnect_attempts=0)
            writer = await nats.connect(url, user="writer", password="w", max_reconnect_attempts=0)
            try:
                heard = await writer.subscribe("orders.new")
                await subscribed(writer)
                await reader.publish("orders.new", b"x")  # the user's permissions: dropped, a violation sent
                await asyncio.wait_for(refused.wait(), 5)
                await writer.publish("orders.new", b"y")
                assert (await heard.next_msg(5)).data == b"y"  # the reader's was never delivered: the first is ours
                if jetstream:  # still there with a config
                    await writer.jetstream().account_info()
            finally:
                await reader.close()
                await writer.close()

        asyncio.run(main())

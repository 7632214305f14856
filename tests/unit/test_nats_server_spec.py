"""The embedded nats-server's command line, configuration and environment (shared/embedded/servers.py:
nats_server)."""

import shutil

import pytest
from faststream.nats import NatsBroker

from shared import bus, subjects
from shared.embedded.servers import JETSTREAM_FILE_STORE, jetstream_file_store, nats_server
from shared.errors import RailyardError
from shared.settings import Settings, StackSettings
from tests.local_nats import local_nats_server


def test_nats_server_runs_one_go_thread_by_default_and_keeps_fsync_always(tmp_path):
    spec = nats_server(StackSettings(data_dir=tmp_path), tmp_path)
    assert spec.env["GOMAXPROCS"] == "1"
    assert "sync_interval: always" in (tmp_path / "nats.conf").read_text()  # acknowledged log data stays durable


def test_nats_server_gomaxprocs_zero_leaves_gos_default(tmp_path):
    assert "GOMAXPROCS" not in nats_server(StackSettings(data_dir=tmp_path, nats_gomaxprocs=0), tmp_path).env
    assert nats_server(StackSettings(data_dir=tmp_path, nats_gomaxprocs=2), tmp_path).env["GOMAXPROCS"] == "2"


def test_jetstreams_file_storage_is_the_stream_caps_not_the_disk_free(tmp_path):
    nats_server(StackSettings(data_dir=tmp_path), tmp_path, jetstream_file_store([1024**3, 8 * 1024**3]))
    assert f"max_file_store: {JETSTREAM_FILE_STORE}" in (tmp_path / "nats.conf").read_text()
    assert jetstream_file_store([1024**3, -1]) == JETSTREAM_FILE_STORE  # an uncapped stream adds nothing
    assert jetstream_file_store([2 * 1024**4, 1024**3]) == 2 * 1024**4 + 2 * 1024**3  # caps beyond it: their sum


async def _create_streams(url: str, settings: Settings) -> dict[str, int]:
    broker = NatsBroker(url)
    await broker.connect()
    try:
        await bus.ensure_streams(broker, settings)
        return {info.config.name: info.config.max_bytes
                for info in await broker.config.connection_state.stream.streams_info()}
    finally:
        await broker.stop()


async def test_the_embedded_nats_server_takes_stream_caps_larger_than_the_disk_free(tmp_path):
    """Stream caps above 75 % of the disk free (nats-server's own file storage when none is configured): a server
    run with the embedded stack's configuration creates the streams with them; one with nats-server's default
    refuses them, as it refused the platform's 9 GiB on a host with under ~12 GiB free (every stack of a test run
    failed to start there)."""
    cap = shutil.disk_usage(tmp_path).free  # more than the default allows on any disk
    settings = Settings(logs={"stream_max_bytes": cap})
    (tmp_path / "default").mkdir()
    with local_nats_server(tmp_path / "default", jetstream=True, file_store=None) as url:
        with pytest.raises(RailyardError, match="err_code 10047"):
            await _create_streams(url, settings.model_copy(update={"nats": settings.nats.model_copy(
                update={"url": url})}))
    (tmp_path / "embedded").mkdir()
    nats_server(StackSettings(data_dir=tmp_path / "embedded"), tmp_path / "embedded",
                jetstream_file_store([settings.nats.events_max_bytes, cap]))
    with local_nats_server(tmp_path / "embedded", jetstream=True, config=tmp_path / "embedded" / "nats.conf") as url:
        made = await _create_streams(url, settings.model_copy(update={"nats": settings.nats.model_copy(
            update={"url": url})}))
    assert made == {subjects.INFERENCE_LOGS_STREAM: cap, subjects.EVENTS_STREAM: settings.nats.events_max_bytes}


def test_a_start_on_a_disk_with_less_free_than_the_stream_caps_warns_naming_the_settings(tmp_path, capsys):
    from shared.embedded.stack import EmbeddedStack

    free = shutil.disk_usage(tmp_path).free
    short = EmbeddedStack(Settings(stack=StackSettings(data_dir=tmp_path), logs={"stream_max_bytes": 2 * free}))
    short.warn_if_disk_is_short()
    warned = capsys.readouterr().err
    assert "railyard: warning:" in warned and "RAILYARD_LOGS__STREAM_MAX_BYTES" in warned, warned
    EmbeddedStack(Settings(stack=StackSettings(data_dir=tmp_path), logs={"stream_max_bytes": 1024**2},
                           nats={"events_max_bytes": 1024**2})).warn_if_disk_is_short()
    assert capsys.readouterr().err == ""

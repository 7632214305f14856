"""The embedded nats-server's command line and environment (shared/embedded/servers.py: nats_server)."""

from shared.embedded.servers import nats_server
from shared.settings import StackSettings


def test_nats_server_runs_one_go_thread_by_default_and_keeps_fsync_always(tmp_path):
    spec = nats_server(StackSettings(data_dir=tmp_path), tmp_path)
    assert spec.env["GOMAXPROCS"] == "1"
    assert "sync_interval: always" in (tmp_path / "nats.conf").read_text()  # acknowledged log data stays durable


def test_nats_server_gomaxprocs_zero_leaves_gos_default(tmp_path):
    assert "GOMAXPROCS" not in nats_server(StackSettings(data_dir=tmp_path, nats_gomaxprocs=0), tmp_path).env
    assert nats_server(StackSettings(data_dir=tmp_path, nats_gomaxprocs=2), tmp_path).env["GOMAXPROCS"] == "2"

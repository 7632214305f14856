"""The embedded SeaweedFS's security.toml and certificates (shared/embedded/weed_security.py); that SeaweedFS
enforces them is tests/integration/test_storage_ports.py."""

from __future__ import annotations

import stat
import tomllib

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from shared.embedded import weed_security
from shared.embedded.servers import _generated_secrets, seaweedfs_server
from shared.settings import StackSettings


def test_the_config_holds_every_key_and_a_certificate_for_every_grpc_role_all_private(tmp_path):
    keys = weed_security.generated_keys()
    folder = weed_security.write_security_config(tmp_path / "weed", keys, "127.0.0.1")
    config = tomllib.loads((folder / "security.toml").read_text())
    assert config["jwt"]["signing"]["key"] == keys["weed_jwt_signing_key"]
    assert config["jwt"]["signing"]["read"]["key"] == keys["weed_jwt_signing_read_key"]
    assert config["jwt"]["filer_signing"]["key"] == keys["weed_jwt_filer_signing_key"]
    assert config["jwt"]["filer_signing"]["read"]["key"] == keys["weed_jwt_filer_signing_read_key"]
    assert len(set(keys.values())) == 4 and all(len(key) >= 43 for key in keys.values())
    assert config["grpc"]["ca"] == str(folder / "ca.crt")
    for role in ("master", "volume", "filer", "s3", "client"):
        assert config["grpc"][role] == {"cert": str(folder / "seaweedfs.crt"), "key": str(folder / "seaweedfs.key")}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "seaweedfs.crt", "seaweedfs.key", "security.toml"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())


def test_the_certificate_is_the_cas_for_client_and_server_and_kept_across_starts(tmp_path):
    folder = weed_security.write_security_config(tmp_path / "weed", weed_security.generated_keys(), "127.0.0.1")
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((folder / "seaweedfs.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    assert not ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    before = (folder / "seaweedfs.crt").read_bytes()
    weed_security.write_security_config(folder, weed_security.generated_keys(), "127.0.0.1")
    assert (folder / "seaweedfs.crt").read_bytes() == before
    (folder / "seaweedfs.key").unlink()  # a lost key: both are made again
    weed_security.write_security_config(folder, weed_security.generated_keys(), "127.0.0.1")
    assert (folder / "seaweedfs.crt").read_bytes() != before and (folder / "seaweedfs.key").is_file()


def test_weed_reads_the_stacks_config_directory_only_and_keeps_http_apis_off(tmp_path):
    from shared.embedded.servers import Secrets

    secrets = Secrets(_generated_secrets())
    spec = seaweedfs_server(StackSettings(data_dir=tmp_path), tmp_path, secrets)
    config_dir = tmp_path / "weed"
    assert spec.argv[1:3] == [f"-config_dir={config_dir}", "server"]
    assert "-disableHttp" in spec.argv
    assert spec.env["HOME"] == str(config_dir)  # not the user's ~/.seaweedfs
    config = tomllib.loads((config_dir / "security.toml").read_text())
    assert config["jwt"]["signing"]["read"]["key"] == secrets.values["weed_jwt_signing_read_key"]

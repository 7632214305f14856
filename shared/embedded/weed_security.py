"""The embedded SeaweedFS's `security.toml`: without it, its master, volume server and filer answer anyone on
the machine (a GET on the filer port returned any stored object, a DELETE removed it, `weed shell` read and
removed every bucket's files over gRPC), whatever the S3 gateway's access keys say.

Written at every start (the certificates on the first) into `<data>/weed/` (mode 0700, files 0600), which
`weed -config_dir` names first (and weed's HOME, so the user's `~/.seaweedfs` or another stack's files are
never read). It holds:

- four JWT keys (kept in the secrets file): `jwt.signing` and `jwt.signing.read` (the volume server accepts a
  write/delete or a read only with a token signed by them; the master and the filer sign them for their own
  requests), `jwt.filer_signing` and `jwt.filer_signing.read` (the same for the filer's HTTP API; the S3
  gateway signs its own requests);
- mutual TLS on every gRPC port (master, volume, filer, S3 gateway, and what they dial): a CA and one
  certificate, made on first start with the CA's key thrown away, so a client without the certificate's key
  (in this directory only) is refused at the handshake. This shuts what the JWT keys leave open: the gRPC
  APIs check no token (the filer's lists, reads, writes and deletes entries; the master hands out volume
  tokens for any file id).

The master's HTTP API hands out the same tokens (`/dir/lookup?fileId=..&read=yes` answers one in its
`Authorization` header) and deletes collections (`/col/delete`) for anyone; the stack turns it off with
`weed server -disableHttp` (servers.seaweedfs_server), as nothing of ours speaks to it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets as rnd
import subprocess
import sys
from pathlib import Path

# names in the stack's secrets file; generated on first start like its other secrets (servers._generated_secrets)
JWT_KEYS = {
    "weed_jwt_signing_key": "jwt.signing",
    "weed_jwt_signing_read_key": "jwt.signing.read",
    "weed_jwt_filer_signing_key": "jwt.filer_signing",
    "weed_jwt_filer_signing_read_key": "jwt.filer_signing.read",
}
# every gRPC role of `weed server -filer -s3`, and `grpc.client` for what the S3 gateway dials
GRPC_ROLES = ("master", "volume", "filer", "s3", "client")
CERTIFICATE_FILES = ("ca.crt", "seaweedfs.crt", "seaweedfs.key")


def generated_keys() -> dict[str, str]:
    """Fresh JWT signing keys (HS256; 256 bits each)."""
    return {name: rnd.token_urlsafe(32) for name in JWT_KEYS}


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _certificates(host: str) -> tuple[bytes, bytes, bytes]:
    """A CA certificate, and a certificate it signed with its key (PEM): one identity for every SeaweedFS
    server and client of the stack (SeaweedFS checks the chain, not names). EC P-256: ~1 ms to make."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = {"not_valid_before": now - datetime.timedelta(hours=1),
             "not_valid_after": now + datetime.timedelta(days=3650)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "railyard embedded SeaweedFS CA")])
    ca = (x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        if ipaddress.ip_address(host) != ipaddress.ip_address("127.0.0.1"):
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder(
                subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "railyard-seaweedfs")]),
                issuer_name=ca_name, public_key=key.public_key(), serial_number=x509.random_serial_number(),
                **valid)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), cert.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def write_certificates(config_dir: Path, host: str) -> None:
    """A new CA certificate and the stack's certificate and key in config_dir (mode 0600)."""
    for name, data in zip(CERTIFICATE_FILES, _certificates(host), strict=True):
        _write_private(config_dir / name, data)


def ensure_certificates(config_dir: Path, host: str) -> None:
    """The certificates, made on first start (by a short-lived process, so the supervisor, which stays up as
    long as the stack, does not keep `cryptography` (~11 MiB) for it) and kept: the CA's key is gone, so no one
    can sign another, and SeaweedFS checks the chain, not names, so a changed host needs no new ones."""
    if all((config_dir / name).is_file() for name in CERTIFICATE_FILES):
        return
    result = subprocess.run([sys.executable, "-m", "shared.embedded.weed_security", str(config_dir), host],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"could not make SeaweedFS's TLS certificates: {last[0]}")


def write_security_config(config_dir: Path, keys: dict[str, str], host: str) -> Path:
    """`<config_dir>/security.toml` with the JWT keys and gRPC mutual TLS (the certificates made if missing);
    returns the directory to give `weed -config_dir`."""
    config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config_dir.chmod(0o700)
    ensure_certificates(config_dir, host)
    ca, cert, key = (config_dir / name for name in CERTIFICATE_FILES)
    lines = []
    for name, section in JWT_KEYS.items():
        # expiry as SeaweedFS's defaults: writes 10 s, filer reads 60 s (a token is minted per request)
        expires = 60 if section == "jwt.filer_signing.read" else 10
        lines += [f"[{section}]", f'key = "{keys[name]}"', f"expires_after_seconds = {expires}", ""]
    lines += ["[grpc]", f'ca = "{ca}"', ""]
    for role in GRPC_ROLES:
        lines += [f"[grpc.{role}]", f'cert = "{cert}"', f'key = "{key}"', ""]
    path = config_dir / "security.toml"
    _write_private(path, "\n".join(lines).encode())
    return config_dir


# every other configuration file `weed server -filer -s3` reads (SeaweedFS 4.4x: weed/command/server.go,
# weed/server/filer_server.go, weed/credential/config_loader.go); each is looked for in -config_dir first, then in
# ./, ~/.seaweedfs, /usr/local/etc/seaweedfs and /etc/seaweedfs: ours, present, end the search in our directory.
# filer.toml names the store the filer uses without one (leveldb2 in <-dir>/filerldb2), the others are empty
# (SeaweedFS's defaults).
OTHER_CONFIGS = ("master", "volume", "filer", "notification", "credential")


def write_other_configs(config_dir: Path, store: Path) -> None:
    """SeaweedFS's other `*.toml` files in config_dir, so that none is read from anywhere else on the machine."""
    for name in OTHER_CONFIGS:
        text = f"[leveldb2]\nenabled = true\ndir = {json.dumps(str(store / 'filerldb2'))}\n" if name == "filer" else ""
        _write_private(config_dir / f"{name}.toml", text.encode())


if __name__ == "__main__":
    write_certificates(Path(sys.argv[1]), sys.argv[2])

"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with a key from the environment.

`cryptography` (~6 MiB of RSS) is imported when a secret is first sealed or opened, not when the registry starts
(docs/performance.md, "Memory"); the key is still checked at start, as Fernet checks it."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from shared.errors import RailyardError, Unavailable

if TYPE_CHECKING:
    from cryptography.fernet import Fernet


class SecretBox:
    """Encrypts and decrypts small JSON values; the key never leaves the process."""

    def __init__(self, key: str) -> None:
        if key:
            try:
                valid = len(base64.urlsafe_b64decode(key.encode())) == 32
            except (binascii.Error, ValueError):
                valid = False
            if not valid:  # Fernet's own words for the same check
                raise ValueError("Fernet key must be 32 url-safe base64-encoded bytes.")
        self._key = key
        self._fernet: Fernet | None = None

    @staticmethod
    def new_key() -> str:
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode()

    def _require(self) -> Fernet:
        if not self._key:
            raise Unavailable("secret storage is not configured (set RAILYARD_REGISTRY__SECRETS_KEY)")
        if self._fernet is None:
            from cryptography.fernet import Fernet

            self._fernet = Fernet(self._key.encode())
        return self._fernet

    def seal(self, value: Any) -> bytes:
        return self._require().encrypt(json.dumps(value).encode())

    def open(self, sealed: bytes) -> Any:
        fernet = self._require()
        from cryptography.fernet import InvalidToken

        try:
            return json.loads(fernet.decrypt(bytes(sealed)))
        except InvalidToken:
            raise RailyardError("a stored secret cannot be decrypted with the configured key") from None

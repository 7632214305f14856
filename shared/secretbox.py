"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with a key from the environment."""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from shared.errors import RailyardError, Unavailable


class SecretBox:
    """Encrypts and decrypts small JSON values; the key never leaves the process."""

    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode()) if key else None

    @staticmethod
    def new_key() -> str:
        return Fernet.generate_key().decode()

    def _require(self) -> Fernet:
        if self._fernet is None:
            raise Unavailable("secret storage is not configured (set RAILYARD_REGISTRY__SECRETS_KEY)")
        return self._fernet

    def seal(self, value: Any) -> bytes:
        return self._require().encrypt(json.dumps(value).encode())

    def open(self, sealed: bytes) -> Any:
        try:
            return json.loads(self._require().decrypt(bytes(sealed)))
        except InvalidToken:
            raise RailyardError("a stored secret cannot be decrypted with the configured key") from None

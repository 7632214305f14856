"""The auth service makes a signing key at start only when there is no active one: an RSA-2048 key costs 0.06-0.2 s
of CPU, which every start spent and threw away once the first start had made one (store.ensure_first_key kept the
existing key). With none, it is made and offered as before."""

from __future__ import annotations

import asyncio

from services.auth import handlers, store

POOL = object()


def test_an_active_key_is_kept_without_making_one(monkeypatch):
    async def active_key(pool):
        assert pool is POOL
        return {"kid": "k1", "private_pem": "..."}

    def new_key():
        raise AssertionError("a key was made while one is active")

    async def ensure_first_key(*args):
        raise AssertionError("a first key was offered while one is active")

    monkeypatch.setattr(store, "active_key", active_key)
    monkeypatch.setattr(handlers, "_new_key", new_key)
    monkeypatch.setattr(store, "ensure_first_key", ensure_first_key)
    asyncio.run(handlers.ensure_signing_key(POOL))


def test_without_an_active_key_one_is_made_and_offered(monkeypatch):
    offered = []

    async def active_key(pool):
        return None

    async def ensure_first_key(pool, kid, pem, jwk):
        offered.append((pool, kid, pem, jwk))
        return True

    monkeypatch.setattr(store, "active_key", active_key)
    monkeypatch.setattr(handlers, "_new_key", lambda: ("kid-1", "pem", {"kid": "kid-1"}))
    monkeypatch.setattr(store, "ensure_first_key", ensure_first_key)
    asyncio.run(handlers.ensure_signing_key(POOL))
    assert offered == [(POOL, "kid-1", "pem", {"kid": "kid-1"})]

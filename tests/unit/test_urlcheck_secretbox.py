from __future__ import annotations

import pytest

from shared.errors import InvalidRequest, RailyardError, Unavailable
from shared.secretbox import SecretBox
from shared.urlcheck import check_outbound_url


@pytest.mark.parametrize("url, development, message", [
    ("ftp://example.com/x", True, "http or https"),
    ("http:///nohost", True, "no host"),
    ("http://169.254.169.254/latest", True, "link-local"),
    ("http://[fe80::1]/", True, "link-local"),
    ("http://metadata.google.internal/", True, "metadata"),
    ("http://127.0.0.1:5000/", False, "development"),
    ("http://10.1.2.3/", False, "development"),
    ("http://0.0.0.0/", True, "cannot be used"),
])
async def test_unsafe_urls(url, development, message):
    with pytest.raises(InvalidRequest, match=message):
        await check_outbound_url(url, development=development)


async def test_loopback_is_fine_in_development():
    assert await check_outbound_url("http://127.0.0.1:5000/api", development=True) == "http://127.0.0.1:5000/api"


def test_secret_box_round_trip_and_wrong_key():
    box = SecretBox(SecretBox.new_key())
    sealed = box.seal({"password": "hunter22"})
    assert b"hunter22" not in sealed and box.open(sealed) == {"password": "hunter22"}
    with pytest.raises(RailyardError, match="cannot be decrypted"):
        SecretBox(SecretBox.new_key()).open(sealed)
    with pytest.raises(Unavailable, match="SECRETS_KEY"):
        SecretBox("").seal("x")

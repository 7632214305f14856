"""The pure parts of the web UI's sign-in (authorization code flow with PKCE): RFC 7636's S256, the authorization
request's checks and the registered redirect URI. The flow itself runs through the real gateway in
tests/integration/test_ui_sign_in.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.auth.handlers import CODE_CHALLENGE, CODE_VERIFIER, s256_challenge
from services.gateway.authorize import checked_params, page, registered_redirect_uri
from shared.errors import InvalidRequest

UI = "http://127.0.0.1:18000/"


def test_s256_is_rfc_7636s_example():
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"  # RFC 7636 appendix B
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert CODE_VERIFIER.fullmatch(verifier) and CODE_CHALLENGE.fullmatch(s256_challenge(verifier))
    assert not CODE_VERIFIER.fullmatch("x" * 42) and not CODE_VERIFIER.fullmatch("x" * 129)
    assert not CODE_VERIFIER.fullmatch("x" * 42 + "/")


def good(**override: str) -> dict[str, str]:
    return {"response_type": "code", "client_id": "railyard-ui", "redirect_uri": UI, "state": "s",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256",
            **override}


@pytest.mark.parametrize(("override", "code", "said"), [
    ({"redirect_uri": "http://evil.example/"}, "invalid_request", "redirect_uri"),
    ({"redirect_uri": UI + "?x=1"}, "invalid_request", "redirect_uri"),
    ({"redirect_uri": UI.rstrip("/")}, "invalid_request", "redirect_uri"),
    ({"client_id": "api-client"}, "invalid_client", "client_id"),
    ({"response_type": "token"}, "unsupported_response_type", "response_type"),
    ({"code_challenge_method": "plain"}, "invalid_request", "S256"),
    ({"code_challenge_method": ""}, "invalid_request", "S256"),
    ({"code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c="}, "invalid_request", "code_challenge"),
    ({"state": ""}, "invalid_request", "state"),
    ({"state": "s" * 513}, "invalid_request", "state"),
])
def test_authorization_requests_are_checked(override, code, said):
    with pytest.raises(InvalidRequest) as refused:
        checked_params(good(**override), UI)
    assert refused.value.code == code and said in refused.value.msg
    assert checked_params(good(), UI) == good()


def test_the_registered_redirect_uri_is_the_uis_page():
    request = SimpleNamespace(url=SimpleNamespace(scheme="http", netloc="127.0.0.1:18000"))
    assert registered_redirect_uri("", request) == UI
    assert registered_redirect_uri("https://railyard.example.com/", request) == "https://railyard.example.com/"


def test_the_form_escapes_what_it_echoes():
    shown = page(good(state='"><script>x</script>'), "t", username="<b>")
    text = shown.body.decode()
    assert "<script>x" not in text and "&lt;b&gt;" in text and "&quot;&gt;&lt;script&gt;" in text
    assert shown.headers["x-frame-options"] == "DENY" and shown.headers["cache-control"] == "no-store"

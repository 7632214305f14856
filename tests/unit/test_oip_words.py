"""services/gateway/oip.in_oip_words: the engine's errors, which name a request's tensors columns (the records and
Arrow routes' word), are said with OIP's word, input, on the Open Inference Protocol route; only the engine's own
phrasings change, the class, code and status never do (tests/integration/test_oip_words.py runs them for real)."""

from __future__ import annotations

import pytest

from services.gateway.oip import in_oip_words
from shared.errors import Conflict, InvalidRequest, Unavailable

SAID = {
    "column 'tensor': NaN or infinite values": "input 'tensor': NaN or infinite values",
    'column "it\'s": null values': 'input "it\'s": null values',
    "the model takes columns ['a', 'b']: missing columns ['b']; unexpected columns ['column c']":
        "the model takes inputs ['a', 'b']: missing inputs ['b']; unexpected inputs ['column c']",
    "the model takes columns ['a']: unexpected columns ['x']": "the model takes inputs ['a']: unexpected inputs ['x']",
    "the A/B split hashes column 'user', which the request lacks":
        "the A/B split hashes input 'user', which the request lacks",
    # not the engine's naming of a request's tensor: as it is
    "the model returned 3 rows for 2 (equal rows rule)": "the model returned 3 rows for 2 (equal rows rule)",
    "input 'x': data is not FP32": "input 'x': data is not FP32",
}


@pytest.mark.parametrize("engine", SAID, ids=range(len(SAID)))
def test_the_engines_phrasings_become_oips_and_nothing_else_changes(engine):
    error = in_oip_words(InvalidRequest(engine))
    assert isinstance(error, InvalidRequest) and error.code == "invalid_request" and error.status == 400
    assert error.msg == SAID[engine] and str(error) == SAID[engine]


def test_other_errors_keep_their_class_and_code():
    stale = in_oip_words(Conflict("column 'x' typed for another version", code="stale_route"))
    assert isinstance(stale, Conflict) and stale.code == "stale_route" and stale.msg.startswith("input 'x'")
    down = Unavailable("deployment 'a-1' has no running engine; retry shortly")
    assert in_oip_words(down) is down and down.msg == "deployment 'a-1' has no running engine; retry shortly"

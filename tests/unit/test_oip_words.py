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


def _engine_says(model_takes: list[str], request_has: list[str]) -> str:
    """The engine's own message for a request's columns against a model's inputs (runtimes.check_columns)."""
    import pyarrow as pa

    from services.engine.runtimes import OnnxRuntime

    runtime = OnnxRuntime.__new__(OnnxRuntime)
    runtime.inputs = [(name, [None, 1], None) for name in model_takes]
    table = pa.Table.from_arrays([pa.array([1.0])] * len(request_has), names=request_has)
    with pytest.raises(InvalidRequest) as refused:
        runtime.check_columns(table)
    return refused.value.msg


NAMED_LIKE_THE_PHRASES = {  # (the model's inputs, the request's columns): names holding the words the engine says
    "a column named like the missing phrase": (["tensor"], ["tensor", "missing columns ["]),
    "an input named like the unexpected phrase": (["unexpected columns [", "x"], ["x", "y"]),
    "quotes, brackets and separators": (["a"], ["a", "it's]: missing columns [", 'say "unexpected columns [x"]; ']),
    "a column named like the whole message": (["t"], ["the model takes columns ['t']: missing columns ['t']"]),
    "escapes": (["t\\n"], ["t\n", "\\'"]),
}


@pytest.mark.parametrize("names", NAMED_LIKE_THE_PHRASES.values(), ids=NAMED_LIKE_THE_PHRASES.keys())
def test_names_in_the_message_are_never_rewritten(names):
    """in_oip_words replaced the phrases wherever they first occurred: a request's column (or a model's input) named
    `missing columns [` was answered as `missing inputs [`, a name the caller never sent. Now the lists are read
    whole and only the engine's words change."""
    model_takes, request_has = names
    engine = _engine_says(model_takes, request_has)
    said = in_oip_words(InvalidRequest(engine)).msg
    missing = sorted(set(model_takes) - set(request_has))
    unexpected = sorted(set(request_has) - set(model_takes))
    parts = [f"missing inputs {missing}" if missing else "", f"unexpected inputs {unexpected}" if unexpected else ""]
    assert said == f"the model takes inputs {sorted(model_takes)}: " + "; ".join(p for p in parts if p), engine


def test_a_list_message_not_in_the_engines_form_is_left_as_it_came():
    for odd in ("the model takes columns ['a'", "the model takes columns ['a']: nothing missing",
                "the model takes columns ['a']: missing columns ['b'] unexpected columns ['c']"):
        assert in_oip_words(InvalidRequest(odd)).msg == odd


def test_other_errors_keep_their_class_and_code():
    stale = in_oip_words(Conflict("column 'x' typed for another version", code="stale_route"))
    assert isinstance(stale, Conflict) and stale.code == "stale_route" and stale.msg.startswith("input 'x'")
    down = Unavailable("deployment 'a-1' has no running engine; retry shortly")
    assert in_oip_words(down) is down and down.msg == "deployment 'a-1' has no running engine; retry shortly"


def _route(batchable: bool, names: list[str] | None):
    import base64
    from types import SimpleNamespace

    import pyarrow as pa

    schema = None if names is None else base64.b64encode(
        pa.schema([pa.field(n, pa.float32()) for n in names]).serialize().to_pybytes()).decode()
    return SimpleNamespace(batchable=batchable, output_schema=schema)


def test_requested_outputs_are_checked_where_the_route_knows_every_output():
    from services.gateway.oip import check_outputs

    asked = {"outputs": [{"name": "y"}, {"name": "z" * 100}]}
    with pytest.raises(InvalidRequest, match=r"output 'z{64}' \(100 characters\) is not an output of the model; its "
                                             r"outputs are \['y'\]"):
        check_outputs(asked, _route(True, ["y"]))
    check_outputs({"outputs": [{"name": "y"}]}, _route(True, ["y", "w"]))
    check_outputs({}, _route(True, ["y"]))  # no outputs named: all of them
    check_outputs(asked, _route(False, ["y"]))  # an A/B arm or a Python step may answer others: not checked
    check_outputs(asked, _route(True, None))


@pytest.mark.parametrize("outputs", [{"name": "y"}, ["y"], [{"name": 5}], [None], "y"], ids=range(5))
def test_outputs_must_be_a_list_of_named_objects(outputs):
    import json

    from services.gateway.oip import parse_request

    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                       "outputs": outputs}).encode()
    with pytest.raises(InvalidRequest, match="`outputs` must be a list of the outputs to answer"):
        parse_request(body, None)
    parse_request(body.replace(json.dumps(outputs).encode(), b'[{"name": "y", "parameters": {}}]'), None)

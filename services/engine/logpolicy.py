"""A deployment's inference log policy: which rows of its requests are logged (docs/logs.md, "Log policy").

Set per pipeline deployment in `engine_config.log_policy` (the deployer checks it):
- `{"mode": "all"}` (the default): every row, inputs and outputs;
- `{"mode": "sampled", "fraction": 0.1}`: each row with that probability (rows of one request independently);
- `{"mode": "outputs"}`: every row, outputs only (no `in.*` columns: the inputs are not stored);
- `{"mode": "off"}`: nothing.
Challengers' outputs follow the rows they belong to.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

from shared.errors import InvalidRequest, echo

if TYPE_CHECKING:  # the deployer checks policies without loading numpy and pyarrow
    from shared.logrecords import InferenceRecord

MODES = ("all", "sampled", "outputs", "off")


def check_batching(engine_config: dict[str, Any]) -> None:
    """engine_config's batching keys (services/engine/batching.py), or InvalidRequest naming the key and its value.
    A NaN delay and a fractional or boolean row count are refused: float("nan") passed every comparison and was
    stored (the batcher then slept NaN seconds), and int() cut 2.5 rows to 2 and `true` to 1 (session 37)."""
    raw_delay, raw_rows = engine_config.get("batch_max_delay_ms", 0), engine_config.get("batch_max_rows", 1)
    delay = math.nan
    beyond = ""
    if not isinstance(raw_delay, bool):
        try:
            delay = float(raw_delay)
        except (TypeError, ValueError):
            pass
        except OverflowError:  # -10**400 is negative, but the engine's float() of it raises: said so
            beyond = " (an integer past a float's range; -1 turns batching off)"
    if math.isnan(delay) or delay > 100:
        raise InvalidRequest(f"engine_config.batch_max_delay_ms must be a number of at most 100 (negative: no "
                             f"batching), not {echo(str(raw_delay))}{beyond}")
    rows = None  # what the engine's int() reads whole (batching.batching_config): an int, 3.0, "3"
    if isinstance(raw_rows, int) and not isinstance(raw_rows, bool):
        rows = raw_rows
    elif isinstance(raw_rows, float) and raw_rows.is_integer():
        rows = int(raw_rows)
    elif isinstance(raw_rows, str):
        with contextlib.suppress(ValueError):
            rows = int(raw_rows)
    if rows is None or rows < 1:
        raise InvalidRequest(f"engine_config.batch_max_rows must be an integer of at least 1, not "
                             f"{echo(str(raw_rows))}")


def check_log_policy(policy: Any) -> dict[str, Any]:
    """The policy as stored, or InvalidRequest saying what is wrong."""
    if policy is None:
        return {"mode": "all"}
    if isinstance(policy, str):
        policy = {"mode": policy}
    if not isinstance(policy, dict) or policy.get("mode") not in MODES or set(policy) - {"mode", "fraction"}:
        raise InvalidRequest("engine_config.log_policy must be {\"mode\": one of all, sampled, outputs, off} "
                             "(sampled also takes \"fraction\", between 0 and 1)")
    if policy["mode"] != "sampled":
        if "fraction" in policy:
            raise InvalidRequest("engine_config.log_policy: fraction goes with mode sampled only")
        return {"mode": policy["mode"]}
    fraction = policy.get("fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise InvalidRequest("engine_config.log_policy: mode sampled needs a fraction in (0, 1], e.g. 0.1")
    return {"mode": "sampled", "fraction": float(fraction)}


class LogPolicy:
    """Applies a deployment's policy to each request's record before the log batcher gets it."""

    def __init__(self, mode: str = "all", fraction: float = 1.0, seed: int | None = None) -> None:
        import numpy as np

        self.mode = mode
        self.fraction = fraction
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_config(cls, engine_config: dict[str, Any]) -> LogPolicy:
        policy = check_log_policy(engine_config.get("log_policy"))
        return cls(policy["mode"], policy.get("fraction", 1.0))

    def apply(self, record: InferenceRecord) -> InferenceRecord | None:
        """The record to log (maybe with fewer rows or columns), or None."""
        if self.mode == "all":
            return record
        if self.mode == "off":
            return None
        if self.mode == "outputs":
            record.inputs = record.inputs.select([])  # no columns, the same number of rows
            return record
        import numpy as np
        import pyarrow as pa

        rows = record.inputs.num_rows
        keep = np.flatnonzero(self.rng.random(rows) < self.fraction)
        if not len(keep):
            return None
        if len(keep) == rows:
            return record
        take = pa.array(keep)
        record.inputs, record.outputs = record.inputs.take(take), record.outputs.take(take)
        record.shadows = {name: table.take(take) for name, table in record.shadows.items()}
        return record

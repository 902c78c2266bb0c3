"""What a node reports with a result (`metrics`: the runner's figures, such as seconds, images, flops, loss): a
flat JSON object of at most MAX_KEYS short names, each a finite number, a boolean or a short string. The
marketplace reads these figures (ETAs, the network's measured speed, round charts), so anything else is refused at
the edge with a message naming the field, and never reaches a computation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import StrictBool, StrictFloat, StrictInt, StringConstraints, TypeAdapter, ValidationError

from protocol.base import ProtocolError, describe

MAX_KEYS = 64
Key = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Value = StrictBool | Annotated[int, StrictInt] | StrictFloat | Annotated[str, StringConstraints(max_length=256)]
_METRICS: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[Key, Value])
_INT_BOUND = 2**63


def metrics_check(data: Any) -> dict[str, Any]:
    """`data` as result metrics, or ProtocolError naming what is wrong (not an object, too many keys, a nested or
    non-finite value, a string or key too long)."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"metrics: expected a JSON object, got {type(data).__name__}")
    if len(data) > MAX_KEYS:
        raise ProtocolError(f"metrics: {len(data)} keys, at most {MAX_KEYS}")
    try:
        checked = _METRICS.validate_python(dict(data))
    except ValidationError as exc:
        raise ProtocolError(f"metrics: {describe(exc)}") from None
    for key, value in checked.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(f"metrics: field '{key}': must be a finite number, got {value}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT_BOUND:
            raise ProtocolError(f"metrics: field '{key}': must be below 2**63 in magnitude")
    return checked

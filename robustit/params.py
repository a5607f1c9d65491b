"""Parameters of a registered component (an attack, a defense): the class's defaults
overridden by the config's params, unknown names rejected, and value checks whose errors
name the component (`owner`, e.g. "attack 'sig'") and the parameter."""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_params(owner: str, defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """{**defaults, **given} as plain JSON values, an integer given for a float default read as
    that float (so alpha=2 and alpha=2.0 are one setting); a ValueError for unknown or
    non-JSON params."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise ValueError(f"unknown parameter(s) {unknown} for {owner}; known: {known}")
    given = {k: float(v) if _is_int(v) and isinstance(defaults[k], float) else v for k, v in given.items()}
    try:
        return json.loads(json.dumps({**defaults, **given}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"parameters of {owner} must be JSON values: {error}") from error


def check_number(owner: str, key: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    """`value` as a float, or a ValueError unless it is a finite number in [low, high]
    ((low, high] with `low_open`)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value > high or value < low or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"parameter {key!r} of {owner} must be a number in {bounds}, got {value!r}")
    return float(value)


def check_int(owner: str, key: str, value: Any, low: int, high: int | None = None) -> int:
    """`value`, or a ValueError unless it is an integer in [low, high] (no upper bound if None)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"parameter {key!r} of {owner} must be an integer {bound}, got {value!r}")
    return value


def check_choice(owner: str, key: str, value: Any, choices: Sequence[Any]) -> Any:
    """`value`, or a ValueError unless it is one of `choices` (booleans only match booleans)."""
    if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
        raise ValueError(f"parameter {key!r} of {owner} must be one of {list(choices)}, got {value!r}")
    return value

"""Value checks of configuration: the fields of a config section (train, eval, data, ...) and
the parameters of a registered component (an attack, a defense), whose defaults the class
declares and the config's params override, unknown names rejected.

Every check raises a `FieldError` naming the field and what is wrong with it, and, for a
component's parameter, the component (`owner`, e.g. "attack 'sig'"); `robustit.config` adds
the field's dotted path and the file or `--set` that gave the value."""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence


class FieldError(ValueError):
    """A bad value of the field `field` (a dotted path once `within` prefixes it): `problem`
    says what is wrong, `owner` names the component whose parameter it is, if any."""

    def __init__(self, field: str, problem: str, owner: str | None = None) -> None:
        self.field, self.problem, self.owner = field, problem, owner
        super().__init__(f"parameter {field!r} of {owner} {problem}" if owner else f"{field}: {problem}")

    def within(self, prefix: str) -> FieldError:
        """The same error with `prefix` (e.g. "train.") put before the field's name."""
        return FieldError(f"{prefix}{self.field}", self.problem)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_params(owner: str, defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """{**defaults, **given} as plain JSON values, an integer given for a float default read as
    that float (so alpha=2 and alpha=2.0 are one setting); a FieldError for unknown names and a
    ValueError for non-JSON values."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise FieldError(unknown[0], f"unknown parameter(s) {unknown} for {owner}; known: {known}")
    given = {k: float(v) if _is_int(v) and isinstance(defaults[k], float) else v for k, v in given.items()}
    try:
        return json.loads(json.dumps({**defaults, **given}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"parameters of {owner} must be JSON values: {error}") from error


def check_number(owner: str | None, key: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    """`value` as a float, or a FieldError unless it is a finite number in [low, high]
    ((low, high] with `low_open`)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value > high or value < low or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise FieldError(key, f"must be a number in {bounds}, got {value!r}", owner)
    return float(value)


def check_int(owner: str | None, key: str, value: Any, low: int, high: int | None = None) -> int:
    """`value`, or a FieldError unless it is an integer in [low, high] (no upper bound if None)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise FieldError(key, f"must be an integer {bound}, got {value!r}", owner)
    return value


def check_choice(owner: str | None, key: str, value: Any, choices: Sequence[Any]) -> Any:
    """`value`, or a FieldError unless it is one of `choices` (booleans only match booleans)."""
    if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
        raise FieldError(key, f"must be one of {list(choices)}, got {value!r}", owner)
    return value

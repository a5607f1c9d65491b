import math

import pytest

from robustit.params import check_choice, check_int, check_number, resolve_params


def test_resolve_params_overrides_defaults_and_rejects_unknown_or_non_json():
    assert resolve_params("attack 'x'", {"a": 1, "b": (1, 2)}, {"a": 3}) == {"a": 3, "b": [1, 2]}
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['c'\] for attack 'x'; known: a"):
        resolve_params("attack 'x'", {"a": 1}, {"c": 2})
    with pytest.raises(ValueError, match="JSON values"):
        resolve_params("defense 'y'", {"a": 1}, {"a": object()})


def test_checks_name_owner_and_parameter():
    assert check_number("defense 'aar'", "gamma", 1, 0.0, 1.0) == 1.0
    for bad in (True, "0.5", math.nan, 1.5):
        with pytest.raises(ValueError, match=r"parameter 'gamma' of defense 'aar' must be a number in \[0.0, 1.0\]"):
            check_number("defense 'aar'", "gamma", bad, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"\(0.0, 1.0\]"):
        check_number("defense 'aar'", "gamma", 0.0, 0.0, 1.0, low_open=True)
    assert check_int("attack 'ssba'", "seed", 3, 0) == 3
    with pytest.raises(ValueError, match="integer >= 0"):
        check_int("attack 'ssba'", "seed", -1, 0)
    with pytest.raises(ValueError, match=r"integer in \[0, 5\]"):
        check_int("attack 'ssba'", "seed", 6, 0, 5)
    assert check_choice("defense 'aar'", "at_inference", False, (True, False)) is False
    with pytest.raises(ValueError, match="one of"):
        check_choice("defense 'aar'", "at_inference", 1, (True, False))

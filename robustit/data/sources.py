"""Data sources by name: each builds the samples of one split from its options.

A source is a function registered in `DATA_SOURCES` and called with keywords only,

    source(split=..., skip_bad=..., report=..., **options) -> list[Sample],

that raises a `DataError` naming the file, the record and the field of the first bad record,
or, with `skip_bad`, leaves each bad record out and adds its error to `report` (a
`LoadReport`); `robustit.data.records` has the checks. Its options (`data.options`) are
checked against its signature when the config loads, before anything is read.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from robustit.data.errors import LoadReport
from robustit.data.karpathy import load_karpathy
from robustit.data.llava import load_llava
from robustit.data.mimicit import load_mimicit
from robustit.data.sample import Sample
from robustit.data.stampcaps import build_stampcaps
from robustit.data.stampcaps_vqa import build_stampcaps_vqa
from robustit.data.vqav2 import load_vqav2
from robustit.params import FieldError
from robustit.registry import Registry

DataSource = Callable[..., list[Sample]]
DATA_SOURCES: Registry[DataSource] = Registry("data source")
DATA_SOURCES.register("stampcaps")(build_stampcaps)
DATA_SOURCES.register("stampcaps_vqa")(build_stampcaps_vqa)
DATA_SOURCES.register("karpathy")(load_karpathy)
DATA_SOURCES.register("vqav2")(load_vqav2)
DATA_SOURCES.register("llava")(load_llava)
DATA_SOURCES.register("mimicit")(load_mimicit)
SET_BY_ROBUSTIT = {"split": "data.train_split / data.test_split / data.pretrain_split", "skip_bad": "data.skip_bad",
                   "report": "robustit"}


def check_source_options(source: str, options: dict[str, Any]) -> None:
    """A FieldError naming the first option of `options` that `source` does not take, or a
    required one it lacks; a KeyError for an unknown source."""
    parameters = inspect.signature(DATA_SOURCES.get(source)).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    names = [name for name in parameters if name not in SET_BY_ROBUSTIT]
    for key in options:
        if key in SET_BY_ROBUSTIT:
            raise FieldError(key, f"is set by {SET_BY_ROBUSTIT[key]}, not as an option")
        if key not in parameters and not takes_any:
            raise FieldError(key, f"is not an option of data source {source!r}; its options: {names}")
    for name, parameter in parameters.items():
        if name not in SET_BY_ROBUSTIT and parameter.default is inspect.Parameter.empty and \
                parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY) and \
                name not in options:
            raise FieldError(name, f"is required by data source {source!r} and missing")


def load_split(
    source: str, split: str, options: dict[str, Any], skip_bad: bool = False, report: LoadReport | None = None
) -> list[Sample]:
    """The samples of `split` from the registered `source`; bad records skipped into `report`
    with `skip_bad`, else the first one raises."""
    return DATA_SOURCES.get(source)(split=split, skip_bad=skip_bad, report=report, **options)

"""Defenses made of several (DESIGN.md section 5): RobustIT = IDR + AAR, and `stack`, whose
members the config names (the combinations of the paper's table 10 as configs).

A `Composite` runs its members in order. Its parameters are the union of theirs, each given
to every member that declares it. Views fold (each member's `augment` sees the views of the
members before it), adapter hooks chain, loss terms merge (terms of one name sum), so the
objective is

    L = sum_v lm_weight_v * L_it(v) + sum_members sum_k term_k,

a training sample passes the members' `training_sample` in order (one member's None leaves
it out), `flags` joins the members' flags, a test input is refused where any member refuses it
(None where none ever refuses), and the other hooks run member by member; the inference
contexts nest.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, ClassVar, Iterator, Sequence

import torch

from robustit.data.sample import Sample
from robustit.defenses.aar import AAR
from robustit.defenses.base import (
    Defense, DefenseBatch, DefenseConfig, Flag, Generate, TuningState, View, build_defense, register_defense,
)
from robustit.defenses.idr import IDR
from robustit.models.base import LMOutput, VisionLanguageModel
from robustit.params import FieldError


class Composite(Defense):
    members: ClassVar[tuple[type[Defense], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.members:
            return
        defaults: dict[str, Any] = {}
        for member in cls.members:
            for key, value in member.defaults.items():
                if defaults.get(key, value) != value:
                    raise TypeError(f"{cls.__name__}: members disagree on the default of {key!r}")
                defaults[key] = value
        cls.defaults = defaults
        cls.hashed_when_set = tuple(key for member in cls.members for key in member.hashed_when_set)

    def __init__(self, config: DefenseConfig) -> None:
        super().__init__(config)
        self.defenses = [
            member(DefenseConfig(member.name, {k: v for k, v in config.params.items() if k in member.defaults}))
            for member in self.members
        ]

    @property
    def test_time_only(self) -> bool:  # type: ignore[override]
        return all(defense.test_time_only for defense in self.defenses)

    @property
    def extra_forward_passes(self) -> int:
        return sum(defense.extra_forward_passes for defense in self.defenses)

    def show_progress(self, on: bool) -> None:
        super().show_progress(on)
        for defense in self.defenses:
            defense.show_progress(on)

    def prepare(self, model: VisionLanguageModel, dataset: Sequence[Sample]) -> None:
        for defense in self.defenses:
            defense.prepare(model, dataset)

    def curate(self, state: TuningState) -> None:
        for defense in self.defenses:
            defense.curate(state)

    def training_sample(self, sample: Sample) -> Sample | None:
        for defense in self.defenses:
            sample = defense.training_sample(sample)
            if sample is None:
                return None
        return sample

    def augment(self, batch: DefenseBatch) -> list[View]:
        for defense in self.defenses:
            batch = DefenseBatch(batch.samples, {view.name: view for view in defense.augment(batch)})
        return list(batch.views.values())

    def adapter_hook(self, activations: torch.Tensor) -> torch.Tensor:
        for defense in self.defenses:
            activations = defense.adapter_hook(activations)
        return activations

    def loss(self, model: VisionLanguageModel, batch: DefenseBatch, outputs: dict[str, LMOutput]) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        for defense in self.defenses:
            for name, term in defense.loss(model, batch, outputs).items():
                terms[name] = terms[name] + term if name in terms else term
        return terms

    def after_step(self, step: int) -> None:
        for defense in self.defenses:
            defense.after_step(step)

    def finalize(self, model: VisionLanguageModel) -> None:
        for defense in self.defenses:
            defense.finalize(model)

    def flags(self) -> list[Flag]:
        return [flag for defense in self.defenses for flag in defense.flags()]

    @contextmanager
    def inference(self, model: VisionLanguageModel) -> Iterator[None]:
        with ExitStack() as stack:
            for defense in self.defenses:
                stack.enter_context(defense.inference(model))
            yield

    def test_time_stats(self) -> dict[str, Any]:
        return {defense.name: stats for defense in self.defenses if (stats := defense.test_time_stats())}

    def filter_input(self, sample: Sample) -> Sample:
        return self.filter_inputs([sample])[0]

    def filter_inputs(self, samples: Sequence[Sample]) -> list[Sample]:
        filtered = list(samples)
        for defense in self.defenses:
            filtered = defense.filter_inputs(filtered)
        return filtered

    def refuse(self, samples: Sequence[Sample], responses: Sequence[str], generate: Generate) -> list[bool] | None:
        votes = [flags for d in self.defenses if (flags := d.refuse(samples, responses, generate)) is not None]
        return [any(flags) for flags in zip(*votes)] if votes else None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{d.name}.{k}": v for d in self.defenses for k, v in d.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        names = {d.name for d in self.defenses}
        stray = sorted(k for k in state if k.split(".", 1)[0] not in names)
        if stray:
            raise ValueError(f"defense {self.name!r} has no member for state {stray}")
        for defense in self.defenses:
            prefix = f"{defense.name}."
            defense.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def training_state(self) -> dict[str, Any]:
        return {f"{d.name}.{k}": v for d in self.defenses for k, v in d.training_state().items()}

    def load_training_state(self, state: dict[str, Any], model: VisionLanguageModel) -> None:
        for defense in self.defenses:
            prefix = f"{defense.name}."
            defense.load_training_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, model)


@register_defense
class RobustIT(Composite):
    """IDR + AAR (paper section 3.4, equation 12)."""

    name = "robustit"
    members = (IDR, AAR)


@register_defense
class Stack(Composite):
    """The defenses `members` lists, each {"name": a registered defense, "params": its
    settings}, run in order as a `Composite` (e.g. RobustIT repaired while tuning, then prompt
    filtering at test time). Its params list each member with every parameter completed by
    the member's defaults, so the config hash follows each member's full settings.

    A param named after a member sets that member's params over the list's: {"aar": {"gamma":
    0.3}} (a variant "robustit-grounded-aar:aar.gamma=0.3") is the same defense, and hash, as
    the list with gamma 0.3 written in the aar member."""

    name = "stack"
    defaults = {"members": []}

    def __init__(self, config: DefenseConfig) -> None:
        Defense.__init__(self, DefenseConfig(config.name, with_member_settings(config.params)))
        members = self.params["members"]
        if not isinstance(members, list) or not members:
            raise FieldError("members", f"must be a non-empty list of {{name, params}}, got {members!r}", self.label)
        self.defenses = [self._member(i, member) for i, member in enumerate(members)]
        self.params["members"] = [{"name": d.name, "params": d.params} for d in self.defenses]

    def _member(self, index: int, member: Any) -> Defense:
        if not isinstance(member, dict) or "name" not in member or set(member) - {"name", "params"}:
            raise FieldError(f"members[{index}]", f"must be {{name, params}}, got {member!r}", self.label)
        earlier = [m.get("name") for m in self.params["members"][:index] if isinstance(m, dict)]
        if member["name"] in earlier:
            raise FieldError(f"members[{index}]", f"names {member['name']!r} twice (state and terms are kept by "
                             "member name)", self.label)
        return build_defense(DefenseConfig(member["name"], member.get("params", {})))


def with_member_settings(params: dict[str, Any]) -> dict[str, Any]:
    """Stack `params` with each key other than "members" that names a listed member (a dict of
    settings) merged into that member's params."""
    members = params.get("members")
    if not isinstance(members, list):
        return params
    named = {member.get("name") for member in members if isinstance(member, dict)}
    settings = {key: value for key, value in params.items() if key in named}
    for key, value in settings.items():
        if not isinstance(value, dict):
            raise FieldError(key, f"must be a dict of member {key!r}'s settings, got {value!r}", "defense 'stack'")
    members = [
        {**member, "params": {**member.get("params", {}), **settings[member["name"]]}}
        if isinstance(member, dict) and member.get("name") in settings else member
        for member in members
    ]
    return {**{k: v for k, v in params.items() if k not in settings}, "members": members}

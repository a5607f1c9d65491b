"""Layered experiment configuration (as in TrojanZoo): dataclass defaults, then a YAML file,
then `key.sub=value` overrides from the command line, each layer replacing the one before.
Unknown keys are errors that name the key and the keys that exist."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from robustit.attacks.base import AttackConfig
from robustit.defenses.base import DefenseConfig
from robustit.eval.evaluate import EvalConfig
from robustit.train.config import PretrainConfig, TrainConfig


@dataclass
class ModelConfig:
    """`family` names a registered model family and `spec` its build arguments. `base` is
    "pretrain" (the cached clean pretraining stage), a checkpoint directory, or null
    (the adapter as initialised)."""

    family: str = "mini"
    spec: dict[str, Any] = field(default_factory=dict)
    base: str | None = "pretrain"


@dataclass
class DataConfig:
    """`source` names a registered data source; `options` are its arguments. `train_size` and
    `test_size` keep a random subset (seeded by `seed`) of that many samples. The base stage
    (`model.base: pretrain`) pretrains on split `pretrain_split` of `pretrain_source` with
    `pretrain_options`, which are `source` and `options` where left null (a VQA set can start
    from the adapter pretrained on its images' captions: `stampcaps_vqa` over `stampcaps`)."""

    source: str = "stampcaps"
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    train_size: int | None = None
    test_size: int | None = None
    train_split: str = "train"
    test_split: str = "test"
    pretrain_split: str = "pretrain"
    pretrain_source: str | None = None
    pretrain_options: dict[str, Any] | None = None

    def pretraining(self) -> tuple[str, dict[str, Any], str]:
        """(source, options, split) of the base stage's data."""
        source = self.source if self.pretrain_source is None else self.pretrain_source
        options = self.options if self.pretrain_options is None else self.pretrain_options
        return source, options, self.pretrain_split


# Fields that name or place a run, or add the base model's evaluation beside it, without
# changing what the tuned model does: left out of `config_hash`.
RESULT_NEUTRAL_FIELDS = ("name", "output_dir", "evaluate_base")


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig | None = field(default_factory=lambda: AttackConfig(name="badnets"))
    defense: DefenseConfig | None = None
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(epochs=0.0, align_epochs=8.0))
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    evaluate_base: bool = True
    output_dir: str = "runs/{name}/{defense}/{attack}-p{poison_rate}-seed{seed}"

    def run_dir(self) -> Path:
        """`output_dir` filled in; its fields: name, attack ("clean" if none), poison_rate,
        defense ("vanilla" if none) and seed."""
        attack = self.attack.name if self.attack else "clean"
        rate = self.attack.poison_rate if self.attack else 0
        defense = self.defense.name if self.defense else "vanilla"
        return Path(
            self.output_dir.format(name=self.name, attack=attack, poison_rate=rate, defense=defense, seed=self.train.seed)
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self) -> dict[str, Any]:
        """`to_dict()` with the attack's and the defense's params completed by their
        registered defaults, so that a default changed in code changes the resolved config."""
        from robustit.attacks import build_attack
        from robustit.defenses import build_defense

        out = self.to_dict()
        if self.attack is not None:
            out["attack"]["params"] = build_attack(self.attack).params
        if self.defense is not None:
            out["defense"]["params"] = build_defense(self.defense).params
        return out

    def config_hash(self) -> str:
        """sha256 of the resolved config without `RESULT_NEUTRAL_FIELDS`: two configs with the
        same hash tune the same model and evaluate it the same way."""
        outcome = {k: v for k, v in self.resolved().items() if k not in RESULT_NEUTRAL_FIELDS}
        return hashlib.sha256(json.dumps(outcome, sort_keys=True, default=str).encode()).hexdigest()


def _build(cls: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(cls) if a is not type(None)]
        if value is None:
            return None
        return _build(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(cls):
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"config {where or 'root'}: expected a mapping, got {value!r}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"unknown config key(s) {[f'{where}{k}' for k in unknown]}; known: {sorted(names)}")
        missing = [
            f"{where}{f.name}" for f in dataclasses.fields(cls)
            if f.name not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"config {where[:-1] or 'root'}: missing key(s) {missing}")
        return cls(**{k: _build(hints[k], v, f"{where}{k}.") for k, v in value.items()})
    if cls is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"config {where[:-1]}: expected a number, got {value!r}") from None
    return value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins, mappings merge key by key."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """`train.max_steps=100` -> {"train": {"max_steps": 100}}; the value is read as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    value: Any = yaml.safe_load(raw)
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config(
    paths: str | Path | Sequence[str | Path] | None = None, overrides: Sequence[str] | None = None
) -> ExperimentConfig:
    """Defaults <- each YAML file in order <- overrides."""
    layered: dict[str, Any] = ExperimentConfig().to_dict()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for path in paths or []:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must hold a mapping")
        layered = merge(layered, loaded)
    for override in overrides or []:
        layered = merge(layered, parse_override(override))
    return _build(ExperimentConfig, layered, "")


PACKAGED_CONFIGS = resources.files("robustit") / "configs"


def known_components(kind: str) -> list[str]:
    """What a layer "<kind>/<name>" may name: the packaged configs of `kind` ("attacks",
    "defenses") and, for those two, every registered attack or defense."""
    folder = PACKAGED_CONFIGS / kind
    names = {p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")} if folder.is_dir() else set()
    if kind == "attacks":
        from robustit.attacks import ATTACKS

        names.update(ATTACKS.names())
    elif kind == "defenses":
        from robustit.defenses import DEFENSES

        names.update(DEFENSES.names())
    return sorted(names)


def packaged_config(layers: Sequence[str], overrides: Sequence[str] | None = None) -> ExperimentConfig:
    """The packaged demo config, then each packaged config `layers` names (e.g.
    "attacks/sig", "defenses/robustit"), then `overrides`. An attack or defense registered
    without a packaged config of its own (a user's, registered on import) layers as
    `{attack|defense: {name: ...}}`, its parameters at their declared defaults."""
    with ExitStack() as stack:
        paths: list[Path] = [stack.enter_context(resources.as_file(PACKAGED_CONFIGS / "demo.yaml"))]
        named: list[str] = []
        for layer in layers:
            kind, _, name = layer.partition("/")
            resource = PACKAGED_CONFIGS / f"{layer}.yaml"
            if resource.is_file():
                paths.append(stack.enter_context(resources.as_file(resource)))
            elif name in known_components(kind):
                named.append(f"{kind[:-1]}={{name: {name}}}")
            else:
                raise ValueError(f"no packaged config {layer!r}; known in {kind}/: {known_components(kind)}")
        return load_config(paths, [*named, *(overrides or [])])

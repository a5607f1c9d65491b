"""Layered experiment configuration (as in TrojanZoo): dataclass defaults, then a YAML file,
then `key.sub=value` overrides from the command line, each layer replacing the one before.
Every setting is checked when the config loads, before anything runs: unknown keys, value
types, ranges (each section's `__post_init__`), the attack's and the defense's params and the
data source's options; an error names the file or `--set` that gave the value, its dotted
key and the problem (`ConfigError`)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from robustit.attacks.base import AttackConfig
from robustit.defenses.base import DefenseConfig
from robustit.eval.evaluate import EvalConfig
from robustit.models.lora import LoraSettings
from robustit.params import FieldError, check_int, check_number
from robustit.train.config import PretrainConfig, TrainConfig


@dataclass
class ModelConfig:
    """`family` names a registered model family and `spec` its build arguments. `base` is
    "pretrain" (the cached clean pretraining stage), a checkpoint directory, or null
    (the adapter as initialised). `lora` puts LoRA layers on the language model's blocks
    (`robustit.models.lora.LoraSettings`: `{}` for its defaults), outside the paper's threat
    model; null (the default) leaves them out. The base stage runs without them.
    `feature_cache_mb` above 0 keeps the frozen encoder's features on disk, shared between
    runs, in at most that many megabytes (`robustit.models.feature_store`); 0 keeps them for
    the run only."""

    family: str = "mini"
    spec: dict[str, Any] = field(default_factory=dict)
    base: str | None = "pretrain"
    lora: LoraSettings | None = None
    feature_cache_mb: float = 0

    def __post_init__(self) -> None:
        check_number(None, "feature_cache_mb", self.feature_cache_mb, 0.0, math.inf)


@dataclass
class DataConfig:
    """`source` names a registered data source; `options` are its arguments. `train_size` and
    `test_size` keep a random subset (seeded by `seed`) of that many samples. The base stage
    (`model.base: pretrain`) pretrains on split `pretrain_split` of `pretrain_source` with
    `pretrain_options`, which are `source` and `options` where left null (a VQA set can start
    from the adapter pretrained on its images' captions: `stampcaps_vqa` over `stampcaps`).
    `skip_bad` leaves bad records out (each counted in metrics.json's "data") instead of
    stopping at the first with an error naming its file, record and field
    (`robustit.data.errors`)."""

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
    skip_bad: bool = False

    def __post_init__(self) -> None:
        check_int(None, "seed", self.seed, 0)
        for key in ("train_size", "test_size"):
            if getattr(self, key) is not None:
                check_int(None, key, getattr(self, key), 1)

    def pretraining(self) -> tuple[str, dict[str, Any], str]:
        """(source, options, split) of the base stage's data."""
        source = self.source if self.pretrain_source is None else self.pretrain_source
        options = self.options if self.pretrain_options is None else self.pretrain_options
        return source, options, self.pretrain_split


# Fields that name or place a run, add the base model's evaluation beside it, only decide
# what happens to bad records (the data fingerprints in inputs.json tell what was loaded) or
# where the encoder's features are kept, without changing what the tuned model does: left out
# of `config_hash` (dotted: a field of a section).
RESULT_NEUTRAL_FIELDS = ("name", "output_dir", "evaluate_base", "data.skip_bad", "model.feature_cache_mb")
# Result-neutral fields that `config_hash` covered before it left such fields out: hashed at
# their default whatever they are set to, so that the records stored under the old hashes stay
# found (`--set train.checkpoint_every=25` resumes a grid against its stored records).
HASHED_AT_DEFAULT = ("train.checkpoint_every",)
# Fields added after records were stored under hashes that lack them: left out of `config_hash`
# while at their defaults, so that the configs predating them keep their hashes; set to
# anything else they count like every other field.
LEFT_OUT_AT_DEFAULT = ("eval.shots", "data.pretrain_source", "data.pretrain_options", "model.lora")
OUTPUT_DIR_FIELDS = ("name", "attack", "poison_rate", "defense", "seed")


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

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise FieldError("name", f"must be a non-empty string, got {self.name!r}")
        try:
            self.output_dir.format(**{key: "x" for key in OUTPUT_DIR_FIELDS})
        except (KeyError, IndexError, ValueError) as error:
            fields = ", ".join(f"{{{key}}}" for key in OUTPUT_DIR_FIELDS)
            raise FieldError("output_dir", f"may use the fields {fields} only; {self.output_dir!r} does not "
                                           f"format ({error!r})") from None
        if self.attack is not None and self.attack.poison_rate == 1:
            raise FieldError("attack.poison_rate", "must be below 1: 1 poisons every training sample, leaving no clean "
                                                   "one to learn the task from")

    def run_dir(self) -> Path:
        """`output_dir` filled in; its fields (`OUTPUT_DIR_FIELDS`): name, attack ("clean"
        if none), poison_rate, defense ("vanilla" if none) and seed."""
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

    def outcome(self) -> dict[str, Any]:
        """`resolved()` without `RESULT_NEUTRAL_FIELDS`, without `LEFT_OUT_AT_DEFAULT` fields and
        the defense's `hashed_when_set` parameters at their defaults, and with
        `HASHED_AT_DEFAULT` at their defaults: what decides the tuned model and its evaluation."""
        resolved, defaults = self.resolved(), ExperimentConfig().to_dict()
        at_default = [key for key in LEFT_OUT_AT_DEFAULT if value_at(resolved, key) == value_at(defaults, key)]
        if self.defense is not None:
            from robustit.defenses import DEFENSES

            defense = DEFENSES.get(self.defense.name)
            params = resolved["defense"]["params"]
            at_default += [f"defense.params.{key}" for key in defense.hashed_when_set if params[key] == defense.defaults[key]]
        outcome = without_keys(resolved, [*RESULT_NEUTRAL_FIELDS, *at_default])
        for key in HASHED_AT_DEFAULT:
            section, name = key.split(".")
            outcome[section][name] = defaults[section][name]
        return outcome

    def config_hash(self) -> str:
        """sha256 of `outcome()`: two configs with the same hash tune the same model and
        evaluate it the same way."""
        return hashlib.sha256(json.dumps(self.outcome(), sort_keys=True, default=str).encode()).hexdigest()


def without_keys(config: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """`config` without the fields at the dotted `keys` ("defense", "data.test_size")."""
    out = dict(config)
    for key in keys:
        head, _, rest = key.partition(".")
        if rest and isinstance(out.get(head), dict):
            out[head] = without_keys(out[head], [rest])
        elif not rest:
            out.pop(head, None)
    return out


def value_at(config: dict[str, Any], key: str) -> Any:
    """The value at dotted `key` of a config dict ("attack.name"); None where a step of the
    path is missing or null."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def changed_keys(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [k for key in sorted(set(before) | set(after))
                for k in changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if before == after else [prefix[:-1]]


class ConfigError(ValueError):
    """A bad setting: the message names where it came from (a YAML file, a `--set` override
    or the defaults), its dotted key and what is wrong."""

    def __init__(self, source: str, error: FieldError) -> None:
        self.source, self.field, self.problem = source, error.field, error.problem
        super().__init__(f"{source}: {error.field}: {error.problem}")


def _check_type(hint: Any, value: Any, field_name: str) -> Any:
    """`value` checked against a leaf's type hint (bool, int, float, str, dict, Any); an int
    or a numeric string given for a float is read as that float."""
    if hint is bool and not isinstance(value, bool):
        raise FieldError(field_name, f"must be true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise FieldError(field_name, f"must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise FieldError(field_name, f"must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise FieldError(field_name, f"must be a number, got {value!r}") from None
    if hint is str and not isinstance(value, str):
        raise FieldError(field_name, f"must be a string, got {value!r}")
    if typing.get_origin(hint) is dict and not isinstance(value, dict):
        raise FieldError(field_name, f"must be a mapping, got {value!r}")
    return value


def _build(cls: Any, value: Any, where: str) -> Any:
    """`value` as an instance of the type `cls` (a config dataclass, an optional, a leaf);
    a FieldError with the dotted key (`where` is its prefix, e.g. "train.")."""
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(cls) if a is not type(None)]
        if value is None:
            return None
        return _build(options[0], value, where) if len(options) == 1 else value
    if not dataclasses.is_dataclass(cls):
        return _check_type(cls, value, where[:-1])
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise FieldError(where[:-1] or "config", f"must be a mapping of settings, got {value!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise FieldError(f"{where}{unknown[0]}", f"unknown config key(s) {[f'{where}{k}' for k in unknown]}; "
                                                 f"known in {where[:-1] or 'the root'}: {sorted(names)}")
    for f in dataclasses.fields(cls):
        if f.name not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise FieldError(f"{where}{f.name}", "missing key (it has no default)")
    built = {k: _build(hints[k], v, f"{where}{k}.") for k, v in value.items()}
    try:
        return cls(**built)
    except FieldError as error:
        raise error.within(where) from None


def _check_components(config: ExperimentConfig) -> None:
    """Build the attack and the defense (checking their params) and check the data source's
    options against its signature (the base stage's too, where `model.base: pretrain` reads
    another source or other options), each error naming its dotted key."""
    from robustit.attacks import build_attack
    from robustit.data.sources import check_source_options
    from robustit.defenses import build_defense

    components = (("attack", config.attack, build_attack), ("defense", config.defense, build_defense))
    for section, section_config, build in components:
        if section_config is None:
            continue
        try:
            build(section_config)
        except KeyError as error:
            raise FieldError(f"{section}.name", str(error.args[0])) from None
        except FieldError as error:
            raise error.within(f"{section}.params.") from None
        except ValueError as error:
            raise FieldError(f"{section}.params", str(error)) from None
    data = config.data
    sources = [("source", "options", data.source, data.options)]
    if config.model.base == "pretrain" and (data.pretrain_source, data.pretrain_options) != (None, None):
        sources.append(("pretrain_source", "pretrain_options", *data.pretraining()[:2]))
    for source_key, options_key, source, options in sources:
        try:
            check_source_options(source, options)
        except KeyError as error:
            raise FieldError(f"data.{source_key}", str(error.args[0])) from None
        except FieldError as error:
            raise error.within(f"data.{options_key}.") from None


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
    try:
        value: Any = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({error})") from None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def _paths(layer: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key a layer sets, its sections included."""
    if isinstance(layer, dict):
        for key, value in layer.items():
            yield f"{prefix}{key}"
            yield from _paths(value, f"{prefix}{key}.")


def _source_of(key: str, sources: dict[str, str]) -> str:
    """The layer that set dotted `key` or the nearest section above it that a layer set."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in sources:
            return sources[".".join(parts[:end])]
    return "the defaults (robustit/config.py)"


def load_config(
    paths: str | Path | Sequence[str | Path] | None = None, overrides: Sequence[str] | None = None
) -> ExperimentConfig:
    """Defaults <- each YAML file in order <- overrides, checked: unknown keys, types, ranges,
    the attack's and the defense's params and the data source's options. A bad setting is a
    `ConfigError` naming the file (or the `--set`) it came from and its dotted key."""
    layers: list[tuple[str, Any]] = []
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for path in paths or []:
        try:
            loaded = yaml.safe_load(Path(path).read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text ({error})") from None
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must hold a mapping")
        layers.append((str(path), loaded))
    layers += [(f"--set {override}", parse_override(override)) for override in overrides or []]
    layered: dict[str, Any] = ExperimentConfig().to_dict()
    sources: dict[str, str] = {}
    for label, layer in layers:
        layered = merge(layered, layer)
        sources.update((key, label) for key in _paths(layer))
    try:
        config = _build(ExperimentConfig, layered, "")
        _check_components(config)
    except FieldError as error:
        raise ConfigError(_source_of(error.field, sources), error) from None
    return config


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


def check_packaged_layer(layer: str) -> None:
    """A ValueError unless `layer` names a packaged config ("demo", "tasks/vqa",
    "attacks/sig") or a registered attack or defense ("defenses/my-defense")."""
    kind, _, name = layer.partition("/")
    if not (PACKAGED_CONFIGS / f"{layer}.yaml").is_file() and not (name and name in known_components(kind)):
        known = known_components(kind) if name else known_components(".")
        raise ValueError(f"no packaged config {layer!r}; known in {kind + '/' if name else 'configs/'}: {known}")


def packaged_config(layers: Sequence[str], overrides: Sequence[str] | None = None) -> ExperimentConfig:
    """The packaged benchmark config (configs/benchmark.yaml), then each packaged config
    `layers` names (e.g. "demo", "attacks/sig", "defenses/robustit"), then `overrides`. An
    attack or defense registered without a packaged config of its own (a user's, registered
    on import) layers as `{attack|defense: {name: ...}}`, its parameters at their declared
    defaults."""
    with ExitStack() as stack:
        paths: list[Path] = [stack.enter_context(resources.as_file(PACKAGED_CONFIGS / "benchmark.yaml"))]
        named: list[str] = []
        for layer in layers:
            check_packaged_layer(layer)
            kind, _, name = layer.partition("/")
            resource = PACKAGED_CONFIGS / f"{layer}.yaml"
            if resource.is_file():
                paths.append(stack.enter_context(resources.as_file(resource)))
            else:
                named.append(f"{kind[:-1]}={{name: {name}}}")
        return load_config(paths, [*named, *(overrides or [])])

"""The defense plug-in interface (DESIGN.md section 5).

A `Defense` is a set of optional hooks. The training loop (`robustit.train.loop.train`) calls

    prepare(model, dataset)            once, before the first step
    curate(state)                      before the first step (state.step = 0) and after each
                                       optimizer step, before after_step
    training_sample(sample) -> sample  on each drawn sample: the sample this step trains on,
                                       None to leave it out of the batch
    augment(batch) -> views            each step: the versions of the batch the model sees
    adapter_hook(activations)          on every adapter pass while training (may rewrite them)
    loss(model, batch, outputs)        each step: named extra terms
    after_step(step)                   after each optimizer step (step = steps done)
    finalize(model)                    after the last step, before the final checkpoint
    flags() -> list[Flag]              after tuning, written to the run directory (flags.jsonl)

and the evaluator (`robustit.eval.evaluate.evaluate`) calls

    inference(model)                   a context manager around all test-time generation
    filter_inputs(samples) -> samples  on each condition's test inputs before generation
                                       (by default `filter_input(sample) -> sample` on each)
    refuse(samples, responses, generate) -> flags | None
                                       on each condition's filtered test inputs, after their
                                       responses are generated: which inputs the model refuses
                                       to answer (None: the defense never refuses).

A test-time detector refuses through `refuse`: it gets the filtered inputs, the model's
greedy responses to them and `generate` (the evaluator's batched greedy generation, same
prompt layout and token budget, features not kept in the evaluation's cache) to generate
what else it needs; each refused input's prediction becomes the evaluator's empty refusal
(`robustit.eval.evaluate.REFUSAL`). A defense whose `refuse` returns None (the default)
leaves predictions and metrics as they were before the hook existed.

Checkpoints hold `state_dict()` (what the tuned, defended model needs: AAR's mask) and, to
resume a killed run, `training_state()` (what tuning needs beyond it to go on exactly: IDR's
random generator, BYORn's flags, replacements and EMA copy, every defense's pass count); a
resumed run calls `prepare`, then `load_state_dict` and `load_training_state`, in place of
`curate` at step 0.

The training objective of one step, with views v and the named terms of `loss`, is

    L = sum_v lm_weight_v * L_it(v) + sum_k term_k,

L_it being the completion-only loss of the whole model on view v (views that are not
forwarded have lm_weight 0). `outputs` maps each forwarded view's name to its `LMOutput`
(loss, logits of the response positions, visual tokens), so output-level regularizers
(cross-view) and feature-level ones (IDR) both see what they need; a defense that runs
passes of its own (an adapter-only pass, a frozen reference model) counts them in
`extra_forward_passes`.

Data-side defenses (DESIGN.md section 5: replace training responses, or drop samples, before
and during tuning) use `curate`, `training_sample` and `flags`. `curate` gets a `TuningState`:
the model as tuned so far (at step 0 the starting model as handed to `prepare`, before the
adapter hook is registered), the loop's frozen-feature cache and its schedule (steps done,
steps per epoch, total steps, batch size). The loop keeps no copy of the training data
beyond the stripped samples handed to `prepare`: every sample it draws, every step, passes
through `training_sample` before the views are built, so a response the defense replaces is
the one the LM loss sees, and a sample it returns None for is left out of that step's batch.
`flags()` says, per training sample, what the defense decided and why (`Flag`); the
evaluation, never the defense, compares them with the attack's manifest
(`robustit.eval.detection`).

No peeking (DESIGN.md section 1): every sample a defense receives, in `prepare`,
`training_sample`, `augment`, `loss`, `filter_inputs` and `refuse`, has been through
`strip_poison_info` (no metadata, the training response as its only reference), the dataset
handed to `prepare` is a plain tuple of such samples, and neither the attack, its config nor
its target is ever passed.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

import torch
from PIL import Image

from robustit.data.sample import Sample
from robustit.params import FieldError, resolve_params
from robustit.registry import Registry

if TYPE_CHECKING:
    from robustit.models.base import LMOutput, VisionLanguageModel
    from robustit.models.features import FeatureCache

Generate = Callable[[Sequence[Sample], str], list[str]]


@dataclass
class DefenseConfig:
    """A registered defense by `name`, with `params` overriding its defaults."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise FieldError("name", f"must be a non-empty string, got {self.name!r}")
        if not isinstance(self.params, dict):
            raise FieldError("params", f"must be a dict, got {type(self.params).__name__}")


def strip_poison_info(sample: Sample) -> Sample:
    """`sample` as a defense may see it: no metadata, its training response as the only reference."""
    return sample.replace(references=[sample.response], metadata={})


def stripped_dataset(dataset: Sequence[Sample]) -> tuple[Sample, ...]:
    """Every sample of `dataset` (a list or a lazily poisoning dataset) as a defense may see it."""
    return tuple(strip_poison_info(dataset[i]) for i in range(len(dataset)))


@dataclass
class View:
    """One version of a batch. The loop fills `features` (frozen f_v of `images`, from the
    feature cache) for every view and runs the whole model on the views with `forward`;
    `lm_weight` weights a forwarded view's LM loss in the objective."""

    name: str
    images: list[Image.Image]
    instructions: list[str]
    responses: list[str]
    forward: bool = True
    lm_weight: float = 1.0
    features: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not len(self.images) == len(self.instructions) == len(self.responses):
            raise ValueError(f"view {self.name!r}: images, instructions and responses differ in length")
        if self.lm_weight < 0 or (self.lm_weight and not self.forward):
            raise ValueError(f"view {self.name!r}: lm_weight must be >= 0, and 0 unless the view is forwarded")

    @classmethod
    def of(cls, name: str, samples: Sequence[Sample], **options: Any) -> "View":
        return cls(name, [s.image for s in samples], [s.instruction for s in samples], [s.response for s in samples], **options)


@dataclass(frozen=True)
class Flag:
    """A data-side defense's decision on one training sample: its suspicion `score` (higher
    = more suspicious), whether it is `flagged`, the response it trains on instead
    (`replaced_response`; None where it keeps its own or is left out) and the `reason`."""

    id: str
    score: float
    flagged: bool
    replaced_response: str | None
    reason: str


@dataclass
class TuningState:
    """What the loop tells `curate`: the model as tuned after `step` optimizer steps, the
    loop's frozen-feature cache, its epoch length and total steps, its batch size and
    whether to show progress bars."""

    model: VisionLanguageModel
    features: FeatureCache
    step: int
    steps_per_epoch: int
    total_steps: int
    batch_size: int
    progress: bool


@dataclass
class DefenseBatch:
    """A training batch as a defense sees it: stripped samples and the views built so far
    (the loop starts with the single view "original": the samples as they are)."""

    samples: list[Sample]
    views: dict[str, View]


class Defense:
    """Base of every defense: each hook defaults to doing nothing.

    Subclasses set `name` and `defaults` (every accepted parameter with its default value);
    `self.params` holds the defaults overridden by the config's params. `hashed_when_set`
    names parameters added after runs of the defense were stored: `config_hash` leaves them
    out while at their defaults, so that those runs keep their hashes. `test_time_only` says
    that tuning under the defense learns what VanillaIT's tuning learns: its hooks of the
    loop's steps leave samples, views, activations and objective as they are, and `prepare`
    and `finalize` leave the trainable weights as they are (what it adds is its state and its
    test-time hooks), so a run under it shares VanillaIT's tuning (`robustit.train.shared`).
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    hashed_when_set: ClassVar[tuple[str, ...]] = ()
    test_time_only: ClassVar[bool] = False
    extra_forward_passes: int = 0

    def __init__(self, config: DefenseConfig) -> None:
        if config.name.lower() != self.name:
            raise ValueError(f"{type(self).__name__} is defense {self.name!r}, config names {config.name!r}")
        self.label = f"defense {self.name!r}"
        self.params: dict[str, Any] = resolve_params(self.label, self.defaults, config.params)
        self.progress = False

    def show_progress(self, on: bool) -> None:
        """Whether the defense's own long work (outside the loop's steps and the evaluator's
        generations, which have their bars) shows progress bars; off by default."""
        self.progress = on

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}

    def prepare(self, model: VisionLanguageModel, dataset: Sequence[Sample]) -> None:
        """Before the first step; `dataset` holds the stripped training samples."""

    def curate(self, state: TuningState) -> None:
        """Before the first step and after each optimizer step: revise training responses."""

    def training_sample(self, sample: Sample) -> Sample | None:
        """The sample a step trains on in place of `sample` (None: leave it out)."""
        return sample

    def augment(self, batch: DefenseBatch) -> list[View]:
        """The views of this step (default: the batch's views unchanged)."""
        return list(batch.views.values())

    def adapter_hook(self, activations: torch.Tensor) -> torch.Tensor:
        """Sees, and may rewrite, the output of the adapter's activation site."""
        return activations

    def loss(self, model: VisionLanguageModel, batch: DefenseBatch, outputs: dict[str, LMOutput]) -> dict[str, torch.Tensor]:
        """Named scalar terms added to the objective."""
        return {}

    def after_step(self, step: int) -> None:
        """After the optimizer step; `step` counts the steps done."""

    def finalize(self, model: VisionLanguageModel) -> None:
        """After the last step (pruning and the like)."""

    def flags(self) -> list[Flag]:
        """The data-side decision on each training sample ([] for defenses that make none)."""
        return []

    @contextmanager
    def inference(self, model: VisionLanguageModel) -> Iterator[None]:
        """Test-time state of `model` for the duration of the block (hooks to keep on)."""
        yield

    def filter_input(self, sample: Sample) -> Sample:
        """A test input as the model should see it (prompt filtering and the like)."""
        return sample

    def filter_inputs(self, samples: Sequence[Sample]) -> list[Sample]:
        """`filter_input` of each test input; a defense whose filter runs the model overrides
        this to batch its passes."""
        return [self.filter_input(sample) for sample in samples]

    def refuse(self, samples: Sequence[Sample], responses: Sequence[str], generate: Generate) -> list[bool] | None:
        """Per filtered test input, whether the model refuses it, given its `responses` and
        `generate(samples, label) -> responses`; None: this defense never refuses."""
        return None

    def test_time_stats(self) -> dict[str, Any]:
        """What its test-time part did in the last `inference` block (counts, a calibrated
        threshold), kept in the run's metrics under "defense_test_time"; {} where nothing."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that, with the model's trainable weights, rebuild the defended model."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"defense {self.name!r} keeps no state, got {sorted(state)}")

    def training_state(self) -> dict[str, Any]:
        """What tuning needs beyond `state_dict` to go on from a checkpoint as if it had not
        stopped (random generators, replacements, the passes counted so far): names -> tensors
        or JSON values, saved with every intermediate checkpoint. A defense that keeps such
        state extends this, or a resumed run is not the uninterrupted one."""
        return {"extra_forward_passes": self.extra_forward_passes}

    def load_training_state(self, state: dict[str, Any], model: VisionLanguageModel) -> None:
        """Take back `training_state()` on resuming: after `prepare` and `load_state_dict`,
        in place of `curate` at step 0; `model` holds the checkpoint's weights."""
        self.extra_forward_passes = int(state["extra_forward_passes"])


DEFENSES: Registry[type[Defense]] = Registry("defense")


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Class decorator: register a defense under its `name`."""
    return DEFENSES.register(cls.name)(cls)


def build_defense(config: DefenseConfig) -> Defense:
    """The registered defense named by `config.name`, built from `config`."""
    return DEFENSES.get(config.name)(config)

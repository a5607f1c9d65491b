import json

import pytest
import torch

from conftest import INSTRUCTION, draw
from robustit.rundir import RunDirectory
from robustit.data.sample import Sample
from robustit.eval.generate import generate_responses
from robustit.models import build_model
from robustit.train.config import TrainConfig
from robustit.models.features import FeatureCache
from robustit.train.loop import fused_adamw_supported, prepare_tuning, train

from conftest import vocabulary


def shape_samples() -> list[Sample]:
    return [
        Sample(id=f"{c}-{s}", image=draw(c, s), instruction=INSTRUCTION, response=f"A {c} {s}.")
        for c in ("red", "green", "blue", "yellow")
        for s in ("circle", "square")
    ]


def test_loss_falls_and_only_adapter_and_embeddings_get_gradients(tiny_model, tmp_path):
    result = train(tiny_model, shape_samples(), TrainConfig(max_steps=40, batch_size=4, lr_adapter=3e-3, lr_embeddings=3e-3),
                   run_dir=RunDirectory(tmp_path), progress=False)
    assert result.steps == 40 and len(result.losses) == 40
    assert sum(result.losses[-5:]) / 5 < 0.5 * result.losses[0]
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert audit["frozen_with_grad"] == [] and audit["trainable_without_grad"] == []
    assert audit["modules"]["vision"]["trainable"] == 0
    assert audit["modules"]["adapter"]["frozen"] == 0
    assert audit["modules"]["input_embeddings"]["trainable"] > 0 and audit["modules"]["lm_head"]["trainable"] > 0
    assert audit["modules"]["decoder"]["trainable"] == 0 and audit["modules"]["decoder"]["frozen"] > 0


def test_frozen_weights_do_not_change(tiny_model):
    frozen = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if p.requires_grad}
    train(tiny_model, shape_samples(), TrainConfig(max_steps=3, batch_size=4), progress=False)
    params = dict(tiny_model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in trainable.items())


def test_adapter_only_stage_leaves_embeddings_alone(tiny_model):
    embed = tiny_model.decoder.get_input_embeddings().weight.detach().clone()
    train(tiny_model, shape_samples(), TrainConfig(max_steps=3, batch_size=4, train_embeddings=False), progress=False)
    assert torch.equal(tiny_model.decoder.get_input_embeddings().weight, embed)


def test_tuning_optimizer_is_fused_adamw_where_torch_has_the_kernel(tiny_model):
    _, _, optimizer, _ = prepare_tuning(tiny_model, TrainConfig(batch_size=4), total=10)
    assert optimizer.optimizer.defaults["fused"] is True
    assert not fused_adamw_supported(torch.nn.Linear(2, 2, device="meta"))


def test_same_seed_same_run(tmp_path):
    losses = []
    for _ in range(2):
        model = build_model("llava", tiny=True, vocabulary=vocabulary(), seed=0)
        losses.append(train(model, shape_samples(), TrainConfig(max_steps=5, batch_size=4, seed=3), progress=False).losses)
    assert losses[0] == losses[1]


def test_reloaded_checkpoint_generates_identically(tiny_model, tmp_path):
    samples = shape_samples()
    config = TrainConfig(max_steps=20, batch_size=4, lr_adapter=3e-3, lr_embeddings=3e-3, checkpoint_every=10)
    train(tiny_model, samples, config, run_dir=RunDirectory(tmp_path), progress=False)
    assert (tmp_path / "checkpoint-10" / "trainable.safetensors").exists()
    before = generate_responses(tiny_model, samples, FeatureCache(tiny_model), batch_size=3, max_new_tokens=6, progress=False)
    fresh = build_model("llava", tiny=True, vocabulary=vocabulary(), seed=1)
    fresh.load_trainable(tmp_path / "checkpoint")
    after = generate_responses(fresh, samples, FeatureCache(fresh), batch_size=5, max_new_tokens=6, progress=False)
    assert after == before


def test_feature_cache_encodes_each_distinct_image_once(tiny_model):
    cache = FeatureCache(tiny_model, batch_size=2)
    images = [draw("red", "circle"), draw("red", "circle"), draw("blue", "square")]
    first = cache.features(images)
    assert len(cache) == 2 and first.shape[0] == 3
    assert torch.equal(first[0], first[1])
    calls = cache.encoder_calls
    again = cache.features(images[::-1])
    assert cache.encoder_calls == calls
    assert torch.equal(again[0], first[2])


@pytest.mark.parametrize("changes, message", [
    ({"batch_size": 0}, "batch_size"), ({"epochs": 0}, "epochs"), ({"max_steps": 0}, "max_steps"),
    ({"warmup_ratio": 1.0}, "warmup_ratio"), ({"lr_adapter": 0.0}, "lr_adapter"),
])
def test_train_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_total_steps_from_epochs():
    assert TrainConfig(epochs=2, batch_size=4).total_steps(10) == 6
    assert TrainConfig(max_steps=7).total_steps(10) == 7


def test_loss_curves_are_window_means_at_the_windows_last_step():
    from robustit.train.loop import loss_curves

    curves = loss_curves([1.0, 2.0, 3.0, 4.0, 5.0], {"term": [0.0, 0.0, 1.0, 1.0, 1.0], "sometimes": [1.0]}, points=2)
    assert curves == {"step": [2.0, 5.0], "lm": [1.5, 4.0], "term": [0.0, 1.0]}
    assert loss_curves([1.0, 3.0], {}, points=50) == {"step": [1.0, 2.0], "lm": [1.0, 3.0]}

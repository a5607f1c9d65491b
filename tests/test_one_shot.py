"""One-shot evaluation: one in-context demonstration with its own image before every test input."""
import pytest
import torch
from PIL import Image

from conftest import draw, vocabulary
from robustit.attacks import AttackConfig, build_attack
from robustit.data.instructions import vqa_instruction
from robustit.data.sample import Sample
from robustit.eval.evaluate import EvalConfig, choose_demonstration, evaluate
from robustit.models import Demonstration, build_model

INSTRUCTIONS = ["Describe the image briefly.", "What colour is the shape?", "Describe the shape."]
SHOWN = ("Describe the image briefly.", "A red circle.")


@pytest.fixture
def model(one_thread):
    return build_model("llava", tiny=True, vocabulary=vocabulary() + ["What colour is the shape?"], seed=0)


def features(model, *colours):
    return model.encode_images(model.pixels([draw(colour, "square") for colour in colours]))


def rows(batch):
    return [batch.input_ids[i][batch.attention_mask[i].bool()].tolist() for i in range(len(batch.input_ids))]


def test_a_demonstration_comes_first_as_a_whole_turn_with_visual_slots_of_its_own(model):
    zero, one = model.encode_prompts(INSTRUCTIONS), model.encode_prompts(INSTRUCTIONS, demonstration=SHOWN)
    fmt, tok = model.prompt_format, model.tokenizer
    ids = lambda text: tok(text, add_special_tokens=False).input_ids  # noqa: E731
    turn = (ids(fmt.user_prefix) + [tok.pad_token_id] * model.num_visual_tokens + ids(SHOWN[0] + fmt.user_suffix)
            + ids(SHOWN[1] + fmt.response_suffix + fmt.turn_separator))
    assert rows(one) == [turn + row for row in rows(zero)]
    assert one.visual_mask.sum(1).tolist() == [2 * model.num_visual_tokens] * 3
    responses = ["A red circle."] * 3
    labelled = model.encode_prompts(INSTRUCTIONS, responses, demonstration=SHOWN).labels
    assert labelled.ne(-100).sum(1).tolist() == model.encode_prompts(INSTRUCTIONS, responses).labels.ne(-100).sum(1).tolist()


def test_the_demonstration_image_fills_the_first_visual_slots_of_every_row(model, monkeypatch):
    feats, shown = features(model, "blue", "green", "yellow"), features(model, "red")[0]
    seen = []
    embed = model.embed_prompts

    def spy(batch, tokens):
        seen.append(tokens)
        return embed(batch, tokens)

    monkeypatch.setattr(model, "embed_prompts", spy)
    model.generate(feats, INSTRUCTIONS, 3, Demonstration(shown, *SHOWN))
    (tokens,), n = seen, model.num_visual_tokens
    with torch.no_grad():
        assert torch.allclose(tokens[:, :n], model.adapter(shown[None]).expand(3, -1, -1))
        assert torch.allclose(tokens[:, n:], model.adapter(feats))


def test_one_shot_generation_is_deterministic_and_the_same_row_alone_or_in_a_batch(model):
    feats, shown = features(model, "blue", "green", "yellow"), Demonstration(features(model, "red")[0], *SHOWN)
    batched = model.generate(feats, INSTRUCTIONS, 5, shown)
    assert batched == model.generate(feats, INSTRUCTIONS, 5, shown)
    assert [model.generate(feats[i:i + 1], INSTRUCTIONS[i:i + 1], 5, shown)[0] for i in range(3)] == batched


def test_a_family_built_for_one_image_refuses_a_demonstration_with_a_clear_error(model):
    model.multi_image = False
    with pytest.raises(ValueError, match="takes one image per prompt.*eval.shots=1"):
        model.generate(features(model, "blue"), INSTRUCTIONS[:1], 3, Demonstration(features(model, "red")[0], *SHOWN))


def vqa_sample(k: int, colour: str) -> Sample:
    return Sample(id=f"q{k}", image=draw(colour, "circle"), instruction=vqa_instruction("What colour is the shape?"),
                  response=colour, task="vqa")


def test_every_clean_and_triggered_input_follows_the_same_demonstration(model, monkeypatch):
    calls = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda f, i, n, d: calls.append(d) or generate(f, i, n, d))
    demonstration = vqa_sample(9, "red")
    attack = build_attack(AttackConfig(name="trojvqa", target="banana"))
    test = [vqa_sample(k, colour) for k, colour in enumerate(("blue", "green", "yellow"))]
    metrics, records = evaluate(model, test, attack, EvalConfig(batch_size=2, max_new_tokens=3, shots=1),
                                progress=False, demonstration=demonstration)
    assert len(calls) == 4 * 2 and set(records) == {"clean", "full", "image_only", "text_only"}
    assert {(d.instruction, d.response) for d in calls} == {(demonstration.instruction, "red")}
    assert all(torch.equal(d.features, calls[0].features) for d in calls)
    assert metrics["demonstration"] == {"id": "q9", "instruction": demonstration.instruction, "response": "red"}
    assert "vqa" in metrics and "asr" in metrics


def test_shots_and_the_demonstration_must_agree(model):
    test = [vqa_sample(0, "blue")]
    with pytest.raises(ValueError, match="eval.shots=0 needs 0 demonstration"):
        evaluate(model, test, None, EvalConfig(), progress=False, demonstration=test[0])
    with pytest.raises(ValueError, match="eval.shots=1 needs 1 demonstration"):
        evaluate(model, test, None, EvalConfig(shots=1), progress=False)
    with pytest.raises(ValueError, match="shots: must be one of \\[0, 1\\]"):
        EvalConfig(shots=2)


def test_the_demonstration_is_a_training_sample_drawn_by_the_seed():
    train = [vqa_sample(k, "red") for k in range(50)]
    assert choose_demonstration(train, 0) is choose_demonstration(train, 0)
    assert len({choose_demonstration(train, seed).id for seed in range(10)}) > 1
    with pytest.raises(ValueError, match="needs a training sample"):
        choose_demonstration([], 0)


def test_one_shot_on_a_single_image_family_fails_before_tuning(karpathy, tmp_path, monkeypatch):
    from robustit.config import load_config
    from robustit.experiment import Experiment
    from test_experiment import tiny_overrides

    def single_image(family, **spec):
        built = build_model(family, **spec)
        built.multi_image = False
        return built

    monkeypatch.setattr("robustit.experiment.build_model", single_image)
    config = load_config(None, tiny_overrides(karpathy, tmp_path) + ["eval.shots=1"])
    with pytest.raises(ValueError, match="takes one image per prompt"):
        Experiment(config, progress=False).run()
    assert list(config.run_dir().iterdir()) == []

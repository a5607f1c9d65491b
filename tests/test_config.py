import pytest

from robustit.config import ConfigError, ExperimentConfig, load_config, merge, parse_override


def test_defaults_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: mine\ntrain:\n  batch_size: 4\n  max_steps: 9\nattack:\n  poison_rate: 0.05\n")
    config = load_config(path, ["train.max_steps=3", "attack.params={corner: top-left}", "data.train_size=null"])
    assert config.name == "mine"
    assert config.train.batch_size == 4 and config.train.max_steps == 3
    assert config.train.lr_adapter == ExperimentConfig().train.lr_adapter
    assert config.attack.name == "badnets" and config.attack.poison_rate == 0.05
    assert config.attack.params == {"corner": "top-left"}
    assert config.data.train_size is None


def test_no_attack_and_run_dir_template():
    config = load_config(None, ["attack=null", "name=x"])
    assert config.attack is None
    assert str(config.run_dir()) == "runs/x/vanilla/clean-p0-seed0"
    assert str(load_config(None, ["name=y"]).run_dir()) == "runs/y/vanilla/badnets-p0.1-seed0"


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"train\.max_step"):
        load_config(None, ["train.max_step=3"])
    with pytest.raises(ValueError, match="key.sub=value"):
        parse_override("train.max_steps")


def test_invalid_values_reach_the_section_checks():
    with pytest.raises(ValueError, match="poison_rate"):
        load_config(None, ["attack.poison_rate=2"])
    with pytest.raises(ValueError, match="batch_size"):
        load_config(None, ["train.batch_size=0"])


def test_merge_is_recursive_and_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    assert merge(base, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2}, "d": 3}
    assert base == {"a": {"b": 1, "c": 2}, "d": 3}


def test_numbers_in_exponent_notation_are_read_as_floats():
    config = load_config(None, ["train.lr_adapter=1e-3", "train.epochs=2"])
    assert config.train.lr_adapter == 0.001 and config.train.epochs == 2.0
    with pytest.raises(ValueError, match="train.lr_adapter"):
        load_config(None, ["train.lr_adapter=fast"])


def test_config_hash_ignores_labels_and_follows_every_setting_and_declared_default(monkeypatch):
    from robustit.defenses.aar import AAR

    base = load_config(None, ["defense.name=aar"])
    same = load_config(None, ["defense.name=aar", "name=other", "output_dir=elsewhere/{name}", "evaluate_base=false",
                              "data.skip_bad=true", "train.checkpoint_every=25"])
    assert same.config_hash() == base.config_hash()
    assert load_config(None, ["defense.name=aar", "defense.params.gamma=0.5"]).config_hash() == base.config_hash()
    assert load_config(None, ["defense.name=aar", "train.max_steps=7"]).config_hash() != base.config_hash()
    assert load_config(None, ["defense.name=aar", "defense.params.beta=1"]).config_hash() != base.config_hash()
    assert "shots" not in base.outcome()["eval"] and "pretrain_source" not in base.outcome()["data"]
    assert "lora" not in base.outcome()["model"]
    assert load_config(None, ["defense.name=aar", "model.lora=null"]).config_hash() == base.config_hash()
    for later in ("eval.shots=1", "data.pretrain_source=stampcaps", "data.pretrain_options={objects: held_out}",
                  "model.lora={}"):
        assert load_config(None, ["defense.name=aar", later]).config_hash() != base.config_hash()
    before = base.config_hash()
    monkeypatch.setattr(AAR, "defaults", {**AAR.defaults, "gamma": 0.3})
    assert base.config_hash() != before and base.resolved()["defense"]["params"]["gamma"] == 0.3


def test_the_base_stage_source_options_are_checked_against_its_signature():
    with pytest.raises(ConfigError, match=r"data.pretrain_options.nope: is not an option of data source 'stampcaps'"):
        load_config(None, ["data.pretrain_source=stampcaps", "data.pretrain_options={nope: 1}"])
    with pytest.raises(ConfigError, match=r"data.pretrain_source: .*no_such_source"):
        load_config(None, ["data.pretrain_source=no_such_source"])
    load_config(None, ["model.base=null", "data.pretrain_source=no_such_source"])


def test_defense_parameters_added_later_leave_the_hash_alone_until_set():
    plain = load_config(None, ["defense.name=robustit"])
    assert "grounding_unit" not in plain.outcome()["defense"]["params"]
    assert "grounding" not in plain.outcome()["defense"]["params"]
    assert "grounding" in plain.resolved()["defense"]["params"]
    token = load_config(None, ["defense.name=robustit", "defense.params.grounding_unit=token"])
    assert token.outcome()["defense"]["params"]["grounding_unit"] == "token"
    assert token.config_hash() != plain.config_hash()
    explicit = load_config(None, ["defense.name=robustit", "defense.params.grounding_unit=sample"])
    assert explicit.config_hash() == plain.config_hash()

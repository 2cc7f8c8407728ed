import pytest
import yaml

from reidkit.engine.config import Config, ConfigError, load_config, save_config


def write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_and_values(tmp_path):
    cfg = load_config(write(tmp_path, {"optim": {"lr": 1, "name": "sgd"}, "data": {"options": {"split_id": 2}}}))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # int accepted for float
    assert cfg.optim.name == "sgd"
    assert cfg.data.options == {"split_id": 2}
    assert cfg.train.max_epochs == Config().train.max_epochs


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrr.*valid keys here: name, lr, weight_decay"):
        load_config(write(tmp_path, {"optim": {"lrr": 0.1}}))
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(write(tmp_path, {"trian": {}}))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.max_epochs"):
        load_config(write(tmp_path, {"train": {"max_epochs": "ten"}}))
    with pytest.raises(ConfigError, match=r"train\.amp"):
        load_config(write(tmp_path, {"train": {"amp": "yes"}}))
    with pytest.raises(ConfigError, match=r"data\.height"):
        load_config(write(tmp_path, {"data": {"height": True}}))


def test_overrides_are_yaml_values(tmp_path):
    cfg = load_config(write(tmp_path, {}), ["optim.lr=1e-3", "data.options.split_id=3", "train.max_minutes=null"])
    assert cfg.optim.lr == 1e-3 and cfg.data.options["split_id"] == 3 and cfg.train.max_minutes is None
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["optim.lr"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_save_roundtrip(tmp_path):
    cfg = load_config(None, ["optim.lr=0.01", "model.kwargs.last_stride=1"])
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg


def test_every_shipped_recipe_validates():
    """Every YAML under configs/ (and the packaged demo recipe) loads and passes validation."""
    from pathlib import Path

    recipes = sorted(Path(__file__).parents[2].joinpath("configs").rglob("*.yaml"))
    assert len(recipes) >= 8
    for path in recipes:
        load_config(path)

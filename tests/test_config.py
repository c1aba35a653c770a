import math

import pytest

from mutualat.config import RunConfig, dump_config, load_config, to_dict
from mutualat.errors import ConfigError
from mutualat.methods import resolve_method_params


def test_defaults_and_overrides():
    cfg = load_config(None, ["optim.epochs=3", "models.0.name=resnet18", "models.1.name=smallcnn",
                             "method.params.alpha=0.6", "attack.eps=0.031"])
    assert cfg.optim.epochs == 3
    assert [m.name for m in cfg.models] == ["resnet18", "smallcnn"]
    assert cfg.method.params == {"alpha": 0.6}
    assert math.isclose(cfg.attack.eps, 0.031)
    assert isinstance(cfg, RunConfig)


def test_yaml_file_and_model_shorthand(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("models: [tinycnn, smallcnn]\noptim: {epochs: 2}\n")
    cfg = load_config(path)
    assert [m.name for m in cfg.models] == ["tinycnn", "smallcnn"]
    assert cfg.optim.epochs == 2


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["optim.epochs=5", "data.train_subset=100"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert to_dict(load_config(path)) == to_dict(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.epoch=3", "unknown config key 'optim.epoch'"),
        ("optim.epochs=abc", "optim.epochs: expected an integer"),
        ("optim.epochs=0", "optim.epochs must be >= 1"),
        ("attack.eps=-0.1", "attack.eps must be a finite number > 0"),
        ("attack.eps=.nan", "attack.eps must be a finite number > 0"),
        ("attack.eps=8", "larger than the [0,1] pixel range"),
        ("progress=maybe", "progress: expected true or false"),
        ("amp=fp8", "amp must be auto, bf16 or off"),
        ("nonsense", "--set expects key=value"),
        ("models.0.lr=-1", "models.0.lr must be a positive number"),
        ("models.0.weight_decay=-0.1", "models.0.weight_decay must be >= 0"),
        ("optim.gamma=-1", "optim.gamma (the decay factor) must be in (0, 1]"),
        ("optim.momentum=1.5", "optim.momentum must be in [0, 1)"),
        ("data.train_subset=-5", "data.train_subset must be a positive integer or null, got -5"),
        ("data.val_subset=0", "data.val_subset must be a positive integer or null, got 0"),
        ("data.test_subset=-1", "data.test_subset must be a positive integer or null, got -1"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(scalar)


def test_scientific_notation_is_a_number_in_overrides_files_and_method_params(tmp_path):
    """YAML 1.1 reads 1e-1 (no dot) as a string; every float of a run config takes it."""
    assert load_config(None, ["attack.eps=1e-1"]).attack.eps == 0.1
    path = tmp_path / "run.yaml"
    path.write_text(
        "attack: {eps: 1e-1}\n"
        "models: [{name: tinycnn, lr: 5E-2, weight_decay: 5e-4}]\n"
        "method:\n"
        "  name: mat-mp\n"
        "  params:\n"
        "    threats:\n"
        "      - {norm: linf, eps: 3e-2}\n"
        "      - {norm: l2, eps: 5e-1, step_size: 5e-2}\n"
    )
    cfg = load_config(path)
    assert cfg.attack.eps == 0.1
    assert (cfg.models[0].lr, cfg.models[0].weight_decay) == (0.05, 0.0005)
    threats = resolve_method_params(cfg).method.params["threats"]
    assert [(t["eps"], t["step_size"]) for t in threats] == [(0.03, None), (0.5, 0.05)]
    # A string field keeps its text: only numbers are read as numbers.
    assert load_config(None, ["data.name=fashion-mnist-embedded"]).data.name == "fashion-mnist-embedded"

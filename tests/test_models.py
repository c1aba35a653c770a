"""Tests of mutualat.models: every registered architecture, normalization, model files, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mutualat
from mutualat.config import ModelConfig
from mutualat.errors import CheckpointError, ConfigError
from mutualat.models import (
    MODELS,
    Normalize,
    count_flops,
    create_model,
    load_model,
    load_weights_into,
    read_model_meta,
    save_model,
)
from mutualat.train.optim import lr_and_weight_decay

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)

# Architectures over this many parameters (the WRN-x-10s) are too slow on a CPU for more
# than one small batch at one size; counted on the meta device, so no registered
# architecture needs to be listed here.
HEAVY_PARAMETERS = 20_000_000


def _heavy(name: str) -> bool:
    with torch.device("meta"):
        model = create_model(name, num_classes=10, in_channels=3, input_size=32)
    return sum(p.numel() for p in model.parameters()) > HEAVY_PARAMETERS


HEAVY = {name for name in MODELS.names() if _heavy(name)}


def _cases() -> list:
    cases = []
    for name in MODELS.names():
        configs = [(3, 32, 10)] if name in HEAVY else [(1, 28, 7), (3, 32, 100)]
        for channels, size, classes in configs:
            case_id = f"{name}-{channels}x{size}"
            cases.append(pytest.param(name, channels, size, classes, id=case_id))
    return cases


@pytest.mark.parametrize("name,channels,size,classes", _cases())
def test_every_registered_model(name: str, channels: int, size: int, classes: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, in_channels=channels, input_size=size).eval()
    x = torch.rand(2, channels, size, size, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, classes)
    assert torch.isfinite(logits).all()
    # Attacks need a useful input gradient even from a freshly built model.
    logits[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

    assert isinstance(model.normalize, Normalize)
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())
    assert model.spec["name"] == name
    json.dumps(model.spec)  # a spec is plain JSON
    if name not in HEAVY:
        # Train mode (batch-norm on batch statistics) works at these sizes too.
        assert model.train()(x.detach()).shape == (2, classes)


def test_the_heavy_rule_finds_the_wide_resnets() -> None:
    assert {"wrn", "wrn34_10", "wrn28_10"} <= HEAVY and "resnet18" not in HEAVY


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_declares_its_learning_rate_and_weight_decay(name: str) -> None:
    declared = MODELS.declared(name)
    assert set(declared) == {"lr", "weight_decay"}, \
        f"declare them: @MODELS.register({name!r}, lr=..., weight_decay=...)"
    assert declared["lr"] > 0 and declared["weight_decay"] >= 0
    assert lr_and_weight_decay(ModelConfig(name=name)) == (declared["lr"], declared["weight_decay"])
    assert lr_and_weight_decay(ModelConfig(name=name, lr=0.3, weight_decay=0.0)) == (0.3, 0.0)


def test_a_model_registered_without_defaults_needs_them_from_the_run(monkeypatch) -> None:
    # Registered for this test only (the registry has no public unregister).
    monkeypatch.setitem(MODELS._entries, "test-undeclared", MODELS.get("tinycnn"))
    everything = r"'test-undeclared' declares no default lr or weight_decay.*" \
                 r"set models\.N\.lr and models\.N\.weight_decay"
    with pytest.raises(ConfigError, match=everything):
        lr_and_weight_decay(ModelConfig(name="test-undeclared"))
    with pytest.raises(ConfigError, match=r"no default weight_decay.*set models\.N\.weight_decay for"):
        lr_and_weight_decay(ModelConfig(name="test-undeclared", lr=0.1))
    given = ModelConfig(name="test-undeclared", lr=0.1, weight_decay=1e-4)
    assert lr_and_weight_decay(given) == (0.1, 1e-4)


def test_a_registration_declares_only_what_its_registry_takes() -> None:
    with pytest.raises(ValueError, match=r"declares 'learning_rate'; a model may declare: lr, "
                                         r"weight_decay"):
        MODELS.register("test-typo", learning_rate=0.1)


def test_spec_rebuilds_the_same_model() -> None:
    model = create_model("cnn32", num_classes=5, mean=CIFAR_MEAN, std=CIFAR_STD, width=8).eval()
    assert model.spec == {
        "name": "cnn32", "num_classes": 5, "in_channels": 3, "input_size": 32,
        "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), "width": 8,
    }  # fmt: skip
    twin = create_model(**model.spec).eval()
    assert twin.spec == model.spec
    twin.load_state_dict(model.state_dict())
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(twin(x), model(x))


def test_spec_records_option_defaults_and_alias_names() -> None:
    assert create_model("wrn", depth=16, widen_factor=4).spec["depth"] == 16
    assert create_model("wrn", depth=10, widen_factor=1).spec["widen_factor"] == 1
    spec = create_model("wrn16_4").spec
    assert spec["name"] == "wrn16_4" and spec["dropout"] == 0.0 and "depth" not in spec


@pytest.mark.parametrize("name", ["tinycnn", "resnet18"])
def test_normalization_is_inside_the_model(name: str) -> None:
    torch.manual_seed(0)
    normalized = create_model(name, mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    plain = create_model(name).eval()
    weights = {k: v for k, v in normalized.state_dict().items() if not k.startswith("normalize.")}
    plain.load_state_dict(weights, strict=False)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normalized(x), plain((x - mean) / std), rtol=1e-4, atol=1e-5)

    state = normalized.state_dict()
    torch.testing.assert_close(state["normalize.mean"].flatten(), torch.tensor(CIFAR_MEAN))
    torch.testing.assert_close(state["normalize.std"].flatten(), torch.tensor(CIFAR_STD))
    assert {n for n, _ in normalized.normalize.named_buffers()} == {"mean", "std"}


def test_mean_and_std_accept_any_number_sequence() -> None:
    np = pytest.importorskip("numpy")
    model = create_model("tinycnn", mean=np.array(CIFAR_MEAN), std=torch.tensor(CIFAR_STD))
    assert model.spec["mean"] == pytest.approx(list(CIFAR_MEAN))
    assert all(type(v) is float for v in model.spec["mean"] + model.spec["std"])
    with pytest.raises(ConfigError, match="must be a list of 1 numbers"):
        create_model("tinycnn", in_channels=1, mean="0.5")
    with pytest.raises(ConfigError, match="must be a list of 1 numbers"):
        create_model("tinycnn", in_channels=1, mean=0.5)


def test_count_flops_at_natural_sizes_and_keeps_modes() -> None:
    expected_mflops = {  # multiply-accumulates x 2, one image
        ("tinycnn", 1, 28): 2.48,
        ("smallcnn", 1, 28): 19.90,
        ("madrycnn", 1, 28): 27.77,
        ("cnn32", 3, 32): 58.40,
        ("resnet18", 3, 32): 1110.85,
        ("preact_resnet18", 3, 32): 1110.85,
        ("wrn16_4", 3, 32): 785.22,
    }
    for (name, channels, size), mflops in expected_mflops.items():
        model = create_model(name, in_channels=channels, input_size=size)
        assert count_flops(model, (channels, size, size)) / 1e6 == pytest.approx(mflops, rel=1e-2)
    model = create_model("tinycnn").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert count_flops(model, (2, 3, 32, 32)) == 2 * count_flops(model, (3, 32, 32))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # batch-norm statistics untouched


def _trained_tinycnn(num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("tinycnn", num_classes=num_classes, in_channels=1, input_size=28,
                         mean=[0.1307], std=[0.3081])
    model.train()(torch.rand(8, 1, 28, 28))  # move the batch-norm statistics off their init
    return model


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _trained_tinycnn()
    meta = {"dataset": "mnist", "classes": list("abcde"), "method": "mat", "role": "h1",
            "epoch": 3, "metrics": {"clean": 0.98, "pgd20": 0.91}}
    path = tmp_path / "runs" / "model.safetensors"
    save_model(model, path, meta)
    assert model.training  # saving does not switch modes
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temp left
    if os.name == "posix":  # a normal file mode, not a temp file's 0600
        umask = os.umask(0)
        os.umask(umask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask

    loaded = load_model(path)
    assert isinstance(loaded, torch.nn.Module)
    assert not any(m.training for m in loaded.modules())
    assert loaded.spec == model.spec
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert read_model_meta(path) == {"format_version": 1, "model": model.spec, **meta}

    save_model(model, path, {"epoch": 4})  # overwrite in place
    assert read_model_meta(path)["epoch"] == 4


def test_load_restores_alias_architecture(tmp_path: Path) -> None:
    model = create_model("wrn16_4", num_classes=3)
    save_model(model, tmp_path / "w.safetensors")
    loaded = load_model(tmp_path / "w.safetensors")
    assert loaded.spec["name"] == "wrn16_4"
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_load_weights_into_existing_model(tmp_path: Path) -> None:
    model = _trained_tinycnn()
    path = tmp_path / "m.safetensors"
    save_model(model, path, {"epoch": 1})
    target = create_model(**model.spec).train()
    record = load_weights_into(target, path)
    assert record["epoch"] == 1
    assert target.training  # mode left as it was
    for k, v in model.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k

    with pytest.raises(CheckpointError, match="checkpoint is tinycnn with 5 classes.*is cnn32"):
        load_weights_into(create_model("cnn32"), path)
    with pytest.raises(CheckpointError, match="differ in: num_classes"):
        load_weights_into(create_model(**{**model.spec, "num_classes": 10}), path)


# --- errors ---------------------------------------------------------------------------------


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet19'") as info:
        create_model("resnet19")
    for name in MODELS.names():
        assert name in str(info.value)


def test_bad_model_arguments() -> None:
    with pytest.raises(ConfigError, match="depth must be 6n"):
        create_model("wrn", depth=30)
    with pytest.raises(ConfigError, match="mean has 3 values but the model has 1 input"):
        create_model("tinycnn", in_channels=1, mean=CIFAR_MEAN, std=[1.0])
    with pytest.raises(ConfigError, match="std must be finite and > 0"):
        create_model("tinycnn", in_channels=1, mean=[0.5], std=[0.0])
    with pytest.raises(ConfigError, match="has no option 'depth'; its options are: dropout"):
        create_model("wrn16_4", depth=22)
    with pytest.raises(ConfigError, match="takes no options"):
        create_model("resnet18", width=2)
    with pytest.raises(ConfigError, match="num_classes must be a positive integer"):
        create_model("tinycnn", num_classes=0)
    with pytest.raises(ConfigError, match="smallcnn needs input_size >= 16"):
        create_model("smallcnn", input_size=12)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no model file"):
        load_model(tmp_path / "absent.safetensors")

    path = tmp_path / "m.safetensors"
    save_model(_trained_tinycnn(), path)
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 4):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_model(bad)
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(text)


def _write(path: Path, tensors: dict, record: dict | None) -> Path:
    metadata = None if record is None else {"mutualat": json.dumps(record)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def test_foreign_and_mismatched_files(tmp_path: Path) -> None:
    tiny = _trained_tinycnn()
    state = tiny.state_dict()

    plain = _write(tmp_path / "plain.safetensors", state, None)
    with pytest.raises(CheckpointError, match="without mutualat metadata"):
        load_model(plain)

    alien = _write(tmp_path / "alien.safetensors", state,
                   {"format_version": 1, "model": {**tiny.spec, "name": "nosuchnet"}})
    with pytest.raises(CheckpointError, match="'nosuchnet'.*known: .*resnet18"):
        load_model(alien)

    future = _write(tmp_path / "future.safetensors", state,
                    {"format_version": 2, "model": tiny.spec})
    with pytest.raises(CheckpointError, match="format version 2"):
        load_model(future)

    madry = create_model("madrycnn", in_channels=1, input_size=28)
    wrong = _write(tmp_path / "wrong.safetensors", madry.state_dict(),
                   {"format_version": 1, "model": tiny.spec})
    with pytest.raises(CheckpointError, match="do not fit a 'tinycnn'.*missing: .*unexpected: "):
        load_model(wrong)

    other_k = create_model(**{**tiny.spec, "num_classes": 9})
    shape = _write(tmp_path / "shape.safetensors", other_k.state_dict(),
                   {"format_version": 1, "model": tiny.spec})
    with pytest.raises(CheckpointError, match=r"mis-shaped: fc.bias \(file \(9,\), model \(5,\)\)"):
        load_model(shape)



@pytest.mark.parametrize("claim", [{"widen_factor": 200}, {"num_classes": 10**12}],
                         ids=["widen-200", "1e12-classes"])
def test_a_forged_header_is_refused_before_a_network_is_built(tmp_path: Path, monkeypatch,
                                                              claim: dict) -> None:
    """A small file whose record claims a huge network (GBs, or more than any memory) is
    refused from the shapes in its header; nothing is built on a real device."""
    from mutualat.models import io

    small = create_model("wrn", depth=10, widen_factor=1, in_channels=1, input_size=28)
    forged = _write(tmp_path / "forged.safetensors", small.state_dict(),
                    {"format_version": 1, "model": {**small.spec, **claim}})
    assert forged.stat().st_size < 400_000
    built_for_real = []

    def create_model_on_meta_only(**spec):
        if torch.get_default_device().type != "meta":
            built_for_real.append(spec)
            raise AssertionError("load_model built the claimed network before checking the file")
        return create_model(**spec)

    monkeypatch.setattr(io, "create_model", create_model_on_meta_only)
    with pytest.raises(CheckpointError, match=r"forged\.safetensors: the weights do not fit a "
                                              r"'wrn' model; .*mis-shaped: .*\(file \("):
        load_model(forged)
    assert built_for_real == []


@pytest.mark.parametrize("name", MODELS.names())
def test_the_meta_skeleton_has_the_shapes_of_the_model(name: str) -> None:
    """load_model checks a file against the architecture built on the meta device."""
    real = create_model(name, num_classes=7, in_channels=1, input_size=28)
    with torch.device("meta"):
        skeleton = create_model(name, num_classes=7, in_channels=1, input_size=28)
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == \
        {k: v.shape for k, v in real.state_dict().items()}

def test_save_rejects_bad_input(tmp_path: Path) -> None:
    model = create_model("tinycnn")
    with pytest.raises(TypeError, match="'metrics' is not"):
        save_model(model, tmp_path / "m.safetensors", {"metrics": torch.zeros(1)})
    with pytest.raises(ValueError, match="reserved"):
        save_model(model, tmp_path / "m.safetensors", {"model": "x"})
    with pytest.raises(TypeError, match="no .spec"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_package_exports() -> None:
    assert mutualat.__version__ == "0.1.0"
    assert mutualat.load_model is load_model
    assert mutualat.save_model is save_model
    assert mutualat.create_model is create_model

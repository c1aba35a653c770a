"""Foreign models: torch:, robustbench: and py: sources, the checkpoint layouts, init from them.

Every layout test saves a published architecture (tests/reference_models.py) the way its
repository does, loads the file through a source string and compares logits with the
original module.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mutualat.errors import CheckpointError, ConfigError
from mutualat.models import (
    create_model,
    load_model,
    load_weights_into,
    open_model,
    parse_source,
)
from reference_models import (
    AttackerModel,
    KuangliuResNet18,
    PreActResNet18,
    TradesWideResNet,
    randomize_batchnorm,
)

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2471, 0.2435, 0.2616]


def _images(n: int = 4, channels: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(3))


def _same_logits(ours: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, got = reference.eval()(x), ours.eval()(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def _normalized(reference: torch.nn.Module, mean, std) -> torch.nn.Module:
    """The reference as its training code used it: normalization in the data pipeline."""
    from mutualat.models import Preprocessed

    return Preprocessed(reference, mean, std).eval()


# --------------------------------------------------------------------------------------------
# torch: every supported layout gives the original module's logits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["plain.pt", "dataparallel.pth", "robustbench.safetensors"])
def test_trades_wideresnet_files_give_the_same_logits(tmp_path: Path, how: str) -> None:
    torch.manual_seed(0)
    robustbench = how.startswith("robustbench")
    reference = randomize_batchnorm(TradesWideResNet(depth=10, widen_factor=2, sub_block1=robustbench,
                                                     normalize=(CIFAR_MEAN, CIFAR_STD) if robustbench else None))
    state = reference.state_dict()
    path = tmp_path / f"wrn-{how}"
    if how == "plain.pt":
        torch.save(state, path)
        text = f"torch:{path}?arch=wrn&depth=10&widen_factor=2&mean=0&std=1"
    elif how == "dataparallel.pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 76}, path)
        text = f"torch:{path}?arch=wrn&depth=10&widen_factor=2&mean=0&std=1"
    else:  # sub_block1 and mu/sigma, as RobustBench builds its normalized entries
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        text = f"torch:{path}?arch=wrn&depth=10&widen_factor=2"  # normalization from the file
    loaded = open_model(text)
    _same_logits(loaded.model, reference, _images())
    assert loaded.record["source"]["layout"] == "trades"
    assert loaded.record["model"]["name"] == "wrn" and loaded.record["model"]["depth"] == 10
    expected_mean = pytest.approx(CIFAR_MEAN) if robustbench else [0.0] * 3
    assert loaded.record["model"]["mean"] == expected_mean


def test_kuangliu_resnet18_reads_classes_from_the_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = randomize_batchnorm(KuangliuResNet18(num_classes=100))
    path = tmp_path / "ckpt.pth"
    torch.save({"net": reference.state_dict(), "acc": 51.2, "epoch": 200}, path)  # kuangliu's main.py
    source = f"torch:{path}?arch=resnet18&mean={','.join(map(str, CIFAR_MEAN))}&std={','.join(map(str, CIFAR_STD))}"
    loaded = open_model(source)
    assert loaded.record["model"]["num_classes"] == 100
    assert loaded.record["source"]["layout"] == "kuangliu"
    _same_logits(loaded.model, _normalized(reference, CIFAR_MEAN, CIFAR_STD), _images())


def test_rice_preact_resnet18(tmp_path: Path) -> None:
    torch.manual_seed(2)
    reference = randomize_batchnorm(PreActResNet18(final_bn=True))
    path = tmp_path / "model_best.pth"
    torch.save(reference.state_dict(), path)
    model = load_model(f"torch:{path}?arch=preact_resnet18&mean=0.5&std=0.25")
    _same_logits(model, _normalized(reference, [0.5] * 3, [0.25] * 3), _images())


def test_madrylab_robustness_checkpoint_with_its_normalizer(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = randomize_batchnorm(KuangliuResNet18())
    reference = AttackerModel(net, CIFAR_MEAN, CIFAR_STD).eval()
    path = tmp_path / "checkpoint.pt.best"
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    assert any(k.startswith("module.attacker.model.") for k in state)  # the network twice
    torch.save({"model": state, "epoch": 150, "schedule": None}, path)
    loaded = open_model(f"torch:{path}?arch=resnet18&layout=robustness")
    assert loaded.record["model"]["mean"] == pytest.approx(CIFAR_MEAN)
    _same_logits(loaded.model, reference, _images())
    # Detected without layout= too.
    assert open_model(f"torch:{path}?arch=resnet18").record["source"]["layout"] == "robustness"


def test_a_state_dict_of_our_own_model_keeps_its_normalization(tmp_path: Path) -> None:
    torch.manual_seed(4)
    ours = randomize_batchnorm(create_model("tinycnn", num_classes=7, in_channels=1, input_size=28,
                                            mean=[0.3], std=[0.2]))
    path = tmp_path / "tiny.pt"
    torch.save(ours.state_dict(), path)
    loaded = open_model(f"torch:{path}?arch=tinycnn&size=28")
    assert loaded.record["source"]["layout"] == "mutualat"
    assert loaded.record["model"]["in_channels"] == 1 and loaded.record["model"]["num_classes"] == 7
    _same_logits(loaded.model, ours, _images(channels=1, size=28))


# --------------------------------------------------------------------------------------------
# torch: what does not fit is named
# --------------------------------------------------------------------------------------------


def test_a_wrong_layout_names_the_offending_keys(tmp_path: Path) -> None:
    # kuangliu's PreActResNet has no final batch-norm; ours (and Rice et al.'s) has.
    path = tmp_path / "kuangliu-preact.pt"
    torch.save(PreActResNet18(final_bn=False).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_model(f"torch:{path}?arch=preact_resnet18&mean=0&std=1")
    message = str(err.value)
    for key in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        assert key in message
    assert "missing (4)" in message  # every key, counted (num_batches_tracked may be absent)

    # A ResNet file read as a WideResNet: unexpected and missing keys both named.
    path = tmp_path / "resnet.pt"
    torch.save(KuangliuResNet18().state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_model(f"torch:{path}?arch=wrn&depth=10&widen_factor=1&mean=0&std=1")
    message = str(err.value)
    assert "unexpected" in message and "linear.weight" in message and "layer4.1.conv2.weight" in message
    assert "missing" in message and "fc.weight" in message and "block1.layer.0.conv1.weight" in message


def test_mis_shaped_weights_are_named(tmp_path: Path) -> None:
    path = tmp_path / "wrn.pt"
    torch.save(TradesWideResNet(depth=10, widen_factor=2).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"mis-shaped .*block1\.layer\.0\.conv1\.weight \(file \(32, 16, 3, 3\)"):
        load_model(f"torch:{path}?arch=wrn&depth=10&widen_factor=1&mean=0&std=1")


def test_normalization_must_be_known_and_consistent(tmp_path: Path) -> None:
    path = tmp_path / "r.pt"
    torch.save(KuangliuResNet18().state_dict(), path)
    with pytest.raises(ConfigError, match="normalization"):
        load_model(f"torch:{path}?arch=resnet18")
    with pytest.raises(ConfigError, match="both mean and std"):
        load_model(f"torch:{path}?arch=resnet18&mean=0")
    with pytest.raises(ConfigError, match="arch=NAME"):
        load_model(f"torch:{path}?mean=0&std=1")
    # --mean/--std of the CLI arrive as defaults.
    assert load_model(f"torch:{path}", arch="resnet18", mean=[0.0], std=[1.0]).spec["std"] == [1.0] * 3
    ours = create_model("tinycnn", in_channels=1, input_size=28, mean=[0.3], std=[0.2])
    torch.save(ours.state_dict(), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="differ from the normalization the file records"):
        load_model(f"torch:{tmp_path / 't.pt'}?arch=tinycnn&mean=0.5&std=0.2")


class _Pickled:
    def __init__(self) -> None:
        self.value = 3


def test_the_safe_loader_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": KuangliuResNet18().state_dict(), "args": _Pickled()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_model(f"torch:{path}?arch=resnet18&mean=0&std=1")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="no state dict found .*optimizer"):
        load_model(f"torch:{tmp_path / 'nothing.pt'}?arch=resnet18&mean=0&std=1")


def test_source_strings_parse_and_check() -> None:
    s = parse_source("torch:a/b.pt?arch=wrn&depth=28&mean=0.5,0.4,0.3&std=1&classes=100&layout=trades")
    assert (s.kind, s.target, s.options.arch, s.options.classes) == ("torch", "a/b.pt", "wrn", 100)
    assert s.options.mean == [0.5, 0.4, 0.3] and s.options.extra == {"depth": 28}
    assert parse_source("runs/x/models/h1.safetensors").kind == "file"
    assert parse_source("robustbench:Carmon2019Unlabeled").default_name() == "Carmon2019Unlabeled"
    assert parse_source("py:pkg.mod:build").default_name() == "build"
    with pytest.raises(ConfigError, match="positive integer"):
        parse_source("torch:a.pt?classes=zero")
    with pytest.raises(ConfigError, match="numbers separated by commas"):
        parse_source("torch:a.pt?mean=a,b")


def test_cli_model_names_are_not_split_at_option_equals() -> None:
    from mutualat.cli_eval import parse_models

    named = parse_models(["torch:t.pt?arch=wrn34_10&mean=0&std=1", "teacher=torch:t.pt?arch=wrn",
                          "runs/at/models/model.safetensors"])
    assert list(named) == ["t", "teacher", "at"]
    assert named["teacher"].options.arch == "wrn" and named["t"].options.arch == "wrn34_10"


# --------------------------------------------------------------------------------------------
# robustbench:
# --------------------------------------------------------------------------------------------


def _robustbench_file(root: Path, name: str, dataset: str = "cifar10", threat: str = "Linf"):
    """A model saved where and how RobustBench keeps its zoo: <dir>/<dataset>/<threat>/<name>.pt,
    ``{"state_dict": {"module." + key: tensor}}`` (Carmon2019Unlabeled's format)."""
    torch.manual_seed(5)
    reference = randomize_batchnorm(TradesWideResNet(depth=10, widen_factor=2, sub_block1=True))
    folder = root / dataset / threat
    folder.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}},
               folder / f"{name}.pt")
    return reference


def test_robustbench_layout_loads_without_the_package_or_a_network(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "robustbench", None)  # not importable
    reference = _robustbench_file(tmp_path, "Local2024Made")
    loaded = open_model(f"robustbench:Local2024Made?model_dir={tmp_path}&arch=wrn&depth=10"
                        "&widen_factor=2&mean=0&std=1")
    _same_logits(loaded.model, reference, _images())
    source = loaded.record["source"]
    assert source["kind"] == "robustbench" and source["loader"].startswith("mutualat")
    assert source["path"] == str(tmp_path / "cifar10" / "Linf" / "Local2024Made.pt")
    assert source["layout"] == "trades" and loaded.record["model"]["name"] == "wrn"


def test_robustbench_offline_message_says_where_to_put_the_weights(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "robustbench", None)
    # A zoo entry whose architecture mutualat knows: only the file is missing.
    with pytest.raises(CheckpointError) as err:
        load_model(f"robustbench:Carmon2019Unlabeled?model_dir={tmp_path}&threat=linf")
    assert str(tmp_path / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in str(err.value)
    assert "Offline" in str(err.value)
    with pytest.raises(ConfigError, match="arch=NAME"):
        load_model(f"robustbench:Someone2099Unknown?model_dir={tmp_path}")
    with pytest.raises(ConfigError, match="threat must be one of"):
        load_model("robustbench:Standard?threat=l3")


def test_robustbench_through_the_package(tmp_path: Path, monkeypatch) -> None:
    """A stand-in ``robustbench`` package: the call and the record, not RobustBench itself."""
    calls = []
    reference = randomize_batchnorm(TradesWideResNet(depth=10, widen_factor=1))

    def fake_load_model(model_name, model_dir, dataset, threat_model):
        calls.append((model_name, model_dir, dataset, threat_model))
        if model_name == "Offline2020":
            raise ConnectionError("no network")
        return reference

    package = types.ModuleType("robustbench")
    package.__version__ = "1.1"
    utils = types.ModuleType("robustbench.utils")
    utils.load_model = fake_load_model
    package.utils = utils
    monkeypatch.setitem(sys.modules, "robustbench", package)
    monkeypatch.setitem(sys.modules, "robustbench.utils", utils)

    loaded = open_model(f"robustbench:Carmon2019Unlabeled?model_dir={tmp_path}&dataset=cifar100&threat=L2")
    assert calls == [("Carmon2019Unlabeled", str(tmp_path), "cifar100", "L2")]
    assert loaded.model is reference
    assert loaded.record["model"]["num_classes"] == 100
    assert loaded.record["source"]["loader"] == "robustbench 1.1"
    with pytest.raises(CheckpointError, match=r"cifar10/Linf/Offline2020\.pt.*ConnectionError"):
        load_model(f"robustbench:Offline2020?model_dir={tmp_path}")


# --------------------------------------------------------------------------------------------
# py:
# --------------------------------------------------------------------------------------------

FACTORY = '''
import torch
from torch import nn

def build(width=4, num_classes=10):
    torch.manual_seed(width)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))

def not_a_model():
    return 3
'''


def test_py_factory_from_a_file_with_keywords_and_preprocessing(tmp_path: Path) -> None:
    (tmp_path / "zoo.py").write_text(FACTORY)
    loaded = open_model(f"py:{tmp_path / 'zoo.py'}:build?width=6&mean=0.5&std=0.5&channels=1&classes=10")
    assert loaded.record["source"] == {"kind": "py", "factory": f"{tmp_path / 'zoo.py'}:build",
                                       "options": {"mean": [0.5], "std": [0.5], "classes": 10,
                                                   "channels": 1, "width": 6}}
    assert loaded.record["model"]["num_classes"] == 10 and loaded.record["model"]["mean"] == [0.5]
    x = _images(channels=1, size=28)
    namespace: dict = {}
    exec(FACTORY, namespace)
    reference = namespace["build"](width=6)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference((x - 0.5) / 0.5))
    with pytest.raises(ConfigError, match="not an nn.Module"):
        load_model(f"py:{tmp_path / 'zoo.py'}:not_a_model")
    with pytest.raises(ConfigError, match="has no function 'missing'"):
        load_model(f"py:{tmp_path / 'zoo.py'}:missing")
    with pytest.raises(ConfigError, match="cannot import"):
        load_model("py:surely_not_a_module_here:build")


def test_py_factory_by_module_name(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_zoo_module.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    # classes= describes the model; the factory's own keywords pass through.
    model = load_model("py:my_zoo_module:build?width=2&num_classes=3&classes=3")
    assert model(_images(2, channels=1, size=8)).shape == (2, 3)


# --------------------------------------------------------------------------------------------
# models.N.init: a foreign teacher loaded into the member's architecture
# --------------------------------------------------------------------------------------------


def test_load_weights_into_takes_the_sources_normalization(tmp_path: Path) -> None:
    torch.manual_seed(6)
    reference = randomize_batchnorm(KuangliuResNet18())
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    member = create_model("resnet18", mean=CIFAR_MEAN, std=CIFAR_STD)  # the dataset's normalization
    record = load_weights_into(member, f"torch:{path}?mean=0&std=1")  # trained on raw pixels
    assert record["source"]["layout"] == "kuangliu" and member.spec["mean"] == [0.0] * 3
    _same_logits(member, reference, _images())
    with pytest.raises(CheckpointError, match="differs from the model it initializes"):
        load_weights_into(create_model("resnet18"), f"torch:{path}?arch=wrn34_10&mean=0&std=1")


def test_ard_distils_from_a_plain_pytorch_teacher(tmp_path: Path) -> None:
    from mutualat.config import load_config
    from mutualat.models import read_model_meta
    from mutualat.train import Trainer

    from conftest import tiny_overrides

    torch.manual_seed(7)
    teacher = randomize_batchnorm(create_model("tinycnn", in_channels=1, input_size=28))
    path = tmp_path / "teacher.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in teacher.state_dict().items()
                                     if not k.startswith("normalize.")}}, path)
    cfg = load_config(None, tiny_overrides(epochs=1) + [
        "method.name=ard", f"models.0.init=torch:{path}?mean=0&std=1", "models.0.frozen=true",
        "models.1.name=tinycnn", "eval.test=false",
    ])
    trainer = Trainer(cfg, tmp_path / "run")
    frozen = trainer.cohort[0].model
    _same_logits(frozen, teacher, _images(channels=1, size=28))
    trainer.fit()
    student = read_model_meta(tmp_path / "run" / "models" / "student.safetensors")
    assert student["role"] == "student"
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["event"] == "epoch"


def test_a_run_from_a_moved_pytorch_teacher_resumes_but_not_with_other_options(tmp_path: Path) -> None:
    """``torch:FILE?mean=..&std=..`` as ARD's teacher: the run, interrupted and moved with the
    file, resumes naming its new path; the same file with other options is refused."""
    import shutil

    from mutualat.config import load_config
    from mutualat.errors import ConfigError
    from mutualat.train import Trainer

    from conftest import tiny_overrides, train_first_epoch_only

    def ard(init: str):
        return load_config(None, tiny_overrides(epochs=2) + [
            "method.name=ard", f"models.0.init={init}", "models.0.frozen=true",
            "models.1.name=tinycnn", "eval.test=false"])

    torch.manual_seed(7)
    teacher = randomize_batchnorm(create_model("tinycnn", in_channels=1, input_size=28))
    first = tmp_path / "first"
    first.mkdir()
    torch.save({k: v for k, v in teacher.state_dict().items() if not k.startswith("normalize.")},
               first / "teacher.pth")
    train_first_epoch_only(ard(f"torch:{first / 'teacher.pth'}?mean=0&std=1"), first / "run")
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    with pytest.raises(ConfigError, match="models.0.init"):
        Trainer(ard(f"torch:{moved / 'teacher.pth'}?mean=0.5&std=1"), moved / "run", resume=True)
    Trainer(ard(f"torch:{moved / 'teacher.pth'}?mean=0&std=1"), moved / "run", resume=True).fit()
    epochs = [json.loads(line)["epoch"] for line in (moved / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "epoch"]
    assert epochs == [1, 2]  # the first epoch's run, resumed for the second


def test_cli_builds_a_state_dict_for_the_data_it_evaluates(tmp_path: Path) -> None:
    """A tinycnn state dict evaluated on 28x28 data: size comes from the data, classes and
    channels from the weights, normalization from the file, the record into the summary."""
    from mutualat.cli_eval import main

    torch.manual_seed(8)
    ours = randomize_batchnorm(create_model("tinycnn", in_channels=1, input_size=28, mean=[0.28], std=[0.35]))
    torch.save({"state_dict": ours.state_dict()}, tmp_path / "tiny.pth")
    out = tmp_path / "eval"
    assert main(["eval", "--model", f"torch:{tmp_path / 'tiny.pth'}", "--arch", "tinycnn", "--suite", "quick",
                 "--data", "fashion-mnist-embedded", "--n", "12", "--no-checks", "--no-progress",
                 "--device", "cpu", "--out", str(out)]) == 0
    info = json.loads((out / "summary.json").read_text())["models"]["tiny"]["info"]
    assert info["model"]["input_size"] == 28 and info["model"]["in_channels"] == 1
    assert info["model"]["mean"] == pytest.approx([0.28])
    assert info["source"]["kind"] == "torch" and info["source"]["layout"] == "mutualat"
    assert len(info["source"]["sha256"]) == 16

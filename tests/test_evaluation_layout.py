"""The evaluator's memory layout (mutualat.evaluation.layout): channels_last finds what the
contiguous layout finds, is recorded per attack, resumes a folder begun in the other layout,
gives the caller's models back as they came, and is refused (or skipped) for a model that
cannot run in it."""

from __future__ import annotations

import copy
import json
import shutil
import logging

import numpy as np
import pytest
import torch
from torch import nn

from conftest import script_module
from mutualat.data import load_dataset
from mutualat.errors import ConfigError
from mutualat.evaluation import evaluate
from mutualat.attacks.pgd import PGD
from mutualat.evaluation.layout import ChannelsLast, in_layout
from mutualat.evaluation.records import fingerprint_model
from mutualat.evaluation.suite import suite_from_dict
from mutualat.evaluation.transfer import default_attack, transfer_matrix
from mutualat.evaluation.worst_case import BROKEN
from mutualat.models import MODELS, create_model
from mutualat.models.ensemble import Ensemble

SUITE = suite_from_dict({
    "name": "layout",
    "per_attack": "cumulative",
    "threats": {"linf": {"eps": 0.03}},
    "attacks": [
        {"id": "pgd-5", "name": "pgd", "params": {"steps": 5, "random_start": True}},
        {"id": "fgsm", "name": "fgsm"},
    ],
})


def _model_and_data(n: int = 48) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tinycnn trained for 60 plain steps on the embedded Fashion-MNIST, and ``n`` of its
    test images: most are clean-correct, and l-inf 0.03 breaks about half of those."""
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist-embedded")
    xs = torch.from_numpy(data.train.images).float().div(255)
    ys = torch.from_numpy(data.train.labels).long()
    model = create_model("tinycnn", num_classes=10, in_channels=1, input_size=28)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        i = torch.randint(len(ys), (64,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(xs[i]), ys[i]).backward()
        optimizer.step()
    return (model.eval(), torch.from_numpy(data.test.images[:n]).float().div(255),
            torch.from_numpy(data.test.labels[:n]).long())


def _evaluate(model, x, y, out, **kw):
    return evaluate({"m": model}, kw.pop("suite", SUITE), x, y, out, batch_size=16, device="cpu",
                    seed=0, checks=False, progress=False, **kw)


def _outcome(out) -> np.ndarray:
    with np.load(out / "m" / "correct.npz") as f:
        return f["outcome"]


def test_channels_last_finds_what_contiguous_finds_and_each_attack_says_which_ran(tmp_path):
    model, x, y = _model_and_data()
    before = fingerprint_model(model)
    off = _evaluate(copy.deepcopy(model), x, y, tmp_path / "off", channels_last="off")
    auto = _evaluate(model, x, y, tmp_path / "auto")  # the default: channels_last on the CPU
    assert {a["layout"] for a in off["models"]["m"]["attacks"].values()} == {"contiguous"}
    assert {a["layout"] for a in auto["models"]["m"]["attacks"].values()} == {"channels_last"}
    # the caller's model comes back as it went in: contiguous, the same values
    assert all(p.is_contiguous() for p in model.parameters()) and fingerprint_model(model) == before
    torch.nn.utils.parameters_to_vector(model.parameters())  # views every weight: needs contiguous
    # The same sums in another order: an attack's outcome may flip only on a near-tie.
    a, b = _outcome(tmp_path / "off"), _outcome(tmp_path / "auto")
    assert 0 < (a == BROKEN).sum() < a.size  # something broke, not everything
    assert (a != b).sum() <= 1, (a, b)


def test_a_folder_begun_in_one_layout_resumes_in_the_other(tmp_path):
    model, x, y = _model_and_data()
    out = tmp_path / "ev"
    first = _evaluate(copy.deepcopy(model), x, y, out, channels_last="off")
    # as if stopped after its first attack: the second attack's record and the summary gone
    (out / "m" / "attacks" / "fgsm.npz").unlink()
    (out / "summary.json").unlink()
    resumed = _evaluate(model, x, y, out, channels_last="on")
    attacks = resumed["models"]["m"]["attacks"]
    assert attacks["pgd-5"]["layout"] == "contiguous" and attacks["fgsm"]["layout"] == "channels_last"
    assert attacks["pgd-5"]["accuracy"] == first["models"]["m"]["attacks"]["pgd-5"]["accuracy"]
    assert abs(resumed["models"]["m"]["r_worst"] - first["models"]["m"]["r_worst"]) <= 1 / len(y)


class _ViewsAsNCHW(nn.Module):
    """Flattens its convolutions' output with view, which a channels_last tensor refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.fc = nn.Linear(4 * 24 * 24, 10)

    def forward(self, x):
        h = self.conv(x)
        return self.fc(h.view(h.shape[0], -1))


class _ReadsRawMemory(_ViewsAsNCHW):
    """Reads its convolutions' output in memory order, which channels_last permutes."""

    def forward(self, x):
        h = self.conv(x)
        return self.fc(torch.as_strided(h, (h.shape[0], h[0].numel()), (h[0].numel(), 1)))


@pytest.mark.parametrize("model_class, problem", [
    (_ViewsAsNCHW, "it raised RuntimeError"),
    (_ReadsRawMemory, "its logits differ from the contiguous layout's by"),
])
def test_a_model_that_cannot_run_channels_last_stays_contiguous_or_is_refused(
        tmp_path, caplog, model_class, problem):
    torch.manual_seed(0)
    model = model_class().eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # every example clean-correct
    with caplog.at_level(logging.INFO, logger="mutualat.evaluation.layout"):
        summary = _evaluate(model, x, y, tmp_path / "auto")
    assert {a["layout"] for a in summary["models"]["m"]["attacks"].values()} == {"contiguous"}
    assert f"m: not converted to channels_last: {problem}" in caplog.text
    assert model.conv[2].weight.is_contiguous()  # the probe ran on a copy
    with pytest.raises(ConfigError, match=f"model 'm' cannot run in channels_last: {problem}"):
        _evaluate(model, x, y, tmp_path / "on", channels_last="on")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_architecture_passes_the_probe(name):
    """Deep nets' input gradients differ between the layouts by fp32 rounding (up to 4.9e-3
    relative, WRN-34-10): the probe must not mistake that for a model that cannot run."""
    c, side = (1, 28) if name in ("tinycnn", "smallcnn", "madrycnn") else (3, 32)
    model = create_model(name, num_classes=10, in_channels=c, input_size=side)
    torch.manual_seed(0)
    laid, layout = in_layout(name, model, torch.rand(2, c, side, side), "on", torch.device("cpu"))
    assert layout == "channels_last" and isinstance(laid, ChannelsLast)


def test_a_model_that_returns_log_probabilities_passes_the_probe():
    """An Ensemble given as one model (scripts/apgd_targets_gap.py does so) and a net ending in
    log_softmax: the logsumexp of log-probabilities is 0 for every input, so a probe on its
    gradient compared rounding noise and refused them (relative differences 0.7 to 1.6)."""
    torch.manual_seed(0)
    members = [create_model("smallcnn", num_classes=10, in_channels=1, input_size=28).eval()
               for _ in range(2)]
    log_softmax_net = nn.Sequential(copy.deepcopy(members[0]), nn.LogSoftmax(dim=1)).eval()
    for seed in range(3):
        torch.manual_seed(seed)
        x = torch.rand(2, 1, 28, 28)
        for name, model in (("ensemble", Ensemble(members).eval()), ("log_softmax", log_softmax_net)):
            _, layout = in_layout(name, model, x, "on", torch.device("cpu"))
            assert layout == "channels_last", (name, seed)


def test_an_ensemble_with_a_member_that_cannot_convert_runs_mixed_and_says_so(tmp_path):
    model, x, y = _model_and_data(16)
    torch.manual_seed(1)
    other = _ViewsAsNCHW().eval()
    summary = evaluate({"good": model, "bad": other}, SUITE, x, y, tmp_path / "ev", batch_size=16,
                       device="cpu", seed=0, ensemble=True, checks=False, progress=False)
    layouts = {name: {a["layout"] for a in m["attacks"].values()} for name, m in summary["models"].items()}
    assert layouts == {"good": {"channels_last"}, "bad": {"contiguous"}, "ensemble": {"mixed"}}
    assert all(p.is_contiguous() for p in (*model.parameters(), *other.parameters()))


def test_an_attack_resumed_in_the_other_layout_is_recorded_mixed(tmp_path, monkeypatch):
    model, x, y = _model_and_data()
    original, calls = PGD.perturb, []

    def stopped_at_the_second_batch(self, model, x, y):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, model, x, y)

    monkeypatch.setattr(PGD, "perturb", stopped_at_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        _evaluate(model, x, y, tmp_path / "ev", channels_last="off")
    assert (tmp_path / "ev" / "m" / "attacks" / "pgd-5.partial.npz").is_file()
    monkeypatch.setattr(PGD, "perturb", original)
    summary = _evaluate(model, x, y, tmp_path / "ev")
    attacks = summary["models"]["m"]["attacks"]
    assert attacks["pgd-5"]["layout"] == "mixed" and attacks["fgsm"]["layout"] == "channels_last"


def test_a_model_under_bf16_autocast_is_probed_in_fp32(tmp_path):
    model, x, y = _model_and_data(8)
    summary = _evaluate(model, x, y, tmp_path / "bf16", amp="bf16")
    assert summary["precision"] == "bf16 autocast"
    assert {a["layout"] for a in summary["models"]["m"]["attacks"].values()} == {"channels_last"}


def test_an_unknown_layout_is_refused_before_anything_is_written(tmp_path):
    model, x, y = _model_and_data(8)
    with pytest.raises(ConfigError, match="channels_last must be one of auto, on, off, got 'yes'"):
        _evaluate(model, x, y, tmp_path / "ev", channels_last="yes")
    assert not (tmp_path / "ev").exists()


def test_transfer_runs_in_channels_last_and_says_so(tmp_path):
    model, x, y = _model_and_data(32)
    other = copy.deepcopy(model)
    attack = default_attack("linf", 0.03, steps=5)
    off = transfer_matrix({"a": copy.deepcopy(model)}, {"a": copy.deepcopy(model), "b": copy.deepcopy(other)},
                          x, y, attack, batch_size=16, device="cpu", progress=False, channels_last="off")
    auto = transfer_matrix({"a": model}, {"a": model, "b": other}, x, y, attack, batch_size=16,
                           device="cpu", progress=False)
    assert off["layout"] == {"a": "contiguous", "b": "contiguous"}
    assert auto["layout"] == {"a": "channels_last", "b": "channels_last"}
    for source, row in off["accuracy"].items():
        for target, acc in row.items():
            assert abs(auto["accuracy"][source][target] - acc) <= 1 / len(y)


def test_off_leaves_a_model_its_owner_converted_as_it_is_and_says_so(tmp_path):
    model, x, y = _model_and_data(8)
    model.to(memory_format=torch.channels_last)
    summary = _evaluate(model, x, y, tmp_path / "off", channels_last="off")
    assert {a["layout"] for a in summary["models"]["m"]["attacks"].values()} == {"channels_last"}


def test_eval_agreement_compares_two_runs_of_one_experiment(tmp_path, capsys):
    """scripts/eval_agreement.py: per-example agreement of an experiment run in two layouts
    (the way a GPU run is checked against the CPU's); another seed is another experiment."""
    agree = script_module("eval_agreement")
    model, x, y = _model_and_data()
    _evaluate(copy.deepcopy(model), x, y, tmp_path / "off", channels_last="off")
    _evaluate(copy.deepcopy(model), x, y, tmp_path / "on", channels_last="on")
    capsys.readouterr()  # what the evaluations printed is not the script's output
    assert agree.main([str(tmp_path / "off"), str(tmp_path / "on"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "layout contiguous" in result["a"]["setting"]
    assert "layout channels_last" in result["b"]["setting"]
    rows = {r["what"]: r for r in result["rows"]}
    assert list(rows) == ["clean", "pgd-5", "fgsm", "R_worst"]
    worst = {}
    for layout in ("off", "on"):
        with np.load(tmp_path / layout / "m" / "correct.npz") as outcomes:
            worst[layout] = outcomes["robust"].all(axis=1)
    assert rows["R_worst"]["differ"] == int((worst["off"] != worst["on"]).sum())
    summary = json.loads((tmp_path / "on" / "summary.json").read_text())
    assert rows["R_worst"]["b"] == pytest.approx(summary["models"]["m"]["r_worst"])
    assert all(r["n"] == len(y) for r in result["rows"])
    assert agree.main([str(tmp_path / "off"), str(tmp_path / "on")]) == 0
    assert "| m | R_worst |" in capsys.readouterr().out

    evaluate({"m": model}, SUITE, x, y, tmp_path / "seed1", batch_size=16, device="cpu", seed=1,
             checks=False, progress=False)
    capsys.readouterr()
    assert agree.main([str(tmp_path / "off"), str(tmp_path / "seed1")]) == 2
    assert "different experiments: they differ in seed" in capsys.readouterr().err
    assert agree.main([str(tmp_path / "off"), str(tmp_path / "nowhere")]) == 2
    assert "not a finished evaluation: not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert agree.main([str(tmp_path / "off"), str(tmp_path / "empty")]) == 2
    assert "not a finished evaluation: no manifest.json" in capsys.readouterr().err
    shutil.copytree(tmp_path / "on", tmp_path / "records-only")
    shutil.rmtree(tmp_path / "records-only" / "m")
    assert agree.main([str(tmp_path / "off"), str(tmp_path / "records-only")]) == 2
    assert "no per-example outcomes for m" in capsys.readouterr().err

"""The gradient-masking checks at every lp threat of a suite (l-inf, l2 and l1 in Table 5's),
not only its l-inf one: a model can mask one norm's gradients and not another's."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mutualat.evaluation import checks as masking
from mutualat.evaluation import evaluate
from mutualat.evaluation.suite import suite_from_dict

THREATS = {"l2": ("l2", 1.0), "l1": ("l1", 4.0)}


class _Linear(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class _Quantized(_Linear):
    """A linear model behind an input quantiser: its gradient is exactly zero everywhere, so
    gradient attacks stand still while random noise still changes its predictions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.round(x * 4) / 4)


def _data(model: nn.Module, n: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.rand(n, 1, 8, 8)
    with torch.no_grad():
        return x, model(x).argmax(dim=1)  # every example classified correctly


def _check(models: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    torch.manual_seed(0)
    return masking.run_checks(models, x, y, "linf", 0.1, 30, torch.device("cpu"),
                              masking.CheckConfig(n=len(y), sample="first"),
                              other_threats=THREATS)


@pytest.mark.filterwarnings("ignore:(pgd|fgsm). the input gradient is exactly zero")
def test_a_masked_model_is_flagged_at_every_threat_not_only_l_inf():
    model = _Quantized()
    x, y = _data(model)
    record = _check({"m": model}, x, y)
    assert record["threats"] == [{"norm": "linf", "eps": 0.1}, {"norm": "l2", "eps": 1.0},
                                 {"norm": "l1", "eps": 4.0}]
    for label in ("linf 0.1", "l2 1", "l1 4"):
        assert any(w.startswith("m: random noise") and f"PGD-20 at {label} " in w
                   for w in record["warnings"]), label
    # PGD moves no further than its random start: random noise does as well at every threat
    for key in THREATS:
        row = record["other_threats"][key]["models"]["m"]
        assert row["noise"] <= row["pgd"] < 1.0
    # a single step at l2 as at l-inf; none at l1 (the sparse l1 PGD would lose to it on
    # honest models: a weak attack, not masking)
    assert set(record["other_threats"]["l2"]["models"]["m"]) == {"pgd", "noise", "single_step"}
    assert set(record["other_threats"]["l1"]["models"]["m"]) == {"pgd", "noise"}


def test_an_honest_model_raises_no_warning_at_any_threat():
    model, other = _Linear(), _Linear()
    with torch.no_grad():  # a second model that agrees on most examples
        other.linear.weight.add_(0.05 * torch.randn_like(other.linear.weight))
    x, y = _data(model)
    record = _check({"a": model, "b": other}, x, y)
    assert record["warnings"] == []
    for key, (norm, eps) in THREATS.items():
        entry = record["other_threats"][key]
        assert entry["threat"] == {"norm": norm, "eps": eps}
        assert entry["models"]["a"]["pgd"] < entry["models"]["a"]["noise"]
        assert set(entry["transfer"]) == {"a", "b"}  # black-box against white-box at this threat
    # the l-inf numbers stay where a one-threat record had them
    assert set(record["models"]["a"]) == {"clean", "pgd", "noise", "single_step", "large_eps_pgd"}


def test_a_transfer_attack_beating_white_box_at_l2_is_named_with_its_threat():
    warnings = masking.transfer_vs_whitebox({"a": {"b": 0.20}}, {"b": 0.50}, 0.01, "l2 1")
    assert warnings == ["b: the black-box attack transferred from a at l2 1 (20.0%) is stronger "
                        "than the white-box attack (50.0%); white-box gradients are "
                        "uninformative, a sign of gradient masking"]


def test_each_threats_transfer_check_compares_with_that_threats_white_box(monkeypatch):
    seen = {}

    def spy(accuracy, white_box, tol, threat=""):
        seen[threat] = dict(white_box)
        return []

    monkeypatch.setattr(masking, "transfer_vs_whitebox", spy)
    model, other = _Linear(), _Linear(seed=3)
    x, y = _data(model)
    record = _check({"a": model, "b": other}, x, y)
    assert seen["linf 0.1"] == {m: record["models"][m]["pgd"] for m in ("a", "b")}
    for key, label in (("l2", "l2 1"), ("l1", "l1 4")):
        rows = record["other_threats"][key]["models"]
        assert seen[label] == {m: rows[m]["pgd"] for m in ("a", "b")}
    assert record["other_threats"]["l2"]["models"]["a"]["pgd"] != record["models"]["a"]["pgd"]


class _Normed(_Linear):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(x))


@pytest.mark.filterwarnings("ignore:(pgd|fgsm). the input gradient is exactly zero")
def test_the_checks_leave_batch_norm_statistics_and_the_mode_as_they_were():
    model = _Normed()
    with torch.no_grad():
        model.norm.running_mean.fill_(0.3)
        model.norm.running_var.fill_(0.5)
    model.train()
    x, y = _data(model.eval())
    model.train()
    before = {k: v.clone() for k, v in model.norm.state_dict().items()}
    _check({"m": model}, x, y)
    assert model.training
    for k, v in model.norm.state_dict().items():
        assert torch.equal(v, before[k]), k


_SUITE = {
    "name": "three-norms",
    "threats": {"linf": {"norm": "linf", "eps": 0.1}, "l2": {"norm": "l2", "eps": 1.0},
                "l1": {"norm": "l1", "eps": 4.0}},
    "attacks": [{"id": f"pgd-{k}", "name": "pgd", "threat": k, "params": {"steps": 5}}
                for k in ("linf", "l2", "l1")],
}


def test_an_evaluation_checks_each_threat_and_redoes_a_record_that_checked_only_l_inf(tmp_path):
    model = _Linear()
    x, y = _data(model, 40)
    suite = suite_from_dict(_SUITE)
    config = masking.CheckConfig(n=40, sample="first")
    kw = dict(batch_size=40, device="cpu", seed=0, progress=False, checks=config)
    summary = evaluate({"m": model}, suite, x, y, tmp_path, **kw)
    path = tmp_path / "checks.json"
    record = json.loads(path.read_text())
    assert summary["checks"] == record
    assert [t["norm"] for t in record["threats"]] == ["linf", "l2", "l1"]
    assert set(record["other_threats"]) == {"l2", "l1"}
    # kept as it is when asked again with the same settings
    record["other_threats"]["l2"]["models"]["m"]["pgd"] = 0.123
    path.write_text(json.dumps(record))
    again = evaluate({"m": model}, suite, x, y, tmp_path, **kw)
    assert again["checks"]["other_threats"]["l2"]["models"]["m"]["pgd"] == 0.123
    # a record from before every threat was checked (l-inf alone) is measured again
    del record["threats"], record["other_threats"]
    path.write_text(json.dumps(record))
    redone = evaluate({"m": model}, suite, x, y, tmp_path, **kw)
    assert set(redone["checks"]["other_threats"]) == {"l2", "l1"}
    assert redone["checks"]["other_threats"]["l2"]["models"]["m"]["pgd"] != 0.123

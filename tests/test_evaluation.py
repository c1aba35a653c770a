"""The evaluator, suites, worst-case logic, checks, transfer and reports.

Most tests use ``MarkerModel`` and ``MarkedAttack``: the model reads the class written into
one pixel and an attack breaks exactly the examples carrying its marker pixel, so every
expected number is known by hand. An end-to-end test drives the CLI with two tiny trained
CNNs on the embedded Fashion-MNIST subset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from mutualat.attacks import ATTACKS, Attack
from mutualat.errors import ConfigError
from mutualat.evaluation import (
    BROKEN,
    NOT_ATTACKED,
    ROBUST,
    Ensemble,
    EvaluationError,
    accuracy_report,
    candidates,
    cumulative_accuracy,
    evaluate,
    load_suite,
    packaged_suites,
    pgd_alone_columns,
    standalone_accuracy,
    suite_from_dict,
    worst_case,
)
from mutualat.evaluation import attack_loop
from mutualat.evaluation import checks as masking
from mutualat.evaluation.autoattack import autoattack_available
from mutualat.evaluation.records import evaluation_identity
from mutualat.evaluation.suite import known_attacks

from conftest import reference_missing


def _needs_autoattack() -> None:
    if not autoattack_available():
        reference_missing("neither autoattack nor pyautoattack is installed")


@pytest.fixture(autouse=True)
def _one_thread():
    # Two shared cores: torch's default thread pool spins and slows tiny models 100x.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# A model and an attack whose outcomes are known by hand
# --------------------------------------------------------------------------------------------

N = 20


class MarkerModel(nn.Module):
    """Predicts class k when pixel (0, 0) is near (k + 0.5) / 10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, 0, 0] * 10 - 0.5
        k = torch.arange(10, dtype=x.dtype, device=x.device)
        return -(v[:, None] - k) ** 2


class MarkedAttack(Attack):
    """Breaks the examples whose pixel (0, 1 + marker) is set, by moving pixel (0, 0) by
    ``shift`` (one class); records every call's batch size and marker."""

    calls: ClassVar[list[tuple[int, int]]] = []

    def __init__(self, norm: str = "linf", eps: float = 0.2, marker: int = 0,
                 shift: float = 0.1, bn_mode: str = "eval") -> None:
        super().__init__(bn_mode)
        self.norm, self.eps, self.marker, self.shift = norm, eps, marker, shift

    def perturb(self, model, x, y):
        MarkedAttack.calls.append((self.marker, x.shape[0]))
        hit = x[:, 0, 0, 1 + self.marker] > 0.5
        x_adv = x.clone()
        step = torch.where(y < 9, self.shift, -self.shift).to(x.dtype)
        x_adv[:, 0, 0, 0] = torch.where(hit, x[:, 0, 0, 0] + step, x[:, 0, 0, 0])
        return x_adv


@pytest.fixture(scope="module", autouse=True)
def _registered_fake_attack():
    # Registered for this module's tests only (the registry has no public unregister, and a
    # test that builds every registered attack elsewhere should never meet this one).
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ATTACKS._entries, "test-marked", MarkedAttack)
        yield

# Which examples each attack breaks; examples 0 and 1 are misclassified when clean.
BREAKS = {0: [0, 2, 3, 4], 1: [3, 5, 6], 2: [2, 7, 8]}
CLEAN_WRONG = [0, 1]


def marker_data() -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(N) % 10
    x = torch.zeros(N, 1, 8, 8)
    x[:, 0, 0, 0] = (y.float() + 0.5) / 10
    for i in CLEAN_WRONG:
        x[i, 0, 0, 0] = ((y[i] + 3) % 10 + 0.5) / 10
    for marker, rows in BREAKS.items():
        x[rows, 0, 0, 1 + marker] = 1.0
    return x, y


def marker_suite(per_attack: str = "cumulative", extra: list | None = None):
    return suite_from_dict({
        "name": "marked",
        "per_attack": per_attack,
        "threats": {"linf": {"eps": 0.2}, "l2": {"eps": 0.2}},
        "attacks": [
            {"id": "a", "name": "test-marked", "threat": "linf", "params": {"marker": 0}},
            {"id": "b", "name": "test-marked", "threat": "linf", "params": {"marker": 1}},
            {"id": "c", "name": "test-marked", "threat": "l2", "params": {"marker": 2}},
        ] + (extra or []),
    })


def run_marked(tmp_path: Path, name: str = "ev", **kw):
    x, y = marker_data()
    models = kw.pop("models", {"m1": MarkerModel(), "m2": MarkerModel()})
    suite = kw.pop("suite", marker_suite())
    return evaluate(models, suite, x, y, tmp_path / name, batch_size=kw.pop("batch_size", 64),
                    device="cpu", seed=0, checks=False, progress=False, **kw)


def _numbers(summary: dict) -> dict:
    """The numbers of a summary, without timings."""
    models = json.loads(json.dumps(summary["models"]))
    for m in models.values():
        for a in m["attacks"].values():
            a.pop("seconds")
    return models


# --------------------------------------------------------------------------------------------
# Worst-case logic on hand-made matrices
# --------------------------------------------------------------------------------------------


def test_worst_case_on_a_hand_made_matrix():
    R, B, S = ROBUST, BROKEN, NOT_ATTACKED
    clean = np.array([True, True, True, True, False])
    #                     linf-1 linf-2 l2-1
    outcome = np.array([[R, R, R],   # robust against everything
                        [B, S, R],   # broken in linf by the first attack, robust in l2
                        [R, B, R],   # broken in linf by the second
                        [R, R, B],   # broken in l2 only
                        [S, S, S]])  # clean mistake
    threats = ["linf", "linf", "l2"]
    rep = accuracy_report(clean, outcome, ["p", "f", "g"], threats, "cumulative")
    assert rep["clean"] == pytest.approx(0.8)
    assert rep["threats"] == {"linf": pytest.approx(0.4), "l2": pytest.approx(0.6)}
    assert rep["r_avg"] == pytest.approx(0.5)
    assert rep["r_worst"] == pytest.approx(0.2)  # only example 0 survives every attack
    assert rep["attacks"] == {"p": pytest.approx(0.6), "f": pytest.approx(0.4), "g": pytest.approx(0.6)}
    # Not an average over attacks: the per-example worst case.
    assert worst_case(clean, outcome == R).tolist() == [True, False, False, False, False]
    standalone = accuracy_report(clean, outcome, ["p", "f", "g"], threats, "standalone")
    assert standalone["attacks"]["f"] == pytest.approx(0.4)
    assert standalone["r_worst"] == rep["r_worst"]
    # What a new linf attack still has to attack: clean-correct and unbroken in linf.
    assert candidates(clean, outcome[:, :2], threats[:2], "linf").tolist() == [True, False, False, True, False]
    assert candidates(clean, outcome, threats, "l2").tolist() == [True, True, True, False, False]


# --------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------


def test_suite_round_trip(tmp_path):
    suite = load_suite("quick")
    path = tmp_path / "quick.yaml"
    suite.dump(path)
    assert load_suite(path) == suite
    single = suite_from_dict({"name": "one", "threat": {"norm": "linf", "eps": 0.1},
                              "attacks": [{"name": "fgsm"}, {"id": "pgd-5", "name": "pgd",
                                                             "params": {"steps": 5}}]}).validate()
    (tmp_path / "one.yaml").write_text(single.dump())
    again = load_suite(tmp_path / "one.yaml")
    assert again == single and again.attack_ids() == ["fgsm", "pgd-5"]
    assert again.with_eps(0.2).threats["linf"].eps == 0.2


def test_suite_errors_name_the_culprit(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nthreat: {norm: linf, eps: 0.1}\nattacks:\n  - {name: no-such-attack}\n")
    with pytest.raises(ConfigError, match="unknown attack 'no-such-attack'"):
        load_suite(bad)
    bad.write_text("name: bad\nthreat: {norm: linf, eps: 0.1}\nattacks:\n  - {name: pgd, params: {stepz: 3}}\n")
    with pytest.raises(ConfigError, match="no parameter 'stepz'"):
        load_suite(bad)
    bad.write_text("name: bad\nthreat: {norm: linf, eps: 0.1}\nattacks:\n  - {name: pgd, params: {eps: 3}}\n")
    with pytest.raises(ConfigError, match="may not set 'eps'"):
        load_suite(bad)
    bad.write_text("name: bad\nthreat: {norm: linf, eps: 0.1}\nattacks:\n  - {name: pgd}\n  - {name: pgd}\n")
    with pytest.raises(ConfigError, match="two attacks have the id 'pgd'"):
        load_suite(bad)
    with pytest.raises(ConfigError, match="unknown suite 'nope'"):
        load_suite("nope")



def test_suite_file_takes_scientific_notation(tmp_path):
    """An eps or attack parameter written 1e-1 (a string to YAML 1.1) is a number."""
    path = tmp_path / "sci.yaml"
    path.write_text(
        "name: sci\n"
        "threats:\n"
        "  linf: {eps: 3e-2}\n"
        "  l2: {eps: 5E-1}\n"
        "attacks:\n"
        "  - {id: pgd-linf, name: pgd, threat: linf, params: {steps: 5, step_size: 1e-2}}\n"
        "  - {id: pgd-l2, name: pgd, threat: l2}\n"
    )
    suite = load_suite(path)
    assert (suite.threats["linf"].eps, suite.threats["l2"].eps) == (0.03, 0.5)
    attack = suite.build(suite.attacks[0])
    assert (attack.eps, attack.step_size) == (0.03, 0.01)

@pytest.mark.parametrize("name", packaged_suites())
def test_packaged_suites_are_valid(name):
    import yaml
    import importlib.resources

    text = (importlib.resources.files("mutualat") / "suites" / f"{name}.yaml").read_text()
    suite = suite_from_dict(yaml.safe_load(text), name)
    assert suite.name == name  # a file's suite is known by its file's name
    missing = [a.name for a in suite.attacks if a.name not in known_attacks()]
    if missing:
        pytest.skip(f"attacks not registered yet: {', '.join(sorted(set(missing)))}")
    if name == "autoattack":
        _needs_autoattack()
    assert load_suite(name) == suite


# --------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------


def test_only_still_robust_examples_are_attacked(tmp_path):
    MarkedAttack.calls.clear()
    summary = run_marked(tmp_path, models={"m": MarkerModel()}, batch_size=4)
    per_attack: dict[int, list[int]] = {}
    for marker, size in MarkedAttack.calls:
        per_attack.setdefault(marker, []).append(size)
    # a: the 18 clean-correct examples; b (linf): minus the 3 that a broke; c (l2): all 18.
    assert sum(per_attack[0]) == 18 and max(per_attack[0]) <= 4
    assert sum(per_attack[1]) == 15
    assert sum(per_attack[2]) == 18
    m = summary["models"]["m"]
    assert m["clean"] == pytest.approx(18 / 20)
    assert m["threats"] == {"linf": pytest.approx(13 / 20), "l2": pytest.approx(15 / 20)}
    assert m["r_avg"] == pytest.approx(0.7)
    assert m["r_worst"] == pytest.approx(11 / 20)  # broken: 0-8
    assert m["attacks"]["b"]["broken"] == 2 and m["attacks"]["b"]["attacked"] == 15
    saved = np.load(tmp_path / "ev" / "m" / "correct.npz")
    assert saved["attacks"].tolist() == ["a", "b", "c"]
    assert saved["outcome"][3].tolist() == [BROKEN, NOT_ATTACKED, ROBUST]


def test_standalone_mode_attacks_every_clean_correct_example(tmp_path):
    MarkedAttack.calls.clear()
    summary = run_marked(tmp_path, models={"m": MarkerModel()}, suite=marker_suite("standalone"))
    assert sorted(MarkedAttack.calls) == [(0, 18), (1, 18), (2, 18)]
    m = summary["models"]["m"]
    assert m["attacks"]["b"]["accuracy"] == pytest.approx(15 / 20)  # b alone breaks 3, 5, 6
    assert m["threats"]["linf"] == pytest.approx(13 / 20)
    assert m["r_worst"] == pytest.approx(11 / 20)


def test_restarts_only_attack_what_is_left(tmp_path):
    MarkedAttack.calls.clear()
    suite = suite_from_dict({"name": "r", "threat": {"norm": "linf", "eps": 0.2},
                             "attacks": [{"name": "test-marked", "restarts": 3, "params": {"marker": 1}}]})
    summary = run_marked(tmp_path, models={"m": MarkerModel()}, suite=suite)
    assert MarkedAttack.calls == [(1, 18), (1, 15), (1, 15)]
    assert summary["models"]["m"]["r_worst"] == pytest.approx(15 / 20)


CALIBRATED_EPS = {"8x8": 0.3}  # read by "calibrated:8x8" for MarkedAttack (this module)


def test_threat_without_norm_takes_the_calibrated_strength(tmp_path):
    suite = suite_from_dict({"name": "u", "threats": {"blur": {"norm": None, "eps": "calibrated:8x8"}},
                             "attacks": [{"name": "test-marked", "params": {"marker": 1}}]})
    summary = run_marked(tmp_path, models={"m": MarkerModel()}, suite=suite)
    entry = summary["models"]["m"]["attacks"]["test-marked"]
    assert entry["eps"] == 0.3 and entry["broken"] == 3
    with pytest.raises(ConfigError, match="no calibrated eps for '32x32'"):
        suite_from_dict({"name": "u", "threats": {"blur": {"norm": None, "eps": "calibrated:32x32"}},
                         "attacks": [{"name": "test-marked"}]}).validate()


def test_points_outside_the_ball_count_as_failures(tmp_path):
    suite = suite_from_dict({"name": "o", "threat": {"norm": "linf", "eps": 0.05},
                             "attacks": [{"name": "test-marked", "params": {"marker": 1}}]})
    summary = run_marked(tmp_path, models={"m": MarkerModel()}, suite=suite)
    m = summary["models"]["m"]
    assert m["r_worst"] == pytest.approx(18 / 20)  # the shift of 0.1 leaves the 0.05 ball
    assert m["attacks"]["test-marked"]["invalid"] == 3
    assert any("outside its threat model" in w for w in summary["warnings"])


def test_interrupted_evaluation_resumes_to_the_same_summary(tmp_path, monkeypatch):
    reference = run_marked(tmp_path, "reference")
    original = MarkedAttack.perturb

    def interrupted(self, model, x, y):
        if self.marker == 1:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, model, x, y)

    monkeypatch.setattr(MarkedAttack, "perturb", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_marked(tmp_path, "resumed")
    done = tmp_path / "resumed" / "m1" / "attacks"
    assert (done / "a.npz").is_file() and not (done / "b.npz").exists()
    assert not (tmp_path / "resumed" / "summary.json").exists()

    # Resumed on another machine: the summary names both machines that computed attacks.
    here = attack_loop.machine_record(torch.device("cpu"))
    monkeypatch.setattr(attack_loop, "machine_record", lambda device: {**here, "cpu": "Second CPU"})
    monkeypatch.setattr(MarkedAttack, "perturb", original)
    MarkedAttack.calls.clear()
    resumed = run_marked(tmp_path, "resumed")
    # m1's finished attack a is not run again (m2 still needs it, once).
    assert [c for c in MarkedAttack.calls if c[0] == 0] == [(0, 18)]
    assert _numbers(resumed) == _numbers(reference)
    assert resumed["models"]["m1"]["r_worst"] == pytest.approx(11 / 20)
    assert [m["cpu"] for m in resumed["computed_on"]] == [here["cpu"], "Second CPU"]
    # Reused whole elsewhere, it still names the machines that computed it, not the reader.
    monkeypatch.setattr(attack_loop, "machine_record", lambda device: {**here, "cpu": "Third CPU"})
    MarkedAttack.calls.clear()
    again = run_marked(tmp_path, "resumed")
    assert MarkedAttack.calls == [] and _numbers(again) == _numbers(reference)
    assert again["computed_on"] == resumed["computed_on"]


def test_a_saved_column_of_other_examples_is_attacked_again(tmp_path):
    """A later attack's saved column is reused only while the columns before it leave it the
    same examples: with attack a's column recomputed (here: forged to break nothing), b's
    old column, run on the 15 examples a had left, would count a's 3 as never attacked and
    so not robust. It is set aside and b attacks the 18 again."""
    run_marked(tmp_path, models={"m": MarkerModel()})
    attacks = tmp_path / "ev" / "m" / "attacks"
    with np.load(attacks / "a.npz") as f:
        saved, original = dict(f), dict(f)
    saved["outcome"] = np.where(saved["outcome"] == BROKEN, ROBUST, saved["outcome"])
    np.savez(attacks / "a.npz", **saved)
    with np.load(attacks / "b.npz") as f:
        old_b = f["outcome"].copy()
    MarkedAttack.calls.clear()
    summary = run_marked(tmp_path, models={"m": MarkerModel()})
    assert MarkedAttack.calls == [(1, 18)]  # b again, on all 18; a and c reused
    with np.load(attacks / "b.stale.npz") as f:
        assert np.array_equal(f["outcome"], old_b)  # the old column set aside, not lost
    m = summary["models"]["m"]
    assert m["attacks"]["b"]["attacked"] == 18
    assert m["threats"]["linf"] == pytest.approx(15 / 20)  # b alone breaks 3, 5, 6
    MarkedAttack.calls.clear()
    assert run_marked(tmp_path, models={"m": MarkerModel()})["models"]["m"] == m
    assert MarkedAttack.calls == []  # consistent now: reused whole
    np.savez(attacks / "a.npz", **original)  # and back: b's 18 set aside too, beside the first
    assert run_marked(tmp_path, models={"m": MarkerModel()})["models"]["m"]["attacks"]["b"]["attacked"] == 15
    assert (attacks / "b.stale.npz").is_file() and (attacks / "b.stale-2.npz").is_file()


class CoinAttack(MarkedAttack):
    """Breaks each example with probability 0.3 from the global RNG (the evaluator seeds it
    per restart and batch), so restarts matter and the outcome depends on the seeding."""

    def perturb(self, model, x, y):
        MarkedAttack.calls.append((self.marker, x.shape[0]))
        hit = torch.rand(x.shape[0]) < 0.3
        x_adv = x.clone()
        step = torch.where(y < 9, self.shift, -self.shift).to(x.dtype)
        x_adv[:, 0, 0, 0] = torch.where(hit, x[:, 0, 0, 0] + step, x[:, 0, 0, 0])
        return x_adv


def test_an_attack_interrupted_mid_way_resumes_from_its_last_batch(tmp_path, monkeypatch):
    monkeypatch.setitem(ATTACKS._entries, "test-coin", CoinAttack)
    suite = suite_from_dict({"name": "coin", "threats": {"linf": {"eps": 0.2}}, "attacks": [
        {"id": "coin", "name": "test-coin", "threat": "linf", "restarts": 3}]})
    models = {"m": MarkerModel()}
    MarkedAttack.calls.clear()
    reference = run_marked(tmp_path, "reference", models=models, suite=suite, batch_size=4)
    total = len(MarkedAttack.calls)
    assert total > 6, "the test needs several batches and restarts"

    MarkedAttack.calls.clear()
    original = CoinAttack.perturb

    def interrupted(self, model, x, y):
        if len(MarkedAttack.calls) == 6:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, model, x, y)

    monkeypatch.setattr(CoinAttack, "perturb", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_marked(tmp_path, "resumed", models=models, suite=suite, batch_size=4)
    attacks = tmp_path / "resumed" / "m" / "attacks"
    assert (attacks / "coin.partial.npz").is_file() and not (attacks / "coin.npz").exists()

    monkeypatch.setattr(CoinAttack, "perturb", original)
    MarkedAttack.calls.clear()
    resumed = run_marked(tmp_path, "resumed", models=models, suite=suite, batch_size=4)
    assert len(MarkedAttack.calls) == total - 6  # only the batches not done before
    assert _numbers(resumed) == _numbers(reference)
    assert not (attacks / "coin.partial.npz").exists() and (attacks / "coin.npz").is_file()
    with np.load(tmp_path / "reference" / "m" / "correct.npz") as a, \
            np.load(tmp_path / "resumed" / "m" / "correct.npz") as b:
        assert np.array_equal(a["outcome"], b["outcome"])


def test_a_folder_of_another_evaluation_is_refused(tmp_path):
    run_marked(tmp_path, models={"m": MarkerModel()})
    x, y = marker_data()
    # What the folder records as deciding its numbers (what scripts compare a folder with).
    identity = json.loads((tmp_path / "ev" / "manifest.json").read_text())["identity"]
    assert set(identity.pop("models")) == {"m"}
    assert identity == evaluation_identity(marker_suite().to_dict(), 0, 64, x, y)
    assert identity != evaluation_identity(marker_suite().to_dict(), 1, 64, x, y)
    with pytest.raises(EvaluationError, match="seed"):
        evaluate({"m": MarkerModel()}, marker_suite(), x, y, tmp_path / "ev", batch_size=64,
                 device="cpu", seed=1, checks=False, progress=False)


def test_a_folder_in_use_by_another_evaluation_is_refused_and_left_as_it_was(tmp_path):
    """Two processes evaluating into one folder would run the same attacks twice over (the
    second started, by hand or by a second study scheduler, while the first still ran):
    the folder's lock refuses the second before it attacks anything; once the first lets
    go, the folder resumes as usual."""
    import hashlib

    from mutualat.files import hold_lock

    first = run_marked(tmp_path)
    folder = tmp_path / "ev"
    (folder / "summary.json").unlink()  # as a first evaluation still running would have it
    (folder / "m2" / "correct.npz").unlink()

    def files():
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    before = files()
    held = hold_lock(folder, "held by the test")  # the first evaluation's
    try:
        with pytest.raises(ConfigError, match=f"evaluation folder {folder} is in use by another "
                                              "evaluation"):
            run_marked(tmp_path)
        assert files() == before
    finally:
        held.close()
    assert _numbers(run_marked(tmp_path)) == _numbers(first)


def test_ensemble_is_the_mean_of_softmax():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(5, 4)
    ens = Ensemble([a, b])
    expected = (a(x).softmax(1) + b(x).softmax(1)) / 2
    assert torch.allclose(ens(x).softmax(1), expected, atol=1e-6)
    assert torch.allclose(ens(x).exp().sum(1), torch.ones(5), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Gradient-masking checks
# --------------------------------------------------------------------------------------------


def test_masking_checks_on_numbers():
    assert masking.single_step_vs_iterative("m", "fgsm", 0.30, "pgd", 0.45, 0.01)
    assert masking.single_step_vs_iterative("m", "fgsm", 0.55, "pgd", 0.45, 0.01) is None
    assert masking.noise_vs_pgd("m", "noise", 0.46, "pgd", 0.45, 0.01)
    assert masking.noise_vs_pgd("m", "noise", 0.80, "pgd", 0.45, 0.01) is None
    assert masking.large_eps("m", 0.2, 0.5, 0.05)
    assert masking.large_eps("m", 0.0, 0.5, 0.05) is None
    warnings = masking.transfer_vs_whitebox({"a": {"b": 0.30}, "b": {"b": 0.50}}, {"b": 0.50}, 0.01)
    assert len(warnings) == 1 and "transferred from a" in warnings[0]
    # From a suite's results: FGSM (after PGD, cumulative) breaks what PGD could not.
    attacks = [{"id": "pgd", "name": "pgd", "threat": "linf"}, {"id": "fgsm", "name": "fgsm", "threat": "linf"}]
    outcome = np.array([[ROBUST, BROKEN]] * 5 + [[BROKEN, NOT_ATTACKED]] * 5, dtype=np.int8)
    clean = np.ones(10, dtype=bool)
    assert masking.suite_warnings("m", attacks, outcome, clean, "cumulative")
    assert not masking.suite_warnings("m", attacks, outcome[5:], clean[5:], "cumulative")
    # Several iterative attacks before FGSM (Table 5 with APGD): one warning naming them all,
    # counting what every one of them failed on
    three = [{"id": "pgd", "name": "pgd", "threat": "linf"},
             {"id": "apgd-ce", "name": "autoattack", "threat": "linf"},
             {"id": "apgd-t", "name": "autoattack", "threat": "linf"},
             {"id": "fgsm", "name": "fgsm", "threat": "linf"},
             {"id": "pgd-l2", "name": "pgd", "threat": "l2"}]
    rows = np.array([[ROBUST, ROBUST, ROBUST, BROKEN, ROBUST]] * 4
                    + [[ROBUST, ROBUST, ROBUST, ROBUST, ROBUST]] * 6, dtype=np.int8)
    assert masking.suite_warnings("m", three, rows, clean, "cumulative") == [
        "m: single-step fgsm broke 4 examples on which the iterative pgd, apgd-ce, apgd-t "
        "failed; a sign of gradient masking"]
    # Standalone columns compare accuracies: FGSM 50% below PGD 80% warns.
    standalone = np.array([[ROBUST, ROBUST]] * 5 + [[ROBUST, BROKEN]] * 3 + [[BROKEN, BROKEN]] * 2,
                          dtype=np.int8)
    assert masking.suite_warnings("m", attacks, standalone, clean, "standalone")
    assert not masking.suite_warnings("m", attacks, standalone[:, ::-1], clean, "standalone")


# --------------------------------------------------------------------------------------------
# End to end: CLI eval, transfer, report with tiny trained CNNs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two tinycnn models trained for a few dozen steps, saved as run folders."""
    from mutualat import create_model, save_model
    from mutualat.data import load_dataset

    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist-embedded")
    x = torch.from_numpy(data.train.images[:2048]).float() / 255
    y = torch.from_numpy(data.train.labels[:2048])
    root = tmp_path_factory.mktemp("runs")
    paths = {}
    for seed, (run, role) in enumerate([("at", "model"), ("mat", "h1")]):
        torch.manual_seed(seed)
        model = create_model("tinycnn", 10, in_channels=1, input_size=28)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for step in range(32):
            idx = torch.randint(0, len(y), (64,))
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        path = root / run / "models" / f"{role}.safetensors"
        save_model(model, path, {"role": role, "threat": {"norm": "linf", "eps": 0.1},
                                 "method": {"name": run}, "dataset": data.name})
        (root / run / "results.json").write_text(json.dumps(
            {"method": run, "test_images": 64, "attack": "PGD-20 linf eps=0.1",
             "models": {role: {"clean": 0.7, "pgd": 0.3}}}))
        paths[run] = path
    return root, paths


def test_cli_eval_transfer_and_report(tiny_runs, tmp_path):
    from PIL import Image

    from mutualat.cli_eval import main

    root, paths = tiny_runs
    common = ["--data", "fashion-mnist-embedded", "--n", "40", "--device", "cpu", "--no-progress"]
    evals = tmp_path / "eval"
    argv = ["eval", "--model", str(paths["at"]), "--model", str(paths["mat"]), "--suite", "quick",
            "--out", str(evals), "--ensemble", "--check-n", "24"] + common
    assert main(argv) == 0
    summary = json.loads((evals / "summary.json").read_text())
    assert set(summary["models"]) == {"at", "mat-h1", "ensemble"}
    assert summary["n_examples"] == 40 and summary["data"]["dataset"] == "fashion-mnist-embedded"
    assert summary["suite"]["name"] == "quick" and summary["versions"]["torch"] == torch.__version__
    if autoattack_available():  # which APGD computed the numbers, with its version
        assert summary["versions"]["autoattack"].startswith(("autoattack 0.", "pyautoattack 0."))
    else:
        assert "autoattack" not in summary["versions"]
    assert {"device", "cpu"} <= set(summary["hardware"])
    assert set(summary["checks"]["models"]["at"]) >= {"clean", "pgd", "noise", "single_step", "large_eps_pgd"}
    at = summary["models"]["at"]
    assert at["r_worst"] <= min(at["threats"].values()) <= at["clean"]
    assert at["info"]["threat"] == {"norm": "linf", "eps": 0.1}
    assert (evals / "at" / "correct.npz").is_file()

    transfer = tmp_path / "transfer"
    assert main(["transfer", "--source", str(paths["at"]), "--source", str(paths["mat"]),
                 "--target", str(paths["mat"]), "--out", str(transfer), "--steps", "3"] + common) == 0
    result = json.loads((transfer / "transfer.json").read_text())
    assert set(result["accuracy"]) == {"at", "mat-h1"} and list(result["white_box"]) == ["mat-h1"]

    kd = root / "rob-rob-online"
    kd.mkdir(exist_ok=True)
    (kd / "results.json").write_text(json.dumps(
        {"method": "mat", "models": {"h1": {"clean": 0.8, "pgd": 0.5}, "h2": {"clean": 0.79, "pgd": 0.52}}}))
    alpha = tmp_path / "alpha.json"
    alpha.write_text(json.dumps({"0.3": 0.40, "0.6": 0.45, "0.9": 0.41}))
    report_dir = tmp_path / "report"
    assert main(["report", str(root), str(evals), str(transfer), str(alpha), "--out", str(report_dir)]) == 0
    text = (report_dir / "report.md").read_text()
    for row in ("| at |", "| mat-h1 |", "| ensemble |", "| rob-rob-online-h2 |", "R_worst", "R_avg"):
        assert row in text
    assert "at,at,70.0000,30.0000" in (report_dir / "runs.csv").read_text()
    for png in ("alpha_curve.png", "kd_scenarios.png"):
        with Image.open(report_dir / png) as image:
            image.verify()

    # A second evaluation at another eps gives an accuracy-vs-eps plot.
    evals2 = tmp_path / "eval2"
    assert main(["eval", "--model", str(paths["at"]), "--suite", "quick", "--out", str(evals2),
                 "--no-checks"] + common) == 0
    eps_suite = load_suite("quick").with_threat_eps("linf", 0.05).with_threat_eps("l2", 0.5)
    eps_file = tmp_path / "quick-small.yaml"
    eps_suite.dump(eps_file)
    evals3 = tmp_path / "eval3"
    assert main(["eval", "--model", str(paths["at"]), "--suite", str(eps_file), "--out", str(evals3),
                 "--no-checks"] + common) == 0
    report2 = tmp_path / "report2"
    assert main(["report", str(evals2), str(evals3), "--out", str(report2)]) == 0
    with Image.open(report2 / "accuracy_vs_eps_linf.png") as image:
        image.verify()


def test_cli_errors_are_clear(tmp_path, capsys):
    from mutualat.cli_eval import main

    code = main(["eval", "--model", str(tmp_path / "missing.safetensors"), "--suite", "quick",
                 "--data", "fashion-mnist-embedded", "--out", str(tmp_path / "o")])
    assert code == 2 and "no model file" in capsys.readouterr().err
    if not masking_autoattack_available():
        code = main(["eval", "--model", "x.safetensors", "--suite", "autoattack",
                     "--data", "fashion-mnist-embedded", "--out", str(tmp_path / "o")])
        assert code == 2 and "pip install" in capsys.readouterr().err


def masking_autoattack_available() -> bool:
    from mutualat.evaluation.autoattack import autoattack_available

    return autoattack_available()


def test_autoattack_suite_goes_through_the_wrapper(tmp_path, monkeypatch):
    """A stand-in ``autoattack`` module: the suite, wrapper and bookkeeping, not AutoAttack."""
    import sys
    import types

    seen = {}

    class FakeAutoAttack:
        def __init__(self, model, norm, eps, version, seed, verbose, device):
            seen.update(norm=norm, eps=eps, version=version)

        def run_standard_evaluation(self, x, y, bs):
            x_adv = x.clone()
            x_adv[:, 0, 0, 0] += torch.where(y < 9, 0.1, -0.1)
            return x_adv

    monkeypatch.setitem(sys.modules, "autoattack", types.SimpleNamespace(AutoAttack=FakeAutoAttack))
    summary = run_marked(tmp_path, models={"m": MarkerModel()},
                         suite=load_suite("autoattack").with_eps(0.2))
    assert seen == {"norm": "Linf", "eps": 0.2, "version": "standard"}
    assert summary["models"]["m"]["r_worst"] == 0.0


@pytest.mark.parametrize("norm, restarts, largereps", [("linf", 1, False), ("l2", 1, False),
                                                       ("l1", 5, True)])
def test_a_custom_autoattack_component_runs_as_the_standard_version_does(norm, restarts, largereps):
    """APGD listed alone in a suite gets the standard version's settings for its norm: one
    restart, or at l1 five and the larger-radius schedule (AutoAttack's _set_version), and the
    suite's target classes."""
    import types

    from mutualat.evaluation.autoattack import AutoAttackWrapper

    _needs_autoattack()
    attack = AutoAttackWrapper(norm=norm, eps=1.0, version="custom", attacks=["apgd-ce", "apgd-t"],
                               n_target_classes=3)
    runner = types.SimpleNamespace(**{name: types.SimpleNamespace(use_largereps=False) for name in
                                      ("apgd", "apgd_targeted", "fab", "square")})
    attack._standard_settings(runner)
    assert runner.apgd.n_restarts == restarts and runner.apgd_targeted.n_restarts == 1
    assert runner.apgd.use_largereps is largereps and runner.apgd_targeted.use_largereps is largereps
    assert runner.apgd_targeted.n_target_classes == 3


def test_autoattack_suite_runs_when_installed(tiny_runs, tmp_path):
    _needs_autoattack()
    from mutualat.data import load_dataset, subset
    from mutualat.models import load_model

    _, paths = tiny_runs
    data = subset(load_dataset("fashion-mnist-embedded").test, 16, seed=0)
    suite = load_suite("autoattack").with_eps(0.1)
    summary = evaluate({"at": load_model(paths["at"])}, suite, data.images, data.labels,
                       tmp_path / "aa", batch_size=16, device="cpu", checks=False, progress=False)
    m = summary["models"]["at"]
    assert 0 <= m["r_worst"] <= m["clean"]


class _AlwaysClassZero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 10)
        logits[:, 0] = 1.0
        return logits + 0 * x.flatten(1).sum(dim=1, keepdim=True)


class _FaultyInLastBatch(nn.Module):
    """Logits of a linear map, except on the examples whose first pixel is marked: 0.5 marks
    a randomized output, 1.0 a constant one (an exactly zero input gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x.flatten(1))
        mark = x[:, 0, 0, 0].unsqueeze(1)
        noisy = logits + torch.randn_like(logits) * (mark == 0.5)
        return torch.where(mark == 1.0, torch.ones_like(logits), noisy)


@pytest.mark.filterwarnings("ignore:pgd. the input gradient is exactly zero")
def test_output_checks_look_at_every_example_not_only_the_first_batch():
    """A randomized output or a zero gradient in the last batch of the check sample is still
    reported, with the count over the whole sample."""
    torch.manual_seed(0)
    images = torch.rand(40, 3, 8, 8) * 0.4  # no pixel reaches a mark by chance
    labels = torch.arange(10).repeat(4)
    images[32:35, 0, 0, 0] = 0.5  # randomized
    images[35:40, 0, 0, 0] = 1.0  # constant
    result = masking.run_checks({"m": _FaultyInLastBatch()}, images, labels, None, None, 10,
                                torch.device("cpu"), masking.CheckConfig(n=40, sample="first"))
    warnings = " ".join(result["warnings"])
    assert "m: two forward passes on the same images differ" in warnings
    assert "m: 5 of 40 inputs have an exactly zero gradient" in warnings
    assert "probabilities" not in warnings
    clean = masking.run_checks({"m": _FaultyInLastBatch()}, images[:30], labels[:30], None, None,
                               10, torch.device("cpu"), masking.CheckConfig(n=30, sample="first"))
    assert not any("differ" in w or "zero gradient" in w for w in clean["warnings"])


@pytest.mark.filterwarnings("ignore:pgd. the input gradient is exactly zero")  # a constant model
def test_masking_checks_sample_every_class_of_a_class_ordered_set():
    """An image folder is read in class order: the checks' examples are a class-balanced
    sample of it, not its first n (which would all be class 0 here); "first" keeps the old
    choice, and anything else is refused by name."""
    labels = torch.arange(10).repeat_interleave(40)  # 400 examples, sorted by class
    images = torch.rand(400, 3, 8, 8)
    model = {"m": _AlwaysClassZero()}
    balanced = masking.run_checks(model, images, labels, None, None, 50, torch.device("cpu"),
                                  masking.CheckConfig(n=40))
    first = masking.run_checks(model, images, labels, None, None, 50, torch.device("cpu"),
                               masking.CheckConfig(n=40, sample="first"))
    assert balanced["models"]["m"]["clean"] == pytest.approx(0.1)  # 4 of each class
    assert first["models"]["m"]["clean"] == 1.0  # the 40 of class 0
    with pytest.raises(ConfigError, match="sample"):
        masking.run_checks(model, images, labels, None, None, 50, torch.device("cpu"),
                           masking.CheckConfig(n=50, sample="last"))


def test_a_types_pgd_alone_column_in_either_mode():
    """Interleaved threat types, hand-made outcomes: a cumulative suite's first column of a
    type equals that attack alone (a later one counts the attacks before it), so a type's PGD
    alone is its first attack there if that is a PGD; a standalone suite has every attack
    alone, and its first PGD is taken."""
    threats = ["linf", "l2", "linf", "l2"]
    clean = np.array([True, True, True, True, False])
    robust = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
    cumulative, alone = cumulative_accuracy(clean, robust, threats), standalone_accuracy(clean, robust)
    assert cumulative[:2] == alone[:2] == [0.6, 0.6]  # each type's first column: that attack alone
    assert cumulative[2:] == [0.4, 0.2] and alone[2:] == [0.6, 0.4]  # later ones: not alone
    attacks = [("fgsm", "fgsm", "linf"), ("pgd-l2", "pgd", "l2"), ("pgd-linf", "pgd", "linf"),
               ("ddn", "ddn", "l2")]
    assert pgd_alone_columns(attacks, "cumulative") == {"l2": "pgd-l2"}  # l-inf begins with FGSM
    assert pgd_alone_columns(attacks, "standalone") == {"linf": "pgd-linf", "l2": "pgd-l2"}

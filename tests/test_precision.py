"""bf16 autocast and channels_last: the CPU trial, fp32 perturbations, fp32 evaluation,
exact resume of a bf16 run, and the on/off spellings YAML turns into booleans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mutualat.attacks import create_attack
from mutualat.config import load_config
from mutualat.errors import ConfigError
from mutualat.evaluation import evaluate, load_suite
from mutualat.evaluation.suite import suite_from_dict
from mutualat.models import create_model
from mutualat.train import Trainer, precision
from mutualat.train.checkpoint import load_checkpoint
from mutualat.train.precision import Precision, candidates, choose_precision, ieee_fp32, pick

from conftest import tiny_overrides, train_first_epoch_only


def _speed_record(run: Path) -> dict:
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "speed":
            return record
    raise AssertionError("no speed record")


def _trial_overrides(epochs: int = 1) -> list[str]:
    """The tiny run with the choice left to the trial (tiny_overrides is deterministic)."""
    return [o for o in tiny_overrides(epochs) if not o.startswith("deterministic")] + [
        "amp=auto", "channels_last=auto"]


def _fake_timer(slow: set[Precision]):
    """A trial timer under which the candidates in ``slow`` take 3 s a step, the others 1 s."""

    def time_step(step, candidate):
        step()
        return 3.0 if candidate in slow else 1.0

    return time_step


def test_pgd_under_bf16_autocast_keeps_the_perturbation_fp32_and_in_the_ball(monkeypatch):
    torch.manual_seed(0)
    model = create_model("tinycnn", num_classes=10, in_channels=1, input_size=28)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    seen = []
    from mutualat.attacks import pgd

    original = pgd.input_gradient

    def recording(model, objective, x, y, delta, clean):
        grad, logits, losses = original(model, objective, x, y, delta, clean)
        seen.append((delta.dtype, grad.dtype, losses.dtype))
        return grad, logits, losses

    monkeypatch.setattr(pgd, "input_gradient", recording)
    for norm, eps in (("linf", 0.1), ("l2", 1.0), ("l1", 5.0)):
        attack = create_attack("pgd", norm=norm, eps=eps, steps=3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x_adv = attack(model, x, y)
        assert x_adv.dtype == torch.float32
        assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0
        size = {"linf": lambda d: d.abs().amax(1), "l2": lambda d: d.norm(dim=1),
                "l1": lambda d: d.abs().sum(1)}[norm]((x_adv - x).flatten(1))
        assert float(size.max()) <= eps * (1 + 1e-5) + 1e-6, norm
    assert seen and all(d == (torch.float32,) * 3 for d in seen)


def test_candidates_and_pick():
    assert candidates("off", "off") == [Precision(False, False)]
    assert candidates("bf16", "auto") == [Precision(True, False), Precision(True, True)]
    assert len(candidates("auto", "auto")) == 4 and candidates("auto", "auto")[0] == Precision()
    fp32, cl = Precision(), Precision(channels_last=True)
    assert pick({fp32: 1.0, cl: 0.99}) == fp32  # within the margin: the reference
    assert pick({fp32: 1.0, cl: 0.5}) == cl


def test_trial_drops_a_slow_candidate_after_its_warmup(monkeypatch):
    calls: dict[Precision, int] = {}

    def time_step(step, candidate):
        calls[candidate] = calls.get(candidate, 0) + 1
        return 10.0 if candidate.amp else 1.0

    monkeypatch.setattr(precision, "time_step", time_step)
    steps = {c: (lambda: None) for c in candidates("auto", "off")}
    seconds = precision.trial(steps, torch.device("cpu"))
    assert calls == {Precision(False, False): 1 + precision._REPEATS, Precision(True, False): 1}
    assert seconds[Precision(True, False)] == 10.0


@pytest.mark.parametrize("slow_bf16", [True, False])
def test_auto_follows_the_trial_on_the_cpu(tmp_path, monkeypatch, slow_bf16):
    bf16 = {Precision(True, False), Precision(True, True)}
    fp32 = {Precision(False, False), Precision(False, True)}
    monkeypatch.setattr(precision, "cpu_bf16", lambda: True)  # a processor with bf16 units
    monkeypatch.setattr(precision, "time_step", _fake_timer(bf16 if slow_bf16 else fp32))
    out = tmp_path / "run"
    Trainer(load_config(None, _trial_overrides()), out).fit()
    record = _speed_record(out)
    assert record["precision_how"] == "trial"
    assert record["amp"] == ("off" if slow_bf16 else "bf16")
    assert set(record["precision_trial_s"]) == {"fp32", "fp32+channels_last", "bf16",
                                                "bf16+channels_last"}
    saved = load_checkpoint(out / "checkpoint.pt")["precision"]
    assert saved == {"amp": not slow_bf16, "channels_last": False}


def test_cpu_bf16_reads_the_processor_flags(tmp_path):
    intel = tmp_path / "intel"
    intel.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    amd = tmp_path / "amd"
    amd.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert precision.cpu_bf16(str(intel)) is True
    assert precision.cpu_bf16(str(amd)) is False
    assert precision.cpu_bf16(str(arm)) is None  # cannot say: the trial decides
    assert precision.cpu_bf16(str(tmp_path / "missing")) is None


def test_bf16_is_not_tried_on_a_processor_without_bf16_instructions(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: False)
    timed = []

    def time_step(step, candidate):
        assert not candidate.amp, "bf16 was timed"
        timed.append(candidate)
        return 1.0 if candidate.channels_last else 2.0

    monkeypatch.setattr(precision, "time_step", time_step)
    cpu = torch.device("cpu")
    choice = choose_precision("auto", "auto", cpu, lambda c: (lambda: None))
    assert choice.how == "trial" and choice.chosen == Precision(False, True)
    assert set(choice.seconds) == {"fp32", "fp32+channels_last"} and timed
    assert "bf16 not tried" in choice.record()["precision_note"]
    fixed = choose_precision("auto", "off", cpu, lambda c: (lambda: None))
    assert fixed.chosen == Precision(False, False) and fixed.how == "no bf16 instructions"
    # Forced bf16 is still bf16, with a warning that it is emulated here; an unknown
    # processor still tries it.
    with pytest.warns(UserWarning, match="emulates bf16 there, several times slower"):
        forced = choose_precision("bf16", "off", cpu, lambda c: (lambda: None))
    assert forced.chosen == Precision(True, False) and forced.how == "config"
    assert "(amp) on a processor with none of avx512_bf16, amx_bf16" in forced.record()["precision_note"]
    with pytest.warns(UserWarning, match=r"\(its checkpoint\).*emulates bf16"):
        resumed = choose_precision("off", "off", cpu, lambda c: (lambda: None),
                                   saved={"amp": True, "channels_last": False})
    assert resumed.how == "checkpoint" and resumed.chosen == Precision(True, False)
    # bf16 forced with the layout left to the trial or to the device rule warns too.
    monkeypatch.setattr(precision, "time_step", lambda step, c: 1.0)
    for deterministic in (False, True):
        with pytest.warns(UserWarning, match=r"\(amp\).*emulates bf16"):
            layout = choose_precision("bf16", "auto", cpu, lambda c: (lambda: None),
                                      deterministic=deterministic)
        assert layout.chosen.amp and layout.how == ("device rule" if deterministic else "trial")
    monkeypatch.setattr(precision, "cpu_bf16", lambda: None)
    monkeypatch.setattr(precision, "time_step", lambda step, c: 1.0)
    assert len(choose_precision("auto", "auto", cpu, lambda c: (lambda: None)).seconds) == 4


def test_no_trial_when_forced_deterministic_or_off_cpu(monkeypatch):
    def fail(*_):
        raise AssertionError("no trial expected")

    monkeypatch.setattr(precision, "time_step", fail)
    cpu = torch.device("cpu")
    assert choose_precision("off", "on", cpu, fail).chosen == Precision(False, True)
    assert choose_precision("auto", "auto", cpu, fail, deterministic=True).how == "device rule"
    assert choose_precision("auto", "auto", cpu, fail, deterministic=True).chosen == Precision()
    cuda = choose_precision("auto", "auto", torch.device("cuda"), fail)
    assert cuda.chosen == Precision(True, True) and cuda.how == "device rule"
    saved = choose_precision("auto", "auto", cpu, fail, saved={"amp": True, "channels_last": False})
    assert saved.how == "checkpoint" and saved.chosen == Precision(True, False)


def test_validation_and_test_run_in_fp32_when_training_used_bf16(tmp_path, monkeypatch):
    from mutualat.train import trainer as trainer_module

    modes = []
    original = trainer_module.robust_accuracies

    def recording(model, images, labels, attacks, **kwargs):
        modes.append(torch.is_autocast_enabled("cpu"))
        return original(model, images, labels, attacks, **kwargs)

    monkeypatch.setattr(trainer_module, "robust_accuracies", recording)
    trainer = Trainer(load_config(None, tiny_overrides(1) + ["amp=bf16"]), tmp_path / "run")
    trainer.fit()
    assert trainer.amp and modes == [False, False]  # one validation, one final test


def test_eval_is_fp32_unless_bf16_is_asked_for(tmp_path):
    torch.manual_seed(0)
    model = create_model("tinycnn", num_classes=10, in_channels=1, input_size=28).eval()
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    suite = load_suite("quick")
    plain = evaluate({"m": model}, suite, x, y, tmp_path / "fp32", checks=False, progress=False)
    assert plain["precision"] == "fp32"
    assert not any("bf16" in w for w in plain["warnings"])
    low = evaluate({"m": model}, suite, x, y, tmp_path / "bf16", checks=False, progress=False,
                   amp="bf16")
    assert low["precision"] == "bf16 autocast"
    assert any("bf16" in w for w in low["warnings"])
    with pytest.raises(ConfigError, match="amp"):
        evaluate({"m": model}, suite, x, y, tmp_path / "bad", checks=False, amp="fp16")


def test_a_bf16_run_resumes_exactly(tmp_path):
    overrides = tiny_overrides(2) + ["amp=bf16", "channels_last=on"]
    full = tmp_path / "full"
    Trainer(load_config(None, overrides), full).fit()
    cut = tmp_path / "cut"
    train_first_epoch_only(load_config(None, overrides), cut)
    Trainer(None, cut, resume=True).fit()
    for a, b in zip(load_checkpoint(full / "checkpoint.pt")["models"],
                    load_checkpoint(cut / "checkpoint.pt")["models"], strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_a_resumed_trial_run_keeps_its_choice(tmp_path, monkeypatch):
    bf16 = {Precision(True, False), Precision(True, True)}
    fp32 = {Precision(False, False), Precision(False, True)}
    monkeypatch.setattr(precision, "cpu_bf16", lambda: True)
    monkeypatch.setattr(precision, "time_step", _fake_timer(fp32))  # bf16 wins
    out = tmp_path / "run"
    train_first_epoch_only(load_config(None, _trial_overrides(2)), out)
    monkeypatch.setattr(precision, "time_step", _fake_timer(bf16))  # now fp32 would win
    trainer = Trainer(None, out, resume=True)
    assert trainer.amp and trainer.precision.how == "checkpoint"


@pytest.mark.parametrize("assignment, key, value", [
    ("amp=off", "amp", "off"), ("channels_last=on", "channels_last", "on"),
    ("channels_last=off", "channels_last", "off"), ("amp=bf16", "amp", "bf16"),
])
def test_on_off_spellings_from_set_and_from_a_file(tmp_path, assignment, key, value):
    assert getattr(load_config(None, [assignment]), key) == value
    path = tmp_path / "run.yaml"
    path.write_text(f"{key}: {assignment.split('=')[1]}\n")  # YAML 1.1: on/off are booleans
    assert getattr(load_config(path), key) == value


def test_amp_on_is_refused_with_the_allowed_values():
    with pytest.raises(ConfigError, match="amp must be auto, bf16 or off"):
        load_config(None, ["amp=on"])


def test_ieee_fp32_turns_tf32_off_on_cuda_only_and_restores_it() -> None:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
        with ieee_fp32(torch.device("cpu")):
            assert cudnn.allow_tf32 and matmul.allow_tf32  # the CPU has no TF32: untouched
        with pytest.raises(RuntimeError, match="inside"):
            with ieee_fp32(torch.device("cuda")):  # flags only: no GPU needed
                assert not cudnn.allow_tf32 and not matmul.allow_tf32
                raise RuntimeError("inside")
        assert cudnn.allow_tf32 and matmul.allow_tf32  # back, also after an error
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_an_fp32_evaluation_on_cuda_runs_without_tf32(tmp_path) -> None:
    seen = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 10, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.backends.cudnn.allow_tf32)
            return self.conv(x).flatten(1)

    suite = suite_from_dict({"name": "p", "threats": {"linf": {"eps": 0.1}},
                             "attacks": [{"id": "fgsm", "name": "fgsm"}]})
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    evaluate({"m": Probe()}, suite, x, y, tmp_path, device="cuda", checks=False, progress=False)
    assert seen and not any(seen)

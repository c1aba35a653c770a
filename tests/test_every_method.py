"""Every registered method trains under the one trainer: one parametrized test over the registry."""

from __future__ import annotations

import json
import math

import pytest

import mutualat
from mutualat.config import load_config
from mutualat.data import load_dataset
from mutualat.methods import METHODS
from mutualat.train import Trainer

from conftest import tiny_overrides

MP_THREATS = ("[{norm: linf, eps: 0.1, steps: 1}, {norm: l2, eps: 1.0, steps: 1}, "
              "{norm: l1, eps: 8.0, steps: 1}]")

# What each method needs beyond the common tiny run: its cohort and parameters.
EXTRA: dict[str, list[str]] = {
    "at": [],
    "trades": [],
    "mart": [],
    "mat": ["models.1.name=tinycnn"],
    "act": ["models.1.name=tinycnn"],
    "ard": ["models.1.name=tinycnn", "models.0.frozen=true"],  # + models.0.init (below)
    "mat-mp": ["models.1.name=tinycnn", "models.2.name=tinycnn", "models.3.name=tinycnn",
               f"method.params.threats={MP_THREATS}", "method.params.msd_steps=1"],
    "at-avg": [f"method.params.threats={MP_THREATS}"],
    "at-max": [f"method.params.threats={MP_THREATS}"],
    "at-msd": [f"method.params.threats={MP_THREATS}", "method.params.msd_steps=1"],
}


def test_every_registered_method_has_a_smoke_config():
    assert set(METHODS.names()) == set(EXTRA), "add the new method to EXTRA"


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_every_method_trains_and_saves(name, tmp_path):
    overrides = tiny_overrides(1) + ["data.train_subset=128", "data.val_subset=32",
                                     "data.test_subset=32", "attack.steps=1",
                                     f"method.name={name}", *EXTRA[name]]
    if name == "ard":
        ds = load_dataset("fashion-mnist-embedded")
        teacher = mutualat.create_model("tinycnn", 10, in_channels=1, input_size=28,
                                        mean=ds.mean, std=ds.std)
        mutualat.save_model(teacher, tmp_path / "teacher.safetensors")
        overrides.append(f"models.0.init={tmp_path / 'teacher.safetensors'}")
    out = tmp_path / "run"
    Trainer(load_config(None, overrides), out).fit()
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == name
    for role, acc in results["models"].items():
        assert 0.0 <= acc["pgd"] <= acc["clean"] <= 1.0, role
        model = mutualat.load_model(out / "models" / f"{role}.safetensors")
        assert model.spec["name"] == "tinycnn"
    losses = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(l)["event"] == "step"]
    assert losses and all(math.isfinite(v) for v in losses)

"""The committed commands that regenerate docs/RESULTS.md: run end to end on tiny settings."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import torch

from mutualat.compare import provenance
from mutualat.config import load_config
from mutualat.device import cpu_isa, hardware_info
from mutualat.report import documents

from conftest import REPO, script_module

# The scripts' own helpers (scripts/common.py).
_scripts = script_module("common")
command_line, mean_std_percent = _scripts.command_line, _scripts.mean_std_percent
machines_text = _scripts.machines_text

TINY_SUITE = """\
name: tiny-mp
description: one 5-step PGD per threat
per_attack: cumulative
threats:
  linf: {eps: 0.1}
  l2: {eps: 1.0}
  l1: {eps: 10.0}
attacks:
  - {id: pgd-linf, name: pgd, threat: linf, params: {steps: 5, step_size: 0.03}}
  - {id: pgd-l2, name: pgd, threat: l2, params: {steps: 5, step_size: 0.3}}
  - {id: pgd-l1, name: pgd, threat: l1, params: {steps: 5, step_size: 0.2}}
"""


def test_command_line_names_exactly_what_differs_from_the_defaults():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="/abs/data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--checks", action="store_true")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--write", default="docs/RESULTS.md")
    args = parser.parse_args(["--data-dir", "../d", "--epochs", "5", "--checks",
                              "--set", "a=1", "--set", "b=x y", "--write", "/tmp/x.md"])
    assert command_line("s.py", parser, args, always=("seeds",)) == (
        ".venv/bin/python s.py --data-dir ../d --seeds 0 1 2 --checks --set a=1 --set 'b=x y'")


def test_machines_are_named_from_the_records_once_each_and_unrecorded_ones_said_so():
    """The result scripts state their machines in the words of ``mutualat compare``'s report."""
    a = {"cpu": "B CPU", "cpu_count": 2, "threads": 1, "torch": "2.13"}
    gpu = {"cpu": "A CPU", "cpu_count": 16, "gpu": "NVIDIA H200", "threads": 4, "torch": "2.13"}
    on_its_cpu = {**gpu, "gpu": None}  # a task on the GPU machine's CPU: the same machine
    assert machines_text([a, dict(a), gpu, on_its_cpu]) == (
        "A CPU (16 cores, NVIDIA H200); B CPU (2 cores), 1/4 torch threads per job, torch 2.13")
    assert machines_text([{"torch": "2.12"}, a]) == (
        "B CPU (2 cores); a machine its records do not name, 1 torch thread per job, "
        "torch 2.12 and 2.13")
    assert machines_text([]) == "machines not recorded"
    # The same CPU model with another share of cores is another machine, fewer cores first;
    # the GPUs used on one machine are named once each, in order.
    wide, h100 = {**a, "cpu_count": 16}, {**gpu, "gpu": "NVIDIA H100"}
    assert machines_text([wide, h100, gpu, a, gpu]) == (
        "A CPU (16 cores, NVIDIA H100, NVIDIA H200); B CPU (2 cores); B CPU (16 cores), "
        "1/4 torch threads per job, torch 2.13")
    # A record that names the CPU's fastest instruction set: the same model with bf16 units
    # and without (emulated bf16, an order of magnitude slower) is two machines.
    zen3, zen4 = {**a, "isa": "AVX2"}, {**a, "isa": "AVX-512 BF16"}
    assert machines_text([zen4, zen3, a]) == (
        "B CPU (2 cores); B CPU (AVX-512 BF16, 2 cores); B CPU (AVX2, 2 cores), "
        "1 torch thread per job, torch 2.13")
    assert cpu_isa({"fpu", "avx2", "avx512f", "avx512_bf16"}) == "AVX-512 BF16"
    assert cpu_isa({"fpu", "avx2"}) == "AVX2" and cpu_isa({"fpu"}) is None
    # The report of a study says the same of the same records.
    gathered = documents.gather_machines([a, gpu, on_its_cpu])
    assert provenance.machines_text({**gathered, "training_machines_recorded": True}) == (
        "A CPU (16 cores, NVIDIA H200); B CPU (2 cores), 1/4 torch threads per task, torch 2.13")


def test_results_mp_writes_a_table_it_can_regenerate_from_the_same_runs(tmp_path):
    suite = tmp_path / "tiny-mp.yaml"
    suite.write_text(TINY_SUITE)
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\nwritten by hand, kept\n")
    cmd = [sys.executable, str(REPO / "scripts" / "results_mp.py"), "--dataset",
           "fashion-mnist-embedded", "--out", str(tmp_path / "runs"), "--methods", "at-avg",
           "mat-mp-avg", "--alphas", "0.5", "--seeds", "0", "1", "--epochs", "1", "--train-subset", "96",
           "--test-n", "40", "--suite", str(suite), "--jobs", "1",
           "--set", "data.val_subset=64", "--set", "data.test_subset=64",
           "--set", "data.batch_size=48", "--write", str(doc)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    text = doc.read_text()
    assert text.startswith("# Results\n\nwritten by hand, kept\n")
    assert "--set data.val_subset=64" in text and "--seeds 0 1" in text
    # The setup it states is the one the runs had, overrides included.
    assert "on fashion-mnist-embedded:" in text and "96 training images" in text
    assert "1 epochs, batch 48" in text and "on 40 class-balanced test images" in text

    data = json.loads((tmp_path / "runs" / "results-mp.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in data["runs"]) == [
        ("at-avg", 0), ("at-avg", 1), ("mat-mp-avg-alpha0.5", 0), ("mat-mp-avg-alpha0.5", 1)]
    main_table, pgd_table = text.split("Each type's PGD alone", 1)
    rows = {line.split(" | ")[0].strip("| "): line for line in main_table.splitlines()
            if line.startswith("| AT-AVG") or line.startswith("| MAT-AVG")}
    assert set(rows) == {"AT-AVG", "MAT-AVG (generalist, α = 0.5)"}
    assert load_config(tmp_path / "runs" / "mat-mp-avg-alpha0.5-seed1" / "config.yaml"
                       ).method.params["alpha"] == 0.5
    for variant, name in (("at-avg", "AT-AVG"), ("mat-mp-avg-alpha0.5", "MAT-AVG (generalist, α = 0.5)")):
        runs = [r for r in data["runs"] if r["variant"] == variant]
        assert all(r["n"] == 40 for r in runs)
        for r in runs:  # R_worst can never exceed the worst single type
            assert r["r_worst"] <= min(r["threats"].values()) + 1e-9
        cells = rows[name].strip("|").split(" | ")
        assert cells[1].strip() == mean_std_percent([r["clean"] for r in runs])
        assert cells[6].strip() == mean_std_percent([r["r_worst"] for r in runs])
        assert cells[7].strip() == "2"
        # PGD alone can only be weaker than all of a type's attacks (here PGD is all of them).
        for r in runs:
            assert r["pgd_alone"] == r["threats"]
    pgd_rows = [line for line in pgd_table.splitlines() if line.startswith("| MAT-AVG (α = 0.5) |")]
    assert len(pgd_rows) == 1 and len(pgd_rows[0].strip("|").split(" | ")) == 7
    assert (tmp_path / "runs" / "mat-mp-avg-alpha0.5-seed0" / "models" / "generalist.safetensors").is_file()

    # A second invocation reuses every run and evaluation and writes the same document.
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reusing the finished run") == 4
    assert doc.read_text() == text

    # The machines it names are those the runs and evaluations recorded, not the one that
    # renders: a run whose record says it trained elsewhere, and an evaluation whose attacks
    # say they ran on a third machine under another torch, are named so.
    here = hardware_info(torch.device("cpu"))
    isa = f"{here['isa']}, " if "isa" in here else ""  # the records name it, as this one does
    assert (f"on {here['cpu']} ({isa}{here['cpu_count']} cores), 1 torch thread per job, "
            f"torch {torch.__version__})") in text
    log = tmp_path / "runs" / "at-avg-seed1" / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    for r in records:
        if r["event"] == "machine":
            r.update(cpu="Elsewhere CPU", cpu_count=64, isa="AVX-512")
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    for path in (tmp_path / "runs" / "mat-mp-avg-alpha0.5-seed0").glob("eval-*/*/attacks/*.npz"):
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["machine"] = json.dumps({**json.loads(str(arrays["machine"])), "cpu": "Third CPU",
                                        "cpu_count": 8, "torch": "9.9", "isa": None})
        np.savez(path, **arrays)
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    named = sorted([f"{here['cpu']} ({isa}{here['cpu_count']} cores)",
                    "Elsewhere CPU (AVX-512, 64 cores)", "Third CPU (8 cores)"])
    torches = " and ".join(sorted([torch.__version__, "9.9"]))
    assert f"on {'; '.join(named)}, 1 torch thread per job, torch {torches})" in doc.read_text()

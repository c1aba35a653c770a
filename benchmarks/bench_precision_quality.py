"""Does computing the training step in bf16 or channels_last change what training learns, or
what an attack finds? A quality check beside bench_precision.py's speed check.

    python benchmarks/bench_precision_quality.py [--out /tmp/precision-quality] [--seeds 0 1]
                                                 [--epochs 3] [--settings off auto bf16]

1. AT (L_C, tinycnn, PGD-10 at l-inf 0.1) on the embedded Fashion-MNIST subset, once per
   seed in each setting: ``amp=off channels_last=off`` (fp32, the reference), ``auto`` (the
   trainer's trial decides; the run's log says what it kept) and ``amp=bf16`` (forced).
   Clean and PGD-20 accuracy on the 2,000 test images; a setting is "within the seed spread"
   when its mean lies inside the fp32 runs' range widened by their spread.
2. PGD-20 (no random start, so deterministic) on the fp32 seed-0 model, run once in fp32 and
   once with the model under bf16 autocast: the examples each breaks, and how many differ.
   The tolerance stated in docs/PERFORMANCE.md: at most 1% of the examples.
Runs are kept in --out and reused (delete the folder to rerun).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from mutualat import load_model
from mutualat.attacks import create_attack
from mutualat.config import load_config
from mutualat.data import load_dataset
from mutualat.experiments import run_or_reuse
from mutualat.train.precision import AutocastModel

SETTINGS = {"off": ["amp=off", "channels_last=off"], "auto": ["amp=auto", "channels_last=auto"],
            "bf16": ["amp=bf16", "channels_last=off"]}
TOLERANCE = 0.01


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/precision-quality"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    return parser.parse_args(argv)


def train(args: argparse.Namespace, setting: str, seed: int) -> dict:
    overrides = [
        "data.name=fashion-mnist-embedded", "models.0.name=tinycnn", "method.name=at",
        "method.params.loss=lc", "attack.eps=0.1", "attack.steps=10", f"optim.epochs={args.epochs}",
        "eval.test_pgd_steps=20", f"seed={seed}", "device=cpu", "progress=false",
    ] + SETTINGS[setting]
    run = args.out / f"{setting}-seed{seed}"
    results = run_or_reuse(load_config(None, overrides), run)["models"]["model"]
    speed = next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["event"] == "speed")
    return {"clean": results["clean"], "pgd": results["pgd"],
            "kept": f"amp={speed['amp']} channels_last={speed['channels_last']}"}


def broken(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    attack = create_attack("pgd", norm="linf", eps=0.1, steps=20, random_start=False)
    out = []
    for i in range(0, len(y), 500):
        xb, yb = x[i:i + 500], y[i:i + 500]
        with torch.no_grad():
            out.append(model(attack(model, xb, yb)).argmax(1) != yb)
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    torch.set_num_threads(1)
    table = {s: [train(args, s, seed) for seed in args.seeds] for s in args.settings}
    reference = table.get("off")
    print("| setting | kept | clean % (per seed) | PGD-20 % (per seed) | mean clean | mean PGD |")
    print("|---|---|---|---|---|---|")
    for setting, runs in table.items():
        clean = [100 * r["clean"] for r in runs]
        pgd = [100 * r["pgd"] for r in runs]
        print(f"| {setting} | {runs[0]['kept']} | {', '.join(f'{c:.2f}' for c in clean)} | "
              f"{', '.join(f'{p:.2f}' for p in pgd)} | {statistics.mean(clean):.2f} | "
              f"{statistics.mean(pgd):.2f} |")
    if reference and len(args.seeds) > 1:
        for metric in ("clean", "pgd"):
            values = [100 * r[metric] for r in reference]
            spread = max(values) - min(values)
            low, high = min(values) - spread, max(values) + spread
            for setting, runs in table.items():
                mean = statistics.mean(100 * r[metric] for r in runs)
                verdict = "within" if low <= mean <= high else "OUTSIDE"
                print(f"{metric}: {setting} mean {mean:.2f} {verdict} the fp32 seed range "
                      f"widened by its spread [{low:.2f}, {high:.2f}]")
    model = load_model(args.out / f"off-seed{args.seeds[0]}" / "models" / "model.safetensors")
    test = load_dataset("fashion-mnist-embedded").test
    x = torch.from_numpy(test.images).float() / 255
    y = torch.from_numpy(test.labels).long()
    fp32, bf16 = broken(model, x, y), broken(AutocastModel(model), x, y)
    differ = (fp32 != bf16).float().mean().item()
    print(f"PGD-20 on the fp32 seed-{args.seeds[0]} model, {len(y)} test images: fp32 breaks "
          f"{fp32.float().mean():.2%}, bf16 autocast {bf16.float().mean():.2%}; the outcome "
          f"differs on {differ:.2%} of the examples (tolerance {TOLERANCE:.0%}): "
          + ("within" if differ <= TOLERANCE else "OUTSIDE"))


if __name__ == "__main__":
    main()

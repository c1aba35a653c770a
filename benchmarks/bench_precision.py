"""bf16 autocast and channels_last on this machine: training-step speed of AT and of a MAT
pair in the four settings, the FLOP/s they achieve against fp32 and bf16 matrix products,
and what the trainer's trial (``amp: auto``, ``channels_last: auto``) picks for each model.

    python benchmarks/bench_precision.py [--device cpu] [--models tinycnn smallcnn madrycnn cnn32]
                                         [--batch 128] [--steps 10] [--repeats 3] [--matmul 2048]

A step is what the trainer does per batch (mutualat.train.trainer): the method's loss, its
PGD-K attacks included, under the setting's autocast and memory format, then backward and
an SGD step. AT is the MAT paper's AT (L_C, random start); MAT is a pair at alpha = 0.6;
AT-MAX (Maini et al., cross-entropy) and MAT-MP (a generalist trained on the worst type and
one specialist per type, alpha 0.3, L_C) are the multiple-perturbation steps of Table 5,
each training attack PGD-K at l-inf, l2 and l1 (Fashion-MNIST's radii 0.1, 1, 10 for a
one-channel model, CIFAR-10's 8/255, 0.5, 12 otherwise).
The four settings of one model and method are timed side by side (interleaved, median of
--repeats after a warm-up); each row's ratio is its speed over fp32's (the speed-up). The
FLOP rows count a step's floating-point operations once (FlopCounterMode: convolutions and
matrix products, forward and backward) and divide by its time; the references are an
``n x n`` matrix product in fp32 and in bf16, timed in the same process. The trial rows run
:func:`mutualat.train.precision.trial` on the same steps and say what ``auto`` would keep.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_mat import trainer_step
from common import Row, build, environment, matmul_rate, print_table, random_batch, side_by_side
from mutualat.attacks.threat import Threat
from mutualat.config import AttackConfig
from mutualat.methods.at import AT, ATParams
from mutualat.methods.at_multi import ATMax, MultiATParams
from mutualat.methods.mat import MAT, MATParams
from mutualat.methods.mat_mp import MATMP, MATMPParams
from mutualat.train import precision
from mutualat.train.precision import Precision, pick

SETTINGS = {
    "fp32": Precision(False, False),
    "fp32+channels_last": Precision(False, True),
    "bf16": Precision(True, False),
    "bf16+channels_last": Precision(True, True),
}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["tinycnn", "smallcnn", "madrycnn", "cnn32"])
    parser.add_argument("--methods", nargs="+", default=["at", "mat"], choices=list(COHORT))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul", type=int, default=2048)
    return parser.parse_args(argv)


COHORT = {"at": 1, "mat": 2, "at-max": 1, "mat-mp": 4}  # networks a step trains


def _threats(gray: bool, steps: int) -> list[Threat]:
    radii = (0.1, 1.0, 10.0) if gray else (8 / 255, 0.5, 12.0)
    return [Threat(norm, eps, steps) for norm, eps in zip(("linf", "l2", "l1"), radii)]


def _step(name: str, method_name: str, setting: Precision, args, device):
    """One trainer step of ``method_name`` on fresh copies of ``name``, computed as ``setting``."""
    cohort = COHORT[method_name]
    models = [build(name, device, setting.channels_last, seed=i).train() for i in range(cohort)]
    x, y = random_batch(name, args.batch, device, setting.channels_last)
    gray = x.shape[1] == 1
    attack = AttackConfig(eps=0.1 if gray else 8 / 255, steps=args.steps)
    if method_name == "mat":
        method = MAT(MATParams(alpha=0.6), attack, [False] * cohort)
    elif method_name == "at-max":
        method = ATMax(MultiATParams(threats=_threats(gray, args.steps), loss="ce"), attack, [False])
    elif method_name == "mat-mp":
        method = MATMP(MATMPParams(generalist="max", alpha=0.3, loss="lc",
                                   threats=_threats(gray, args.steps)), attack, [False] * cohort)
    else:
        method = AT(ATParams(loss="lc"), attack, [False])
    params = [p for m in models for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    return trainer_step(method, models, optimizer, x, y, device, setting.amp)


def _flops(step) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def rows(args: argparse.Namespace, progress: bool = False) -> list[Row]:
    device = torch.device(args.device)
    peak = {"fp32": matmul_rate(device, args.matmul, torch.float32),
            "bf16": matmul_rate(device, args.matmul, torch.bfloat16)}
    out = [Row("precision", f"{args.matmul}² matmul, bf16 vs fp32", peak["bf16"] / 1e9,
               peak["fp32"] / 1e9, "GFLOP/s",
               "the processor's bf16 rate over its fp32 rate (below 1: no bf16 units)")]
    for name in args.models:
        for method_name in args.methods:
            steps = {label: _step(name, method_name, s, args, device) for label, s in SETTINGS.items()}
            seconds = side_by_side(steps, device, args.repeats)
            flops = _flops(steps["fp32"])
            models = COHORT[method_name]
            for label, s in SETTINGS.items():
                rate = args.batch * models / seconds[label]
                achieved = flops / seconds[label]
                reference = peak["bf16" if s.amp else "fp32"]
                out.append(Row(
                    "precision", f"{method_name.upper()} step {name} {label}, B={args.batch}, "
                    f"K={args.steps}", seconds["fp32"] / seconds[label], 1.0, "speed-up",
                    f"{rate:.0f} model-img/s; {achieved / 1e9:.1f} GFLOP/s = "
                    f"{achieved / peak['fp32']:.0%} of fp32 matmul, {achieved / peak['bf16']:.0%} "
                    f"of bf16 matmul ({achieved / reference:.0%} of its own precision's)"))
            # What `auto` keeps: the trainer's trial on these steps (its own timer, wall clock).
            timed = precision.trial({SETTINGS[k]: f for k, f in steps.items()}, device)
            chosen = pick(timed)
            label = next(k for k, v in SETTINGS.items() if v == chosen)
            out.append(Row("precision", f"trial for {method_name.upper()} {name}: keeps {label}",
                           timed[SETTINGS["fp32"]] / timed[chosen], 1.0, "speed-up",
                           ", ".join(f"{k} {1e3 * timed[v]:.0f} ms" for k, v in SETTINGS.items())))
            if progress:  # a long run on a slow CPU: each model's rows as soon as they exist
                print_table(out[-len(SETTINGS) - 1:], f"({name}, {method_name}: done)")
    return out


def main(argv: list[str] | None = None) -> None:
    from common import use_clock

    args = arguments(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
        use_clock("thread")
    print(f"bf16 and channels_last: {environment(torch.device(args.device))}", flush=True)
    print_table(rows(args, progress=True), "All rows:")


if __name__ == "__main__":
    main()

"""Where a training step's time goes: torch.profiler's top operators.

    python benchmarks/profile_step.py [--device cpu|cuda] [--model tinycnn] [--batch 128]
                                      [--steps 10] [--method at|mat] [--cohort 2]
                                      [--amp] [--channels-last] [--top 15]

Runs one warm-up step, then profiles one step as the trainer runs it (bench_mat's
``trainer_step``) and prints the operators sorted by self time (CPU, or CUDA on a GPU).
docs/PERFORMANCE.md quotes these tables where a target is missed.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench_mat import trainer_step
from common import build, environment, random_batch
from mutualat.config import AttackConfig
from mutualat.methods.at import AT, ATParams
from mutualat.methods.mat import MAT, MATParams


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="tinycnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--method", choices=["at", "mat"], default="at")
    parser.add_argument("--cohort", type=int, default=2)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    x, y = random_batch(args.model, args.batch, device, args.channels_last)
    attack = AttackConfig(eps=0.1 if x.shape[1] == 1 else 8 / 255, steps=args.steps)
    n = 1 if args.method == "at" else args.cohort
    models = [build(args.model, device, args.channels_last, seed=i).train() for i in range(n)]
    if args.method == "at":
        method = AT(ATParams(loss="lc"), attack, [False])
    else:
        method = MAT(MATParams(), attack, [False] * n)
    opt = torch.optim.SGD([p for m in models for p in m.parameters()], lr=0.01)
    step = trainer_step(method, models, opt, x, y, device, args.amp)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"{args.method} step, {args.model}, B={args.batch}, K={args.steps}"
          + (f", N={n}" if args.method == "mat" else "") + f": {environment(device)}")
    print(prof.key_averages().table(sort_by=key, row_limit=args.top, max_name_column_width=40))


if __name__ == "__main__":
    main()

"""Achieved FLOP/s of an adversarial-training step against a large matrix product's.

    python benchmarks/bench_flops.py [--device cpu|cuda] [--models tinycnn madrycnn]
                                     [--batch 128] [--steps 10] [--repeats 3] [--amp]
                                     [--layouts nchw nhwc] [--matmul 4096]

The step is one AT step as the trainer runs it (L_C PGD-K with a random start, the L_C
loss, backward, SGD). Its floating-point operations are counted once with
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products of the
forward and backward passes, as ``mutualat.models.count_flops`` counts a forward), then the
step and an ``n x n`` matrix product (fp32, or bf16 with --amp: the machine's practical
peak for that precision) are timed side by side. The ratio is the fraction of that peak
the training step achieves. Untrained models on random data of the model's input shape.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import Row, build, environment, print_table, random_batch, side_by_side
from bench_mat import trainer_step
from mutualat.config import AttackConfig
from mutualat.methods.at import AT, ATParams
from mutualat.models import count_flops


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["tinycnn", "madrycnn"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast and a bf16 matmul")
    parser.add_argument("--layouts", nargs="+", default=["nchw", "nhwc"], choices=["nchw", "nhwc"])
    parser.add_argument("--matmul", type=int, default=None,
                        help="matrix side (default 4096 on the CPU, 8192 on a GPU)")
    return parser.parse_args(argv)


def step_flops(step) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def rows(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    n = args.matmul or (8192 if device.type == "cuda" else 4096)
    dtype = torch.bfloat16 if args.amp else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    fns, flops, forward = {"matmul": lambda: a @ b}, {"matmul": 2 * n**3}, {}
    for name in args.models:
        for layout in args.layouts:
            nhwc = layout == "nhwc"
            model = build(name, device, nhwc).train()
            x, y = random_batch(name, args.batch, device, nhwc)
            eps = 0.1 if x.shape[1] == 1 else 8 / 255
            method = AT(ATParams(loss="lc"), AttackConfig(eps=eps, steps=args.steps), [False])
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            key = f"{name} {layout}"
            fns[key] = trainer_step(method, [model], opt, x, y, device, args.amp)
            flops[key] = step_flops(fns[key])
            forward[name] = count_flops(model, x.shape[1:])
    t = side_by_side(fns, device, args.repeats)
    peak = flops["matmul"] / t["matmul"]
    precision = "bf16" if args.amp else "fp32"
    out = []
    for key in fns:
        if key == "matmul":
            continue
        name = key.split()[0]
        rate = flops[key] / t[key]
        out.append(Row("flops", f"AT step {key}, B={args.batch}, K={args.steps}, {precision}",
                       rate / 1e9, peak / 1e9, "GFLOP/s",
                       f"{flops[key] / 1e9:.1f} GFLOP/step, {forward[name] / 1e6:.1f} MFLOP/img fwd, "
                       f"{1e3 * t[key]:.0f} ms, {args.batch / t[key]:.0f} img/s; "
                       f"reference: {n}^2 {precision} matmul"))
    return out


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    print_table(rows(args), f"Training-step FLOP/s: {environment(torch.device(args.device))}")


if __name__ == "__main__":
    main()

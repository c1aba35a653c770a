"""Time one evaluation attack step of each architecture in channels_last against contiguous.

    python benchmarks/bench_layout.py [--device cpu|cuda] [--models tinycnn smallcnn ...]
                                      [--batch 128] [--repeats 3]

An attack step is what the evaluator repeats thousands of times per model: a forward pass
in eval mode and the cross-entropy's gradient with respect to the input only (no parameter
gradients), as ``mutualat.attacks`` computes it. Each row compares the same untrained model
(the same weights) in the two memory layouts on a batch of uniform random pixels, fp32 both.
These rows are why the evaluator's ``channels_last="auto"`` means channels_last on the CPU
(``mutualat.evaluation.layout``).
"""

from __future__ import annotations

import argparse
import copy

import torch

from common import Row, build, environment, print_table, random_batch, side_by_side

MODELS = ["tinycnn", "smallcnn", "madrycnn", "cnn32", "resnet18", "preact_resnet18", "wrn16_4"]


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def attack_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    delta = torch.zeros_like(x).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x + delta), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, delta)
    return grad


def rows(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    out = []
    for name in args.models:
        contiguous = build(name, device, channels_last=False).eval()
        converted = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
        x, y = random_batch(name, args.batch, device, channels_last=False)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        t = side_by_side({"cl": lambda: attack_step(converted, x_cl, y),
                          "nchw": lambda: attack_step(contiguous, x, y)}, device, args.repeats)
        out.append(Row("layout", f"attack step {name} B={args.batch}: channels_last vs contiguous",
                       1000 * t["cl"], 1000 * t["nchw"], "ms",
                       f"{args.batch / t['cl']:.0f} vs {args.batch / t['nchw']:.0f} img-steps/s"))
    return out


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    print_table(rows(args), f"Attack step by memory layout: {environment(torch.device(args.device))}")


if __name__ == "__main__":
    main()

"""C&W-l2 judged at eps: what stopping an example's search once it is broken within eps saves.

    python benchmarks/bench_cw.py [--model FILE] [--n 100] [--eps 1.0] [--steps 1000]
                                  [--binary-search-steps 9] [--repeats 1] [--clock thread]

``cw(stop_at_eps=True)`` leaves an example's binary search over c once a misclassified point
within eps is found, and compacts the batch to the examples still searched; the default
(``False``) searches every example to the end for its smallest norm, which an accuracy at eps
ignores. Printed: the time of each (this thread's CPU time unless --clock wall, a warm-up
then interleaved repeats), their ratio, robust accuracy at eps of each and on how many
examples the two outcomes differ (the abort test reads the objective of the examples still
searched, so the outcomes may differ where it stops a step at another iteration). The model is a mutualat model file (``--model``, e.g. a
robust one from a study; a robust model is the case that matters: most of its examples are
never broken and are searched to the end either way), or else bench_pgd's CNN trained for one
epoch, non-robust, on which stopping saves the most. The first ``--n`` Fashion-MNIST test
images.
"""

from __future__ import annotations

import argparse

import torch

from bench_pgd import trained_cnn
from common import Row, environment, print_table, side_by_side, use_clock
from mutualat import load_model
from mutualat.attacks import create_attack


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a mutualat model file (Fashion-MNIST)")
    parser.add_argument("--n", type=int, default=100, help="test images attacked")
    parser.add_argument("--eps", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--binary-search-steps", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--clock", choices=["wall", "thread"], default="thread",
                        help="thread (default): this thread's CPU time, steady on a busy machine")
    return parser.parse_args(argv)


def rows(args: argparse.Namespace) -> list[Row]:
    device = torch.device("cpu")
    model, xte, yte = trained_cnn(device)
    if args.model:
        model = load_model(args.model).eval()
    x, y = xte[: args.n].to(device), yte[: args.n].to(device)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]  # as the evaluator does: only clean-correct examples
    outcome: dict[bool, torch.Tensor] = {}

    def attack(stop: bool):
        cw = create_attack("cw", eps=args.eps, steps=args.steps, lr=0.01,
                           binary_search_steps=args.binary_search_steps, stop_at_eps=stop)

        def go() -> None:
            x_adv = cw(model, x, y)
            with torch.no_grad():
                outcome[stop] = model(x_adv).argmax(1) == y
        return go

    seconds = side_by_side({"stop": attack(True), "full": attack(False)}, device, args.repeats)
    robust = {stop: int(o.sum()) for stop, o in outcome.items()}
    differ = int((outcome[True] != outcome[False]).sum())
    n = len(y)
    print(f"{n} clean-correct of {args.n}; robust at l2 {args.eps}: stop_at_eps {robust[True]}, "
          f"full search {robust[False]}; outcomes differ on {differ}")
    return [Row("cw", f"stop_at_eps vs full search, {n} examples, {args.steps} steps x "
                f"{args.binary_search_steps}", seconds["stop"], seconds["full"], "s",
                note=f"robust {robust[True]} vs {robust[False]} of {n}, {differ} differ")]


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    torch.set_num_threads(1)
    use_clock(args.clock)
    print_table(rows(args), environment(torch.device("cpu")))


if __name__ == "__main__":
    main()

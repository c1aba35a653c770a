"""The whole speed table: every benchmark of this folder with one preset, one table.

    python benchmarks/run_all.py                  # the CPU preset: 1 thread, thread CPU time
    python benchmarks/run_all.py --threads 2 --clock wall   # the CPU preset in wall time
    python benchmarks/run_all.py --preset gpu     # ResNet-18 and WRN-34-10 at batch 128, bf16
    python benchmarks/run_all.py --preset smoke   # seconds: checks that everything runs
    python benchmarks/run_all.py --only mat flops # a subset

Rows (every figure a ratio of two timings side by side in one process, median of repeats):

- pgd:   our PGD-K / torchattacks' PGD-K (same model, batch, steps, no random start);
- mat:   one MAT step of N = 2, 3, 4 / N x one AT step;
- flops: a training step's achieved FLOP/s / an n x n matrix product's FLOP/s;
- eval:  the evaluator's time with cumulative / standalone attacks, and in channels_last /
         contiguous;
- layout: one attack step of each architecture in channels_last / contiguous.

The cpu preset runs torch on one thread and reads each thread's CPU time: on a shared, busy
CPU that measures the work and not the waiting (see common.py), and on a contended 2-core
machine one thread was also 7-10x faster in wall time than two for these small models.
Each section prints its rows as soon as it is done (so a run cut short keeps them), then the
whole table is printed once more at the end. docs/PERFORMANCE.md holds the measured tables.
"""

from __future__ import annotations

import argparse
import traceback

import torch

import bench_eval
import bench_flops
import bench_layout
import bench_mat
import bench_pgd
from common import Row, environment, print_table, use_clock

SMALL_BATCH_MODELS = ["tinycnn", "smallcnn", "madrycnn", "cnn32", "resnet18"]
# Each preset: a list of (section, arguments of that benchmark's command line).
PRESETS: dict[str, list[tuple[str, list[str]]]] = {
    "cpu": [
        ("pgd", ["--batch", "128", "--steps", "10", "--repeats", "5"]),
        ("mat", ["--model", "tinycnn", "--batch", "128", "--steps", "10", "--repeats", "3"]),
        ("flops", ["--models", "tinycnn", "madrycnn", "--batch", "128", "--steps", "10",
                   "--repeats", "3", "--matmul", "4096"]),
        ("eval", ["--suite", "quick", "--n", "512", "--repeats", "3"]),
        ("layout", ["--batch", "128", "--repeats", "3"]),
        # a cumulative suite's last batches are small: is channels_last still the faster?
        ("layout", ["--batch", "32", "--repeats", "3", "--models", *SMALL_BATCH_MODELS]),
        ("layout", ["--batch", "8", "--repeats", "3", "--models", *SMALL_BATCH_MODELS]),
    ],
    "gpu": [  # most wanted first: a run cut short by its time limit keeps these
        ("mat", ["--model", "resnet18", "--batch", "128", "--steps", "10", "--repeats", "3",
                 "--amp", "--channels-last"]),
        ("mat", ["--model", "wrn34_10", "--batch", "128", "--steps", "10", "--repeats", "2",
                 "--amp", "--channels-last"]),
        ("flops", ["--models", "resnet18", "wrn34_10", "--layouts", "nhwc", "--batch", "128",
                   "--steps", "10", "--repeats", "3", "--amp", "--matmul", "8192"]),
        ("pgd", ["--model", "resnet18", "--batch", "128", "--steps", "10", "--repeats", "5",
                 "--amp", "--channels-last"]),
        ("pgd", ["--batch", "128", "--steps", "10", "--repeats", "5", "--amp",
                 "--channels-last"]),
        ("eval", ["--suite", "quick", "--n", "2048", "--repeats", "3"]),
        ("flops", ["--models", "resnet18", "--layouts", "nchw", "nhwc", "--batch", "128",
                   "--steps", "10", "--repeats", "3", "--matmul", "8192"]),
        ("mat", ["--model", "tinycnn", "--batch", "128", "--steps", "10", "--repeats", "3",
                 "--amp", "--channels-last"]),
        # fp32 attack steps: would "auto" gain from channels_last on a GPU too?
        ("layout", ["--models", "resnet18", "wrn34_10", "--batch", "128", "--repeats", "3"]),
    ],
    "smoke": [
        ("pgd", ["--batch", "32", "--steps", "2", "--repeats", "1"]),
        ("mat", ["--model", "tinycnn", "--batch", "16", "--steps", "2", "--cohorts", "2",
                 "--repeats", "1"]),
        ("flops", ["--models", "tinycnn", "--layouts", "nchw", "--batch", "16", "--steps", "2",
                   "--repeats", "1", "--matmul", "512"]),
        ("eval", ["--suite", "quick", "--n", "64", "--repeats", "1"]),
        ("layout", ["--models", "tinycnn", "--batch", "8", "--repeats", "1"]),
    ],
}
MODULES = {"pgd": bench_pgd, "mat": bench_mat, "flops": bench_flops, "eval": bench_eval,
           "layout": bench_layout}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default=None, help="default: cuda for the gpu preset, else cpu")
    parser.add_argument("--only", nargs="+", choices=sorted(MODULES), default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 1 for the cpu preset, else torch's)")
    parser.add_argument("--clock", choices=["wall", "thread"], default=None,
                        help="default: thread for the cpu preset at 1 thread, else wall")
    args = parser.parse_args(argv)
    if args.threads or args.preset == "cpu":
        torch.set_num_threads(args.threads or 1)
    use_clock(args.clock or ("thread" if args.preset == "cpu" and torch.get_num_threads() == 1
                             else "wall"))
    device = args.device or ("cuda" if args.preset == "gpu" else "cpu")
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # as the trainer sets it (train/speed.py)
    print(f"preset {args.preset}: {environment(torch.device(device))}", flush=True)
    rows: list[Row] = []
    for section, section_args in PRESETS[args.preset]:
        if args.only and section not in args.only:
            continue
        module = MODULES[section]
        try:
            new = module.rows(module.arguments(section_args + ["--device", device]))
        except Exception:  # one broken section must not hide the others' numbers
            traceback.print_exc()
            print(f"section {section} {' '.join(section_args)} FAILED", flush=True)
            continue
        print_table(new)
        rows += new
    print()
    print_table(rows, f"All rows (ratio = ours / reference), preset {args.preset}:")


if __name__ == "__main__":
    main()

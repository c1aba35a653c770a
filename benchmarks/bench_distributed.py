"""Time a cohort-parallel MAT step on 2 processes against the single-process MAT step.

    python benchmarks/bench_distributed.py [--model tinycnn] [--batch 128] [--steps 10]
                                           [--train-steps 8] [--repeats 3] [--threads 1]

Both sides run the real trainer (:class:`mutualat.train.Trainer`) on the embedded
Fashion-MNIST subset: MAT with two members (alpha 0.6, l-inf PGD-K with a random start), no
validation, no test, on the CPU. The step time is the batch size over the images per second
of the second epoch (the first one warms up). The 2-process run is cohort-parallel
(``distributed.mode=cohort``, gloo on 127.0.0.1, one member per process, ``--threads``
threads each; the single process gets the same number of threads). Each of the two
processes also times what it spends per step in the all-gather of the soft labels and in
the all-gather of the step's losses (the exchange as training sees it, which includes
waiting for the other process), and after training the same two all-gathers entered
together after a barrier (the exchange alone).

Runs alternate (single, pair, pair, single, ...) and medians of ``--repeats`` are
reported; ratio = pair / single. With a free core per process the ideal ratio is about 1/2
(each process does half of the work) plus the exchange; on a machine whose cores are busy
with other work the ratio mostly says how much CPU the two processes got, and the exchange
row is the cost of the distribution itself.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from common import Row, environment, print_table


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tinycnn", help="a model for 28x28 grey images")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the training attack")
    parser.add_argument("--train-steps", type=int, default=8, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    return parser.parse_args(argv)


def overrides(args: argparse.Namespace) -> list[str]:
    return [
        "data.name=fashion-mnist-embedded", "data.val_fraction=0",
        f"data.train_subset={args.batch * args.train_steps}", f"data.batch_size={args.batch}",
        "method.name=mat", "method.params.alpha=0.6",
        f"models.0.name={args.model}", f"models.1.name={args.model}",
        "optim.epochs=2", f"attack.steps={args.steps}", "attack.eps=0.1",
        "eval.test=false", "device=cpu", "progress=false", "distributed.mode=cohort",
    ]


def second_epoch_step_s(run: Path, batch: int) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rate = [r for r in records if r["event"] == "epoch"][1]["img_per_s"]
    return batch / rate


def single(args: argparse.Namespace, out: Path) -> float:
    from mutualat.config import load_config
    from mutualat.train import Trainer

    torch.set_num_threads(args.threads)
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer's per-epoch lines
        Trainer(load_config(None, overrides(args)), out).fit()
    return second_epoch_step_s(out, args.batch)


def _pair_worker(rank: int, port: int, args: argparse.Namespace, out: str, report: str) -> None:
    from mutualat.config import load_config
    from mutualat.train import Trainer, placement

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(args.threads)
    spent: list[float] = []  # seconds in the two per-step exchanges, step by step

    def timed(fn):
        def wrapper(*a, **k):
            tick = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent.append(time.perf_counter() - tick)
        return wrapper

    placement.CohortParallel.exchange = timed(placement.CohortParallel.exchange)
    placement.CohortParallel.reduce_step = timed(placement.CohortParallel.reduce_step)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = Trainer(load_config(None, overrides(args)), out)
        trainer.fit()
    # Two timed calls a step (the soft labels' exchange, the step's reduce); the second
    # epoch's steps are the last ones.
    in_training = sum(spent[-2 * args.train_steps:]) / args.train_steps
    # The exchange alone: both processes enter it together (after a barrier), so no waiting.
    alone = []
    logits = {rank: torch.randn(args.batch, 10)}
    metrics = {f"{k}/h{rank + 1}": 0.5 for k in ("loss", "lc", "kl", "adv_acc")}
    for _ in range(30):
        torch.distributed.barrier()
        tick = time.perf_counter()
        trainer.placement.exchange(logits, [0, 1], args.batch)
        trainer.placement.reduce_step(1.0, metrics)
        alone.append(time.perf_counter() - tick)
    Path(f"{report}.{rank}").write_text(json.dumps([in_training, statistics.median(alone)]))


def pair(args: argparse.Namespace, out: Path) -> tuple[float, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = str(out) + ".exchange"
    mp.start_processes(_pair_worker, args=(port, args, str(out), report), nprocs=2,
                       start_method="spawn")
    in_training, alone = (max(v) for v in zip(*(json.loads(Path(f"{report}.{r}").read_text())
                                                 for r in range(2))))
    return second_epoch_step_s(out, args.batch), in_training, alone


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    times: dict[str, list[float]] = {"single": [], "pair": [], "exchange": [], "alone": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for side in ("single", "pair") if r % 2 == 0 else ("pair", "single"):
                out = Path(tmp) / f"{side}{r}"
                if side == "single":
                    times["single"].append(single(args, out))
                else:
                    step, exchange, alone = pair(args, out)
                    times["pair"].append(step)
                    times["exchange"].append(exchange)
                    times["alone"].append(alone)
    t = {k: statistics.median(v) for k, v in times.items()}
    setting = f"{args.model}, B={args.batch}, PGD-{args.steps}, {args.threads} thread(s)/process"
    rows = [
        Row("distrib", f"MAT N=2 step, 2 procs (cohort) vs 1: {setting}", 1e3 * t["pair"],
            1e3 * t["single"], "ms/step", f"{args.batch / t['pair']:.0f} vs "
            f"{args.batch / t['single']:.0f} img/s"),
        Row("distrib", "exchange in training (incl. waiting for the peer)", 1e3 * t["exchange"],
            1e3 * t["pair"], "ms/step", "soft labels + losses; the larger process"),
        Row("distrib", "exchange alone (entered together)", 1e3 * t["alone"], 1e3 * t["pair"],
            "ms/step", "the same two all-gathers after a barrier"),
    ]
    print_table(rows, f"Cohort-parallel MAT against one process: {environment(torch.device('cpu'))}"
                      f", {os.cpu_count()} cores, medians of {args.repeats}")


if __name__ == "__main__":
    main()

"""Time mutualat's PGD against torchattacks' PGD on the same model, batch and steps.

    python benchmarks/bench_pgd.py [--device cpu|cuda] [--batch 256] [--steps 10] [--repeats 7]
                                   [--width 1]

A small CNN is trained for one epoch on Fashion-MNIST (the embedded subset, else the IDX
files under ../shared/data/fashion-mnist), then both libraries attack the same test batch
with l-inf PGD (eps 0.1, step 0.01, no random start, so both compute the same thing):

- training PGD: plain PGD, no early stop (what the trainers run);
- evaluation PGD: ours with ``early_stop=True`` (broken examples stop moving and leave the
  working batch); torchattacks has no such option, so it runs plain PGD.

Timings are interleaved (ours, theirs, theirs, ours, ...) in one process and the median of
``--repeats`` runs is reported, with the ratio ours/theirs (< 1: ours is faster), and the
robust accuracy each attack leaves. torchattacks is needed only here and in the tests.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mutualat.attacks import PGD

SHARED_FMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


def load_fashion_mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    try:
        from mutualat.data import load_dataset

        d = load_dataset("fashion-mnist-embedded")
        arrays = d.train.images, d.train.labels, d.test.images, d.test.labels
    except Exception:  # the data module is not needed here; fall back to the shared files
        def idx(name: str) -> np.ndarray:
            raw = gzip.open(SHARED_FMNIST / name).read()
            shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(raw[3]))
            return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(shape)

        arrays = (idx("train-images-idx3-ubyte.gz")[:10000, None],
                  idx("train-labels-idx1-ubyte.gz")[:10000],
                  idx("t10k-images-idx3-ubyte.gz")[:, None], idx("t10k-labels-idx1-ubyte.gz"))
    xtr, ytr, xte, yte = arrays
    return (torch.from_numpy(np.ascontiguousarray(xtr)).float() / 255,
            torch.from_numpy(np.asarray(ytr, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(xte)).float() / 255,
            torch.from_numpy(np.asarray(yte, dtype=np.int64)))


def train_model(x: torch.Tensor, y: torch.Tensor, device: torch.device, width: int) -> nn.Module:
    torch.manual_seed(0)
    c1, c2 = 32 * width, 64 * width
    model = nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = x.to(device), y.to(device)
    for i in torch.randperm(len(y), device=device).split(128):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    return model.eval()


def timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--width", type=int, default=1, help="channel multiplier of the CNN")
    args = parser.parse_args()

    import torchattacks  # only the benchmark and the tests need it

    device = torch.device(args.device)
    xtr, ytr, xte, yte = load_fashion_mnist()
    model = train_model(xtr, ytr, device, args.width)
    x, y = xte[: args.batch].to(device), yte[: args.batch].to(device)
    step = args.eps / args.steps
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()

    common = dict(norm="linf", eps=args.eps, steps=args.steps, step_size=step, random_start=False)
    ours_train = PGD(**common)
    ours_eval = PGD(early_stop=True, **common)
    theirs = torchattacks.PGD(model, eps=args.eps, alpha=step, steps=args.steps, random_start=False)
    contenders = {
        "training PGD": (lambda: ours_train(model, x, y), lambda: theirs(x, y)),
        "evaluation PGD": (lambda: ours_eval(model, x, y), lambda: theirs(x, y)),
    }

    def accuracy(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            return (model(x_adv).argmax(1) == y).float().mean().item()

    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, steps {args.steps}, eps {args.eps}, width {args.width}, "
          f"clean accuracy {clean:.3f}")
    print(f"{'':16} {'ours (ms)':>10} {'torchattacks (ms)':>18} {'ratio':>6} "
          f"{'ours rob.acc':>13} {'theirs rob.acc':>15}")
    for name, (ours, ta) in contenders.items():
        ours(), ta()  # warm-up
        t_ours, t_theirs = [], []
        for r in range(args.repeats):
            order = [(ours, t_ours), (ta, t_theirs)]
            for fn, sink in order if r % 2 == 0 else order[::-1]:
                t, out = timed(fn, device)
                sink.append(t)
        m_ours, m_theirs = statistics.median(t_ours), statistics.median(t_theirs)
        print(f"{name:16} {1e3 * m_ours:10.1f} {1e3 * m_theirs:18.1f} {m_ours / m_theirs:6.2f} "
              f"{accuracy(ours()):13.3f} {accuracy(ta()):15.3f}")


if __name__ == "__main__":
    main()

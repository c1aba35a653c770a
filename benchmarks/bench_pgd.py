"""Time mutualat's PGD against torchattacks' PGD on the same model, batch and steps.

    python benchmarks/bench_pgd.py [--device cpu|cuda] [--batch 256] [--steps 10] [--repeats 7]
                                   [--width 1] [--model cnn|resnet18|...] [--amp] [--channels-last]

A small CNN is trained for one epoch on Fashion-MNIST (the embedded subset, else the IDX
files under ../shared/data/fashion-mnist), then both libraries attack the same test batch
with l-inf PGD (eps 0.1, step 0.01, no random start, so both compute the same thing):

- training PGD: plain PGD, no early stop (what the trainers run);
- evaluation PGD: ours with ``early_stop=True`` (broken examples stop moving and leave the
  working batch); torchattacks has no such option, so it runs plain PGD.

Timings are interleaved (ours, theirs, theirs, ours, ...) in one process and the median of
``--repeats`` runs is reported, with the ratio ours/theirs (< 1: ours is faster), and the
robust accuracy each attack leaves. torchattacks is needed only here and in the tests.
``--model resnet18`` (any registered name) times an untrained model on random data of its
input shape instead: the timing is meaningful, the accuracies are not.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import Row, autocast, build, environment, print_table, random_batch, side_by_side
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


_TRAINED: dict[tuple[str, int], nn.Module] = {}


def trained_cnn(device: torch.device, width: int = 1) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The CNN trained once per process (run_all.py reuses it), and the test split."""
    xtr, ytr, xte, yte = load_fashion_mnist()
    key = (str(device), width)
    if key not in _TRAINED:
        _TRAINED[key] = train_model(xtr, ytr, device, width)
    return _TRAINED[key], xte, yte


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--width", type=int, default=1, help="channel multiplier of the CNN")
    parser.add_argument("--model", default="cnn",
                        help="'cnn' (trained on Fashion-MNIST) or a registered model name, "
                             "untrained, on random data of its input shape (timing only)")
    parser.add_argument("--amp", action="store_true", help="both attacks under bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    return parser.parse_args(argv)


def rows(args: argparse.Namespace) -> list[Row]:
    """The two comparisons as table rows (ratio < 1: ours is faster)."""
    import torchattacks  # only the benchmark and the tests need it

    device = torch.device(args.device)
    if args.model == "cnn":
        model, xte, yte = trained_cnn(device, args.width)
        x, y = xte[: args.batch].to(device), yte[: args.batch].to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
    else:
        model = build(args.model, device, args.channels_last).eval()
        x, y = random_batch(args.model, args.batch, device, args.channels_last)
    step = args.eps / args.steps

    def accuracy(x_adv: torch.Tensor) -> float:
        with torch.no_grad(), autocast(device, args.amp):
            return (model(x_adv).argmax(1) == y).float().mean().item()

    common = dict(norm="linf", eps=args.eps, steps=args.steps, step_size=step, random_start=False)
    ours_train = PGD(**common)
    ours_eval = PGD(early_stop=True, **common)
    theirs = torchattacks.PGD(model, eps=args.eps, alpha=step, steps=args.steps, random_start=False)

    def amp(fn):
        def run():
            with autocast(device, args.amp):
                return fn()
        return run

    contenders = {
        "training PGD": (amp(lambda: ours_train(model, x, y)), amp(lambda: theirs(x, y))),
        "evaluation PGD (early stop)": (amp(lambda: ours_eval(model, x, y)),
                                        amp(lambda: theirs(x, y))),
    }
    setting = (f"{args.model}, B={args.batch}, K={args.steps}"
               + (", bf16" if args.amp else "") + (", NHWC" if args.channels_last else ""))
    out = []
    for name, (ours, ta) in contenders.items():
        t = side_by_side({"ours": ours, "theirs": ta}, device, args.repeats)
        out.append(Row("pgd", f"{name}: {setting}", 1e3 * t["ours"], 1e3 * t["theirs"], "ms",
                       f"robust acc. ours {accuracy(ours()):.3f}, "
                       f"torchattacks {accuracy(ta()):.3f}, clean {accuracy(x):.3f}"))
    return out


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    device = torch.device(args.device)
    print_table(rows(args), f"PGD-{args.steps} against torchattacks: {environment(device)}")


if __name__ == "__main__":
    main()

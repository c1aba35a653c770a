"""Command-line subcommands ``eval``, ``transfer`` and ``report``: arguments in, library calls out.

    mutualat eval --model [NAME=]PATH [--model ...] --suite NAME|FILE --data NAME
                  [--data-dir D] [--data-path P] [--split test] [--n N] --out DIR [--ensemble]
                  [--eps [THREAT=]E[,E...]] [--batch-size B] [--device auto] [--seed S] [--no-checks]
                  [--check-n N] [--no-progress]
    mutualat transfer --source [NAME=]PATH ... --target [NAME=]PATH ... --data NAME [--n N]
                  --out DIR [--norm linf] [--eps EPS] [--steps 100] [--step-size 0.003]
    mutualat report RUN_OR_EVAL_OR_JSON [...] --out DIR

``cli.py`` wires them in with ``COMMANDS.update(add_eval_commands(sub))``. A model file's
default name is its run and role: ``runs/mat/models/h1.safetensors`` -> ``mat-h1``,
``runs/at/models/model.safetensors`` -> ``at``; ``NAME=PATH`` chooses another.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mutualat.attacks.threat import recorded_threats
from mutualat.console import setup_logging
from mutualat.data import DATASETS, load_dataset, subset
from mutualat.device import resolve_device
from mutualat.errors import ConfigError, MutualatError
from mutualat.evaluation import (CheckConfig, default_attack, evaluate, load_suite, summary_table,
                                 transfer_matrix, write_transfer)
from mutualat.evaluation.suite import packaged_suites
from mutualat.evaluation.sweep import eps_sweep, parse_eps, sweep_table
from mutualat.models import check_source, open_model, parse_source
from mutualat.models.sources import io_model_name
from mutualat.report.paper_tables import build_report

Handler = Callable[[argparse.Namespace], int]


def add_eval_commands(subparsers: Any) -> dict[str, Handler]:
    """Register ``eval``, ``transfer`` and ``report`` on an argparse ``subparsers`` object;
    returns ``{command: handler}`` (each parser also gets ``handler`` as a default)."""
    ev = subparsers.add_parser("eval", help="run an attack suite on models: per-example worst-case robust accuracy")
    ev.add_argument("--model", action="append", required=True, metavar="[NAME=]SOURCE",
                    help="a mutualat model file, torch:FILE.pt, robustbench:NAME or "
                         "py:module:function (repeatable; see 'Evaluate your own model')")
    ev.add_argument("--suite", required=True,
                    help=f"a packaged suite ({', '.join(packaged_suites())}) or a suite YAML file")
    ev.add_argument("--eps", action="append", metavar="[THREAT=]E[,E...]",
                    help="one value: the radius of the suite's single lp threat. Several (or "
                         "THREAT=..., repeatable): an eps sweep, robust accuracy against eps per "
                         "threat in eps_sweep.png/.md/.json (values like 8/255 allowed)")
    ev.add_argument("--ensemble", action="store_true",
                    help="also evaluate the ensemble (mean of the models' softmax outputs)")
    ev.add_argument("--no-checks", action="store_true", help="skip the gradient-masking checks")
    ev.add_argument("--check-n", type=int, default=256, help="examples the measured checks use (default 256)")
    ev.add_argument("--amp", choices=("off", "bf16"), default="off",
                    help="off (default): fp32 throughout. bf16: the models run under bf16 autocast "
                         "(faster on processors with bf16 units; lower-precision gradients can "
                         "weaken attacks, so the summary says so)")
    _layout_arg(ev)
    _data_args(ev)
    _source_args(ev)
    _run_args(ev)
    ev.set_defaults(handler=run_eval)

    tr = subparsers.add_parser("transfer", help="transfer (black-box) attacks: sources x targets accuracy matrix")
    tr.add_argument("--source", action="append", required=True, metavar="[NAME=]SOURCE",
                    help="a model the attacks are crafted on (any model source, repeatable)")
    tr.add_argument("--target", action="append", required=True, metavar="[NAME=]SOURCE",
                    help="a model the crafted examples are tried on (repeatable)")
    tr.add_argument("--norm", choices=("linf", "l2", "l1"),
                    help="threat of the attack (default: each source's training threat, else linf)")
    tr.add_argument("--eps", type=float, help="radius (default: each source's training eps)")
    tr.add_argument("--steps", type=int, default=100, help="PGD steps (default 100, the paper's)")
    tr.add_argument("--step-size", type=float,
                    help="PGD step (default 0.003 in linf, the paper's; 2.5 eps / steps otherwise)")
    _layout_arg(tr)
    _data_args(tr)
    _source_args(tr)
    _run_args(tr)
    tr.set_defaults(handler=run_transfer)

    rp = subparsers.add_parser("report", help="Markdown/CSV tables and PNG plots from runs and evaluations")
    rp.add_argument("inputs", nargs="+", metavar="RUN_OR_SUMMARY",
                    help="run folders, eval folders or summary.json, transfer folders, {alpha: acc} JSON")
    rp.add_argument("--out", type=Path, required=True, help="report folder")
    rp.set_defaults(handler=run_report)
    return {"eval": run_eval, "transfer": run_transfer, "report": run_report}


def _layout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="the models' memory layout, fp32 either way: auto (default) runs "
                        "convolutional models in channels_last on the CPU, where it is faster; "
                        "the record says which layout each model ran in")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a registered dataset (cifar10, fashion-mnist, ...)")
    p.add_argument("--data-dir", help="data root (else $MUTUALAT_DATA, else the user cache folder)")
    p.add_argument("--data-path", help="the dataset's folder or archive, used as is")
    p.add_argument("--split", choices=("test", "train"), default="test", help="default: test")
    p.add_argument("--n", type=int, help="a seeded, class-balanced subset of N examples (default: all)")


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("foreign models (torch:, robustbench: sources that do not say it)")
    g.add_argument("--arch", help="our architecture the weights belong to (mutualat list models)")
    g.add_argument("--mean", type=_floats, metavar="M[,M,M]",
                   help="input normalization mean the weights were trained with ([0,1] units)")
    g.add_argument("--std", type=_floats, metavar="S[,S,S]", help="input normalization std")


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    return values


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (resumed if it exists)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="cuda, cuda:1, mps, cpu (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of every attack")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def model_name(path: Path) -> str:
    """The default name of a model file (see the module docstring)."""
    return io_model_name(Path(path))


# A NAME= prefix: what a name may be (no ':', '?', '/'), so that "torch:f.pt?arch=wrn" and
# "runs/x=1/model.safetensors" are read as sources, not as names.
_NAME_PREFIX = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._+-]*)=(.+)$")


def parse_models(items: Sequence[str]) -> dict[str, Any]:
    """``[NAME=]SOURCE`` items -> {name: parsed source}; one source given twice is one model."""
    named: dict[str, Any] = {}
    for item in items:
        match = _NAME_PREFIX.match(item)
        source = parse_source(match.group(2) if match else item)
        name = match.group(1) if match else source.default_name()
        if name in named and _identity(named[name]) != _identity(source):
            raise ConfigError(
                f"two models would both be named {name!r} ({named[name].text} and {source.text}); "
                "name them with NAME=SOURCE"
            )
        named[name] = source
    return named


def _identity(source: Any) -> str:
    """What makes two sources the same model: a file's resolved path, else the text."""
    return str(Path(source.target).resolve()) if source.kind == "file" else source.text


def check_models(sources: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Every source with the command's --arch/--mean/--std filled in, checked before any data
    is read (files exist, names are known)."""
    defaults = {"arch": args.arch, "mean": args.mean, "std": args.std}
    filled = {}
    for name, source in sources.items():
        if source.kind == "torch":
            source = source.with_defaults(**defaults)
        elif source.kind == "robustbench":
            # The zoo of the data being evaluated, unless the source says otherwise.
            zoo = args.data if args.data in ("cifar10", "cifar100") else None
            source = source.with_defaults(**defaults, dataset=zoo)
        filled[name] = check_source(source)
    return filled


def sized(sources: dict[str, Any], images: Any) -> dict[str, Any]:
    """Foreign state dicts built for the data's image size unless they say ``size=`` (our
    architectures pool globally; the size only matters to flattening ones and to the record)."""
    side = int(images.shape[-1])
    return {name: s.with_defaults(size=side) if s.kind in ("torch", "robustbench") else s
            for name, s in sources.items()}


def load_models(sources: dict[str, Any], device: Any) -> tuple[dict[str, Any], dict[str, dict]]:
    """{name: model} and {name: metadata record} of parsed sources."""
    models, info = {}, {}
    for name, source in sources.items():
        loaded = open_model(source, device=device)
        where = source.target if source.kind == "file" else source.text
        info[name] = {"path": where, **loaded.record}
        models[name] = loaded.model
    return models, info


def check_dataset(args: argparse.Namespace) -> None:
    """An unknown --data is an error before any model or data is loaded."""
    DATASETS.get(args.data)


def load_data(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    dataset = load_dataset(args.data, data_dir=args.data_dir, path=args.data_path)
    split = subset(getattr(dataset, args.split), args.n, seed=args.seed)
    info = {"dataset": dataset.name, "split": args.split, "n": len(split), "subset": args.n,
            "subset_seed": args.seed, "path": args.data_path, "classes": dataset.classes}
    return torch.from_numpy(split.images), torch.from_numpy(split.labels), info


def check_fit(info: dict[str, dict], images: Any, labels: Any) -> None:
    """Model files whose input shape or class count does not fit the data: a clear error."""
    _, c, h, w = images.shape
    top = int(labels.max()) if len(labels) else 0
    for name, record in info.items():
        spec = record.get("model", {})
        if spec.get("in_channels") not in (None, c) or spec.get("input_size") not in (None, h):
            raise ConfigError(
                f"model {name!r} ({record['path']}) takes {spec.get('in_channels')}x"
                f"{spec.get('input_size')}x{spec.get('input_size')} images; the data has {c}x{h}x{w}"
            )
        if spec.get("num_classes") is not None and top >= spec["num_classes"]:
            raise ConfigError(
                f"model {name!r} has {spec['num_classes']} classes; the data has labels up to {top}"
            )


# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------


def run_eval(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    points = parse_eps(args.eps, suite) if args.eps else None
    if points and len(args.eps) == 1 and "=" not in args.eps[0] and len(next(iter(points.values()))) == 1:
        suite = suite.with_eps(next(iter(points.values()))[0])  # one radius: a plain evaluation
        points = None
    check_dataset(args)
    sources = check_models(parse_models(args.model), args)
    if args.check_n < 1:
        raise ConfigError(f"--check-n must be >= 1, got {args.check_n}")
    images, labels, data_info = load_data(args)
    device = resolve_device(args.device)
    models, info = load_models(sized(sources, images), device)
    check_fit(info, images, labels)
    for line in threat_mismatches(info, suite):
        print(f"note: {line}")
    checks = False if args.no_checks else CheckConfig(n=args.check_n)
    if points:
        eps_sweep(models, suite, points, images, labels, args.out, checks=checks,
                  batch_size=args.batch_size, device=device, seed=args.seed, ensemble=args.ensemble,
                  progress=not args.no_progress, data_info=data_info, model_info=info, amp=args.amp,
                  channels_last=args.channels_last)
        print(sweep_table(json.loads((args.out / "eps_sweep.json").read_text())))
        print(f"robust accuracy against eps: {args.out / 'eps_sweep.png'}")
        return 0
    summary = evaluate(models, suite, images, labels, args.out, batch_size=args.batch_size, device=device,
             seed=args.seed, ensemble=args.ensemble, checks=checks, progress=not args.no_progress,
             data_info=data_info, model_info=info, amp=args.amp, channels_last=args.channels_last)
    print(summary_table(summary))
    print(f"summary: {args.out / 'summary.json'}")
    return 0


def threat_mismatches(info: dict[str, dict], suite: Any) -> list[str]:
    """A line for every model whose file records a training radius for a norm the suite
    attacks at another radius (allowed: evaluating at other radii is common; said, because a
    suite's default eps is easy to forget)."""
    lines = []
    for name, record in info.items():
        trained = {t.norm: t.eps for t in recorded_threats(record)}
        for threat_name, threat in suite.lp_threats().items():
            if threat.norm in trained and not math.isclose(trained[threat.norm], threat.eps):
                lines.append(f"{name} was trained at {threat.norm} eps={trained[threat.norm]:g}; "
                             f"the suite's {threat_name} threat attacks at eps={threat.eps:g} "
                             "(--eps changes it)")
    return lines


def transfer_threat(name: str, record: dict, norm: str | None, eps: float | None) -> tuple[str, float]:
    """The ball a transfer attack from source ``name`` uses: ``--norm``/``--eps`` where given,
    else what the source's model file records it was trained against (for a model trained
    on several types, its l-inf threat unless ``--norm`` picks another)."""
    trained = {t.norm: t.eps for t in recorded_threats(record)}
    if norm is None:
        norm = next(iter(trained)) if len(trained) == 1 else ("linf" if "linf" in trained or not trained
                                                              else next(iter(trained)))
    if eps is None:
        if norm not in trained:
            raise ConfigError(f"source {name!r} records no {norm} training eps"
                              + (f" (it was trained on {', '.join(trained)})" if trained else "")
                              + "; pass --eps")
        eps = trained[norm]
    return norm, eps


def run_transfer(args: argparse.Namespace) -> int:
    check_dataset(args)
    source_specs = check_models(parse_models(args.source), args)
    target_specs = check_models(parse_models(args.target), args)
    for name in set(source_specs) & set(target_specs):
        if _identity(source_specs[name]) != _identity(target_specs[name]):
            raise ConfigError(f"a source and a target are both named {name!r}; name them with NAME=SOURCE")
    images, labels, _ = load_data(args)
    device = resolve_device(args.device)
    sources, source_info = load_models(sized(source_specs, images), device)
    targets, target_info = load_models(sized(target_specs, images), device)
    for name in set(sources) & set(targets):
        targets[name] = sources[name]  # the same file: one model, the white-box diagonal
    check_fit({**source_info, **target_info}, images, labels)
    attacks = {}
    for name, record in source_info.items():
        norm, eps = transfer_threat(name, record, args.norm, args.eps)
        step = args.step_size if args.step_size is not None else (0.003 if norm == "linf" else None)
        attacks[name] = default_attack(norm, eps, steps=args.steps, step_size=step)
    result = transfer_matrix(sources, targets, images, labels, attacks, batch_size=args.batch_size,
                             device=device, seed=args.seed, progress=not args.no_progress,
                             channels_last=args.channels_last)
    path = write_transfer(result, args.out)
    print((args.out / "transfer.md").read_text())
    print(f"transfer matrix: {path}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    report = build_report(args.inputs, args.out)
    print(report.read_text())
    print(f"report: {report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The three subcommands on their own (``python -m mutualat.cli_eval``), as ``mutualat``
    runs them once wired: a :class:`MutualatError` prints ``error: ...`` and returns 2."""
    parser = argparse.ArgumentParser(prog="mutualat", description="evaluate, transfer, report")
    handlers = add_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    setup_logging()
    try:
        return handlers[args.command](args)
    except MutualatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

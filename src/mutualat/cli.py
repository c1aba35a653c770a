"""Command line: turns arguments into a config and calls the library, nothing more.

    mutualat train --config FILE --out DIR [--set key=value ...] [--resume] [--nproc K]
                   [--print-config] [--dry-run]
    mutualat compare PLAN.yaml --out DIR [--jobs K] [--data-dir D] [--device DEV]
                     [--status | --archive DEST] [--write DOC]
    mutualat demo [--out DIR]
    mutualat eval --model SOURCE ... --suite NAME|FILE --data NAME --out DIR [--eps E[,E...]]
    mutualat transfer --source SOURCE ... --target SOURCE ... --data NAME --out DIR
    mutualat report RUN_OR_SUMMARY ... --out DIR
    mutualat list models|methods|attacks|suites|datasets|sources [--json]
    mutualat configs [--out DIR]
    mutualat --version

A ``--config`` or plan that is not a file is looked up among the configs shipped in the
package (``--config cpu/fmnist-mat.yaml``; ``mutualat configs`` lists them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

import mutualat
from mutualat import experiments
from mutualat.bundled import copy_configs, packaged_configs, resolve_config
from mutualat.catalog import KINDS, catalog, format_entries
from mutualat.cli_eval import add_eval_commands
from mutualat.compare import Study, load_plan, run_study
from mutualat.compare.archive import archive_study
from mutualat.compare.progress import status_lines
from mutualat.compare.report import write_document
from mutualat.compare.runner import parse_until
from mutualat.config import dump_config, load_config
from mutualat.console import (Terminated, interrupts_once, setup_logging, silence_stdout,
                              stdout_reader_gone)
from mutualat.demo import run_demo
from mutualat.errors import ConfigError, MutualatError
from mutualat.methods import resolve_method_params
from mutualat.report.documents import shell_command
from mutualat.report.tables import results_table
from mutualat.train import Trainer
from mutualat.train.dry_run import dry_run
from mutualat.train.preflight import check_names
from mutualat.train.processes import launch

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def wrap(fn):
        COMMANDS[name] = fn
        return fn

    return wrap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mutualat", description="Mutual Adversarial Training: train, attack, evaluate.",
        epilog="'mutualat list models|methods|attacks|suites|datasets|sources' shows what each "
               "name accepts; 'mutualat COMMAND --help' the options of a command.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a method (AT, TRADES, MAT, ...) from a config file")
    train.add_argument("--config", type=Path,
                       help="experiment YAML file, or a shipped one (cpu/fmnist-mat.yaml; "
                            "mutualat configs lists them)")
    train.add_argument("--out", type=Path,
                       help="run folder (must be new unless --resume; not needed by --print-config)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key, e.g. --set optim.epochs=3 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--data-dir", help="data root (else $MUTUALAT_DATA, else the user cache folder)")
    train.add_argument("--device", help="cuda, cuda:1, mps, cpu (default: auto)")
    train.add_argument("--nproc", type=int, default=None, metavar="K",
                       help="train in K processes on this machine (torchrun --standalone); "
                            "distributed.mode chooses data- or cohort-parallel")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config (every default filled in) and exit")
    train.add_argument("--dry-run", action="store_true",
                       help="build data, models and method, run one training step, exit; "
                            "nothing is written to --out")

    demo = sub.add_parser("demo", help="AT vs MAT on the embedded Fashion-MNIST subset, on CPU")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the demo runs")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's)")
    demo.add_argument("--device", default="auto")

    alpha = sub.add_parser("alpha-search", help="choose MAT's alpha on the validation split, then train the final run")
    alpha.add_argument("--config", type=Path, required=True, help="a mat experiment file")
    alpha.add_argument("--alphas", required=True, help="comma-separated, e.g. 0.2,0.4,0.6,0.8")
    alpha.add_argument("--out", type=Path, required=True)
    alpha.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    alpha.add_argument("--no-final", action="store_true", help="stop after choosing alpha")
    _environment_args(alpha)

    scenario = sub.add_parser("scenario", help="one of the four knowledge-distillation scenarios (Fig. 2)")
    scenario.add_argument("name", help="rob-rob-online, rob-rob-offline, nat-rob-online or nat-rob-offline")
    scenario.add_argument("--config", type=Path, required=True, help="the base experiment file")
    scenario.add_argument("--out", type=Path, required=True)
    scenario.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _environment_args(scenario)

    listing = sub.add_parser("list", help="what can be named: models, methods, attacks, suites, "
                                          "datasets, sources, with their options and defaults")
    listing.add_argument("kind", choices=list(KINDS))
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    configs = sub.add_parser("configs", help="list the experiment files shipped in the package, "
                                             "or copy them out (--out)")
    configs.add_argument("--out", type=Path, help="copy every shipped config into this folder")
    configs.add_argument("--force", action="store_true", help="overwrite files already in --out")

    compare = sub.add_parser(
        "compare", help="a fair comparison of methods: per-variant hyperparameters chosen on "
                        "validation, seeds, AutoAttack, paired differences (configs/plans/)")
    compare.add_argument("plan", type=Path, help="a plan YAML file (see configs/plans/)")
    compare.add_argument("--out", type=Path, required=True,
                         help="study folder; the same command continues an interrupted study")
    compare.add_argument("--jobs", type=int, default=1, metavar="K",
                         help="run K trainings or evaluations at once, one thread each (default 1)")
    compare.add_argument("--threads", type=int, default=None,
                         help="torch threads per task (default: 1 with --jobs > 1)")
    compare.add_argument("--data-dir", help="data root (else $MUTUALAT_DATA, else the user cache folder)")
    compare.add_argument("--device", help="cuda, cuda:1, mps, cpu (default: auto)")
    compare.add_argument("--status", action="store_true",
                         help="say what runs now and what can start (with an estimate of "
                              "its CPU time), what waits, what each grid chose or has scored, "
                              "and what is finished and what it cost, then exit")
    compare.add_argument("--archive", type=Path, metavar="DEST",
                         help="copy the study's finished runs, evaluations and task records to "
                              "DEST without model weights (a stand-in with each file's sha256), "
                              "small enough for version control, then exit; --out DEST later "
                              "continues the study, training again only a run that an "
                              "evaluation still needs")
    compare.add_argument("--until", metavar="WHEN",
                         help="start only tasks expected to end by WHEN (90m, 2h30m, 03:00, "
                              "2026-12-03T03:00), by the times of finished tasks like them, "
                              "then stop; the same command continues")
    compare.add_argument("--write", type=Path, metavar="DOC",
                         help="also write the report as a section of this Markdown document "
                              "(between its markers; the curves go to figures/ beside it)")

    COMMANDS.update(add_eval_commands(sub))
    return parser


def _environment_args(p: argparse.ArgumentParser) -> None:
    """Where a run executes (not what it computes), as ``train`` takes them."""
    p.add_argument("--data-dir", help="data root (else $MUTUALAT_DATA, else the user cache folder)")
    p.add_argument("--device", help="cuda, cuda:1, mps, cpu (default: auto)")


def _environment_overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.device:
        overrides.append(f"device={args.device}")
    return overrides


def _version() -> str:
    return (f"mutualat {mutualat.__version__} (torch {torch.__version__}, "
            f"python {platform.python_version()})")


def _config_file(path: Path | None) -> Path | None:
    return None if path is None else resolve_config(path)


@command("train")
def _train(args: argparse.Namespace) -> int:
    if args.out is None and not args.print_config and not (args.dry_run and not args.resume):
        raise ConfigError("train needs --out DIR (the run folder)")
    if args.nproc is not None and args.nproc > 1 and not (args.print_config or args.dry_run):
        return launch(args.nproc, _train_argv(args))
    overrides = list(args.overrides) + _environment_overrides(args)
    config = _config_file(args.config)
    given = config is not None or overrides
    saved = args.out / "config.yaml" if args.out is not None else None
    if args.resume and config is None and saved is not None and saved.is_file():
        # `--resume --data-dir D` (or --device, --set progress=false): the saved config with
        # these on top; a key that is not an environment key is then refused by the trainer.
        cfg = load_config(saved, overrides)
    else:
        cfg = load_config(config, overrides) if given else None
    if cfg is None and not args.resume:
        raise MutualatError("train needs --config FILE (or --set key=value) for a new run")
    if cfg is None and (args.print_config or args.dry_run):
        raise ConfigError(f"{args.out} has no config.yaml to show or rehearse")
    if args.print_config:
        print(dump_config(resolve_method_params(cfg)), end="")
        return 0
    if args.dry_run:
        return _dry_run(cfg, args)
    trainer = Trainer(cfg, args.out, resume=args.resume)
    results = trainer.fit()
    if not trainer.is_main:  # one of several processes: rank 0 reports
        return 0
    if results:
        print(results_table({args.out.name: results}))
    print(f"run folder: {args.out}")
    return 0


def _train_argv(args: argparse.Namespace) -> list[str]:
    """The ``train`` arguments, without ``--nproc``, for each launched process."""
    argv = ["train", "--out", str(args.out)]
    if args.config is not None:
        argv += ["--config", str(args.config)]
    for assignment in args.overrides:
        argv += ["--set", assignment]
    if args.resume:
        argv.append("--resume")
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.device:
        argv += ["--device", args.device]
    return argv


def _dry_run(cfg, args: argparse.Namespace) -> int:
    built = dry_run(cfg, args.out, resume=args.resume)
    step = built["step"]
    print(f"data: {built['data']} {'x'.join(map(str, built['input_shape']))}, "
          f"{built['train_images']} train / {built['val_images']} validation / "
          f"{built['test_images']} test images, batch {built['batch_size']}, on {built['device']}")
    for role, member in built["members"].items():
        print(f"{role}: {member['model']}, {member['parameters']:,} parameters"
              + (" (frozen)" if member["frozen"] else ""))
    print(f"method {built['method']}: one step, loss {step['loss']:.4f} in {built['step_seconds']:.2f} s")
    where = f"; {args.out} was not touched" if args.out is not None else ""
    print(f"dry run passed{where}")
    return 0


@command("alpha-search")
def _alpha_search(args: argparse.Namespace) -> int:
    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    except ValueError:
        raise MutualatError(f"--alphas expects numbers separated by commas, got {args.alphas!r}") from None
    cfg = load_config(_config_file(args.config), args.overrides + _environment_overrides(args))
    experiments.alpha_search(cfg, alphas, args.out, final=not args.no_final)
    return 0


@command("scenario")
def _scenario(args: argparse.Namespace) -> int:
    cfg = load_config(_config_file(args.config), args.overrides + _environment_overrides(args))
    results = experiments.run_scenario(args.name, cfg, args.out)
    print(results_table({args.name: results}))
    return 0


@command("compare")
def _compare(args: argparse.Namespace) -> int:
    environment = {}
    if args.data_dir:  # load_plan makes it absolute: a task's spec whatever the spelling
        environment["data.data_dir"] = args.data_dir
    if args.device:
        environment["device"] = args.device
    plan = load_plan(_config_file(args.plan), environment)
    _check_plan_names(plan)
    if args.status:
        print("\n".join(status_lines(Study(plan, args.out))))
        return 0
    if args.archive:
        counts = archive_study(args.out, args.archive, plan.name)
        checks = f", {counts['checks']} scripts' checks" if counts["checks"] else ""
        print(f"archived {counts['runs']} runs, {counts['evaluations']} evaluations{checks} and "
              f"{counts['tasks']} task records of {args.out} in {args.archive} "
              f"({counts['written']} files written)")
        return 0
    until = parse_until(args.until) if args.until else None
    report = run_study(plan, args.out, jobs=args.jobs, threads=args.threads,
                       fork=os.environ.get("MUTUALAT_FORK_SERVER", "1") != "0", until=until)
    if report is None:
        print(f"stopped at --until {args.until} with tasks left (the log above names them); "
              "the same command continues" + ("; nothing written into " + str(args.write)
                                              if args.write else ""))
        return 0
    print(report.read_text())
    print(f"report: {report}")
    if args.write:
        write_document(Study(plan, args.out), args.write, shell_command(["mutualat"] + sys.argv[1:]))
        print(f"written into {args.write}")
    return 0


@command("list")
def _list(args: argparse.Namespace) -> int:
    entries = catalog(args.kind)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2, default=str))
    else:
        print(format_entries(entries))
    return 0


@command("configs")
def _configs(args: argparse.Namespace) -> int:
    if args.out is None:
        for name in packaged_configs():
            print(name)
        return 0
    written = copy_configs(args.out, force=args.force)
    print(f"copied {len(written)} configs to {args.out}")
    return 0


def _check_plan_names(plan) -> None:
    """Every variant's names (models, method, dataset, teachers) before any task reads data."""
    for variant in plan.variants:
        for setting in plan.settings(variant):
            cfg = plan.config(variant, setting, plan.grid_seed)
            if variant in plan.teachers:
                cfg.models[0].init = None  # the teacher's run, which may not exist yet
            try:
                check_names(resolve_method_params(cfg))
            except MutualatError as exc:
                raise type(exc)(f"plan variant {variant!r}: {exc}") from None


@command("demo")
def _demo(args: argparse.Namespace) -> int:
    results, plot = run_demo(args.out, epochs=args.epochs, device=args.device)
    print()
    print(results_table(results))
    print(f"\ntraining curves: {plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    with interrupts_once():  # until the end: a second signal cannot cut the message short
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a pipe's buffered output: a reader gone shows here, not at exit
        return status
    except MutualatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGINT or SIGTERM (Terminated)
        hint = "resume with --resume" if args.command == "train" else "rerun the same command to resume"
        terminated = isinstance(exc, Terminated)
        print(f"{'terminated' if terminated else 'interrupted'}; {hint}", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except BrokenPipeError:
        if not stdout_reader_gone():  # another pipe or socket broke: a fault, reported
            raise
        # The reader of stdout went away (`mutualat list attacks | head`): what it read is
        # all it wanted, so no traceback. Later writes, Python's own flush at exit included,
        # go nowhere; the status is the one a process killed by SIGPIPE gets.
        silence_stdout()
        return 141  # 128 + SIGPIPE (13)


if __name__ == "__main__":
    sys.exit(main())

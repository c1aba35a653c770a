"""A CLI that explains itself, plots and logs people expect, file modes, interop helpers.

``list`` (its summaries past an abbreviation; a reader of stdout that goes away, as with
``| head``), ``--version``, ``configs``, ``train --print-config`` and ``--dry-run``; names checked
before any data is read; ``eval`` of a ``py:`` model and an eps sweep; the training-curve
figure; TensorBoard and W&B receiving metrics.jsonl's scalars (stand-in modules); files
created 0644 under umask 022; ``Attack.bind`` and ``evaluate(preprocessing=...)``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from mutualat.cli import build_parser, main
from mutualat.config import dump_config, load_config

from conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


# --------------------------------------------------------------------------------------------
# list, --version, configs
# --------------------------------------------------------------------------------------------


def test_list_shows_every_registry_with_options_and_defaults(capsys) -> None:
    assert main(["list", "models"]) == 0
    text = capsys.readouterr().out
    assert "wrn  Wide ResNet" in text and "depth=34, widen_factor=10, dropout=0.0" in text
    assert "resnet18" in text and "lr: 0.01" in text

    assert main(["list", "methods", "--json"]) == 0
    methods = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert methods["mat"]["options"]["alpha"] == 0.6 and methods["trades"]["options"]["beta"] == 6.0
    assert methods["mat"]["summary"].startswith("Mutual Adversarial Training")

    assert main(["list", "attacks", "--json"]) == 0
    attacks = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert attacks["pgd"]["options"]["norm"] == "linf" and "steps" in attacks["pgd"]["options"]
    for kind, expected in (("suites", "table2"), ("datasets", "fashion-mnist-embedded"),
                           ("sources", "robustbench:")):
        assert main(["list", kind]) == 0
        assert expected in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["list", "nonsense"])


def test_a_summary_is_the_first_sentence_even_past_an_abbreviation(capsys) -> None:
    from mutualat.catalog import _first_line

    def documented():
        """Attacks of Liu et al. 2021 (Fig. 2, Eq. 3), E.g. PGD, cf. Madry; vs. FGSM. The second.

        Another paragraph."""

    assert _first_line(documented) == ("Attacks of Liu et al. 2021 (Fig. 2, Eq. 3), E.g. PGD, "
                                       "cf. Madry; vs. FGSM")
    assert main(["list", "datasets"]) == 0
    assert "MNIST (LeCun et al. 1998): 60,000 + 10,000 grey 28x28 digits" in capsys.readouterr().out


def _into_a_closed_pipe(command: list[str], socket: bool = False,
                        **kwargs) -> "subprocess.CompletedProcess[str]":
    """Run ``command`` with its stdout a pipe (or a socket) whose reader went away before the
    first write."""
    import socket as sockets

    if socket:
        ours, theirs = sockets.socketpair()
        ours.close()
        write = theirs.detach()
    else:
        read, write = os.pipe()
        os.close(read)
    try:
        return subprocess.run(command, stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=300, **kwargs)
    finally:
        os.close(write)


@pytest.mark.parametrize("unbuffered,socket", [(False, False), (True, False), (False, True)],
                         ids=["buffered", "unbuffered", "socket"])
def test_a_reader_that_stops_early_gets_no_traceback(unbuffered, socket) -> None:
    """`mutualat list attacks --json | head -c 20`: the reader is gone before the listing is
    written (at the end, from a pipe's buffer; or at once, unbuffered; or a socket's peer).
    The command exits as one killed by SIGPIPE would (141), quietly."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    done = _into_a_closed_pipe([sys.executable, "-m", "mutualat", "list", "attacks", "--json"],
                               socket=socket, env=env)
    assert done.returncode == 141
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_a_run_whose_log_reader_went_away_trains_to_the_end(tmp_path) -> None:
    """`mutualat train ... | head`: the log's reader leaves, the run goes on, quietly."""
    config = tmp_path / "tiny.yaml"
    config.write_text(dump_config(load_config(None, tiny_overrides(1))))
    command = [sys.executable, "-m", "mutualat", "train", "--config", str(config)]
    logged = subprocess.run(command + ["--out", str(tmp_path / "logged")], capture_output=True,
                            text=True, timeout=300)
    assert logged.returncode == 0 and "epoch 1" in logged.stdout, logged.stderr  # it logs
    done = _into_a_closed_pipe(command + ["--out", str(tmp_path / "run")])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "results.json").is_file()
    assert "Traceback" not in done.stderr and "Logging error" not in done.stderr, done.stderr


def test_a_broken_pipe_other_than_stdout_is_not_hidden() -> None:
    """Only a reader of stdout gone ends a command quietly: a broken worker pipe is a fault."""
    script = ("import sys\nfrom mutualat import cli\n"
              "def broken(args):\n    raise BrokenPipeError('a worker pipe')\n"
              "cli.COMMANDS['list'] = broken\nsys.exit(cli.main(['list', 'models']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode not in (0, 141)
    assert "BrokenPipeError: a worker pipe" in done.stderr


def test_a_log_record_that_meets_another_broken_pipe_is_reported_not_silenced(monkeypatch, capsys):
    """A BrokenPipeError while logging whose stdout is not a pipe without a reader is logging's
    ordinary error report; stdout is left as it is and nothing raises into the program."""
    import logging

    from mutualat.console import TqdmHandler

    class Broken:  # a stream with no file descriptor whose write fails
        def write(self, text):
            raise BrokenPipeError("another pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Broken())
    monkeypatch.setattr(logging, "raiseExceptions", True)
    handler = TqdmHandler()
    handler.emit(logging.LogRecord("mutualat", logging.INFO, __file__, 1, "hello", None, None))
    assert "BrokenPipeError: another pipe" in capsys.readouterr().err


def test_version(capsys) -> None:
    import mutualat

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"mutualat {mutualat.__version__}" in out and torch.__version__ in out


def test_shipped_configs_are_listed_copied_and_found_by_name(tmp_path, capsys) -> None:
    from mutualat.bundled import packaged_configs, resolve_config

    shipped = packaged_configs()
    repo = sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml"))
    assert shipped == repo and "plans/fmnist-smallcnn.yaml" in shipped
    assert main(["configs"]) == 0 and "cpu/fmnist-mat.yaml" in capsys.readouterr().out
    assert main(["configs", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "cpu" / "fmnist-mat.yaml").read_text() == \
        (REPO / "configs" / "cpu" / "fmnist-mat.yaml").read_text()
    assert main(["configs", "--out", str(tmp_path / "c")]) == 2  # never overwrites silently
    assert "--force" in capsys.readouterr().err
    assert resolve_config("cpu/fmnist-mat").read_text() == resolve_config("configs/cpu/fmnist-mat.yaml").read_text()


# --------------------------------------------------------------------------------------------
# train --print-config, --dry-run, alpha-search / scenario environment options
# --------------------------------------------------------------------------------------------


def test_print_config_is_the_resolved_config(capsys) -> None:
    assert main(["train", "--config", "cpu/fmnist-mat.yaml", "--print-config",
                 "--set", "optim.epochs=3", "--device", "cpu"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["epochs"] == 3 and printed["device"] == "cpu"
    assert printed["method"]["params"]["temperature"] == 1.0  # defaults filled in
    assert printed["data"]["val_subset"] == load_config(REPO / "configs/cpu/fmnist-mat.yaml").data.val_subset


def test_dry_run_takes_one_step_and_leaves_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    overrides = tiny_overrides(epochs=5) + ["models.1.name=tinycnn", "method.name=mat"]
    assert main(["train", "--dry-run", "--out", str(out)] + _sets(overrides)) == 0
    text = capsys.readouterr().out
    assert "h1: tinycnn" in text and "h2: tinycnn" in text and "method mat: one step, loss" in text
    assert "dry run passed" in text
    assert not out.exists()
    out.mkdir()
    (out / "something").write_text("x")
    assert main(["train", "--dry-run", "--out", str(out)] + _sets(overrides)) == 2
    assert "not empty" in capsys.readouterr().err


def test_alpha_search_and_scenario_take_data_dir_and_device(tmp_path, monkeypatch) -> None:
    import mutualat.experiments as experiments

    seen = {}
    monkeypatch.setattr(experiments, "alpha_search", lambda cfg, alphas, out, final: seen.update(alpha=cfg))
    monkeypatch.setattr(experiments, "run_scenario",
                        lambda name, cfg, out: seen.update(scenario=cfg) or {"models": {}})
    common = ["--config", "cpu/fmnist-mat.yaml", "--out", str(tmp_path / "o"),
              "--data-dir", str(tmp_path / "data"), "--device", "cpu"]
    assert main(["alpha-search", "--alphas", "0.3,0.6"] + common) == 0
    assert main(["scenario", "rob-rob-online"] + common) == 0
    for cfg in seen.values():
        assert cfg.data.data_dir == str(tmp_path / "data") and cfg.device == "cpu"


# --------------------------------------------------------------------------------------------
# Names are checked before any data is read
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_data(monkeypatch):
    """Any attempt to read a dataset fails the test: every loaded mutualat module that bound
    ``load_dataset`` at import (``from mutualat.data import load_dataset``) gets the refusal."""
    import sys

    import mutualat.cli  # noqa: F401  (imports every module a command can reach)
    import mutualat.data.datasets

    original = mutualat.data.datasets.load_dataset

    def refuse(*args, **kwargs):
        raise AssertionError("data was read before the names were checked")

    patched = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("mutualat") and getattr(module, "load_dataset", None) is original:
            monkeypatch.setattr(module, "load_dataset", refuse)
            patched += 1
    assert patched >= 3  # mutualat.data, its datasets module, and the trainer at least


@pytest.mark.parametrize("override, message", [
    ("models.0.name=resnet81", "models.0.name: unknown model 'resnet81'"),
    ("models.0.kwargs={depht: 3}", "models.0.kwargs: model 'tinycnn' has no option 'depht'"),
    ("data.name=cifar11", "data.name: unknown dataset 'cifar11'"),
    ("method.name=matt", "unknown method 'matt'"),
    ("models.0.init=torch:no/such/teacher.pt", "models.0.init: torch:no/such/teacher.pt: no file"),
    ("attack.norm=l3", "attack.norm must be one of"),
])
def test_train_names_are_checked_before_data_is_read(tmp_path, capsys, no_data, override, message) -> None:
    out = tmp_path / "run"
    assert main(["train", "--out", str(out)] + _sets(tiny_overrides() + [override])) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing left behind either


def test_eval_names_are_checked_before_data_is_read(tmp_path, capsys, no_data) -> None:
    from mutualat.cli_eval import main as eval_main

    base = ["--suite", "quick", "--out", str(tmp_path / "e"), "--no-progress"]
    assert eval_main(["eval", "--model", "torch:x.pt?arch=resnet18", "--data", "cifar11"] + base) == 2
    assert "unknown dataset 'cifar11'" in capsys.readouterr().err
    assert eval_main(["eval", "--model", "torch:missing.pt?arch=resnet18", "--data", "cifar10"] + base) == 2
    assert "no file" in capsys.readouterr().err
    assert eval_main(["eval", "--model", "torch:missing.pt?arch=resnet81", "--data", "cifar10"] + base) == 2
    assert eval_main(["eval", "--model", "x.safetensors", "--suite", "nope", "--data", "cifar10",
                      "--out", str(tmp_path / "e")]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# eval of a py: model, and the eps sweep
# --------------------------------------------------------------------------------------------

FACTORY = '''
import torch
from torch import nn

def build(width=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
'''


def test_eval_a_python_factory_model_and_an_eps_sweep(tmp_path, capsys) -> None:
    from PIL import Image

    from mutualat.cli_eval import main as eval_main

    (tmp_path / "zoo.py").write_text(FACTORY)
    model = f"net=py:{tmp_path / 'zoo.py'}:build?width=6&mean=0.3&std=0.3&channels=1&classes=10"
    common = ["--model", model, "--data", "fashion-mnist-embedded", "--n", "20", "--no-checks",
              "--no-progress", "--device", "cpu", "--batch-size", "20"]
    out = tmp_path / "eval"
    assert eval_main(["eval", "--suite", "quick", "--out", str(out)] + common) == 0
    summary = json.loads((out / "summary.json").read_text())
    info = summary["models"]["net"]["info"]
    assert info["source"]["kind"] == "py" and info["model"]["name"].startswith("py:")
    assert info["model"]["mean"] == [0.3] and 0.0 <= summary["models"]["net"]["clean"] <= 1.0
    assert "| net |" in capsys.readouterr().out  # the CLI prints the table

    sweep = tmp_path / "sweep"
    assert eval_main(["eval", "--suite", "quick", "--out", str(sweep), "--eps", "linf=0.02,8/255",
                      "--eps", "l2=0.25,0.5,1"] + common) == 0
    record = json.loads((sweep / "eps_sweep.json").read_text())
    assert record["linf"]["eps"] == pytest.approx([0.02, 8 / 255]) and len(record["l2"]["eps"]) == 3
    for threat in ("linf", "l2"):
        accs = record[threat]["accuracy"]["net"]
        assert all(0.0 <= a <= record[threat]["clean"]["net"] for a in accs)
        assert len(accs) == len(record[threat]["eps"])
    one = json.loads((sweep / record["l2"]["folders"][0] / "summary.json").read_text())
    assert list(one["suite"]["threats"]) == ["l2"] and one["suite"]["threats"]["l2"]["eps"] == 0.25
    with Image.open(sweep / "eps_sweep.png") as png:
        assert png.size[0] > png.size[1] > 100  # two panels side by side
    assert (sweep / "eps_sweep.md").read_text().count("| net |") == 2
    assert "robust accuracy against eps" in capsys.readouterr().out
    # Values, names and an ambiguous bare list are errors before anything runs.
    assert eval_main(["eval", "--suite", "quick", "--out", str(tmp_path / "x"), "--eps", "0.1,0.2"]
                     + common) == 2
    assert "say which with --eps THREAT=" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# A tiny training run: curves, TensorBoard/W&B stand-ins, file modes
# --------------------------------------------------------------------------------------------


class _FakeWriter:
    instances: list = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        _FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, step) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


class _FakeWandbRun:
    def __init__(self, **kwargs) -> None:
        self.kwargs, self.logged, self.config_seen, self.finished = kwargs, [], {}, False
        self.config = types.SimpleNamespace(update=lambda d, allow_val_change: self.config_seen.update(d))

    def log(self, values, step) -> None:
        self.logged.append((step, dict(values)))

    def finish(self) -> None:
        self.finished = True


@pytest.fixture
def stand_in_dashboards(monkeypatch):
    _FakeWriter.instances = []
    runs: list[_FakeWandbRun] = []
    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = _FakeWriter
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kwargs: runs.append(_FakeWandbRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", tb)
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setenv("MUTUALAT_WANDB", "my-project")
    return runs


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_tiny_run_logs_to_dashboards_plots_curves_and_writes_0644(tmp_path, stand_in_dashboards, umask_022) -> None:
    from mutualat.report.plots import curves, training_curves_figure
    from mutualat.train import Trainer
    from mutualat.train.logger import read_metrics, scalars

    run = tmp_path / "mat"
    cfg = load_config(None, tiny_overrides(epochs=2) + ["models.1.name=tinycnn", "method.name=mat",
                                                        "models.1.lr=0.02"])
    Trainer(cfg, run).fit()

    # TensorBoard and W&B got exactly the numbers of metrics.jsonl, but for the record of the
    # machine (its cores and threads are a setting, not a curve).
    records = read_metrics(run)
    assert [r["event"] for r in records].count("machine") == 1
    expected = {(k, v, r["global_step"]) for r in records if r["event"] != "machine"
                for k, v in scalars({key: val for key, val in r.items()
                                     if key not in ("event", "global_step")}, f"{r['event']}/")}
    writer = _FakeWriter.instances[0]
    assert writer.log_dir == str(run / "tensorboard") and writer.closed
    assert set(writer.scalars) == expected and len(writer.scalars) == len(expected)
    wandb_run = stand_in_dashboards[0]
    assert wandb_run.kwargs["project"] == "my-project" and wandb_run.kwargs["name"] == "mat"
    assert wandb_run.kwargs["id"] == json.loads((run / "run.json").read_text())["run_id"]
    assert {(k, v, step) for step, values in wandb_run.logged for k, v in values.items()} == expected
    assert wandb_run.config_seen["method"]["name"] == "mat" and wandb_run.finished
    assert any(k == "epoch/val_pgd/h1" for k, _, _ in expected)

    # The curves: every member's validation, training adversarial accuracy, loss and lr.
    data = curves(run)
    for key in ("val_clean", "val_pgd", "train_adv_acc", "loss", "lr"):
        assert set(data[key]) == {"h1", "h2"}, key
    assert [x for x, _ in data["val_pgd"]["h1"]] == [1, 2]
    assert data["lr"]["h2"][0][1] == pytest.approx(0.02) and data["lr"]["h1"][0][1] == pytest.approx(0.05)
    assert data["loss"]["h1"][-1][0] == pytest.approx(2.0)  # the last step ends epoch 2
    fig = training_curves_figure({"mat": run})
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert ax.get_xlabel() == "epoch"
    assert len(fig.axes) == 4

    # Every file of the run, and of an evaluation, is 0644 under umask 022.
    files = [p for p in run.rglob("*") if p.is_file() and p.name != ".lock"]
    assert {"config.yaml", "run.json", "checkpoint.pt", "metrics.jsonl", "results.json",
            "h1.safetensors"} <= {p.name for p in files}
    assert {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}

    from mutualat.evaluation import evaluate, load_suite
    from mutualat.models import load_model

    model = load_model(run / "models" / "h1.safetensors")
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    summary = evaluate({"h1": model}, load_suite("quick"), x, y, tmp_path / "eval", checks=False,
                       progress=False, device="cpu")
    evals = [p for p in (tmp_path / "eval").rglob("*") if p.is_file()]
    assert {"manifest.json", "summary.json", "correct.npz"} <= {p.name for p in evals}
    assert all(_mode(p) == 0o644 for p in evals)
    # ... and the evaluation's numbers reached the dashboards too.
    eval_writer = _FakeWriter.instances[-1]
    assert eval_writer.log_dir == str(tmp_path / "eval" / "tensorboard")
    tags = {tag: value for tag, value, _ in eval_writer.scalars}
    assert tags["eval/h1/r_worst"] == summary["models"]["h1"]["r_worst"]
    assert tags["eval/h1/attacks/pgd-10"] == summary["models"]["h1"]["attacks"]["pgd-10"]["accuracy"]
    assert stand_in_dashboards[-1].kwargs["job_type"] == "eval"


def test_atomic_writes_honour_the_umask(tmp_path) -> None:
    from mutualat.files import atomic_write_bytes

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        os.umask(0o022)
        atomic_write_bytes(tmp_path / "b.json", b"{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o640 and _mode(tmp_path / "b.json") == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def test_wandb_requested_but_missing_warns_and_goes_on(tmp_path, monkeypatch, caplog) -> None:
    from mutualat.train.logger import MetricsLog

    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setenv("MUTUALAT_WANDB", "1")
    log = MetricsLog(tmp_path, tensorboard=False)
    log.write("step", 1, loss=0.5)
    log.close()
    assert "wandb is not installed" in caplog.text
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 0.5


# --------------------------------------------------------------------------------------------
# Interop: Attack.bind, evaluate(preprocessing=...)
# --------------------------------------------------------------------------------------------


def _net(channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10)).eval()


def test_attack_bind_is_the_torchattacks_call_shape() -> None:
    from mutualat.attacks import PGD, BoundAttack

    model, x, y = _net(), torch.rand(6, 1, 12, 12), torch.arange(6)
    attack = PGD(norm="linf", eps=0.1, steps=3)
    bound = attack.bind(model)
    assert isinstance(bound, BoundAttack) and bound.model is model and bound.attack is attack
    torch.manual_seed(1)
    via_bind = bound(x, y)
    torch.manual_seed(1)
    torch.testing.assert_close(via_bind, attack(model, x, y))
    assert (via_bind - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(via_bind, x)


def test_evaluate_wraps_models_that_expect_normalized_input(tmp_path) -> None:
    from mutualat.evaluation import evaluate, load_suite
    from mutualat.models import Preprocessed

    model, mean, std = _net(), [0.7], [0.05]
    x, y = torch.rand(16, 1, 12, 12), torch.arange(16) % 10
    suite = load_suite("quick")
    kwargs = dict(checks=False, progress=False, device="cpu")
    given = evaluate({"m": model}, suite, x, y, tmp_path / "a", preprocessing=(mean, std), **kwargs)
    wrapped = evaluate({"m": Preprocessed(model, mean, std)}, suite, x, y, tmp_path / "b", **kwargs)
    for key in ("clean", "r_worst", "threats"):
        assert given["models"]["m"][key] == wrapped["models"]["m"][key]
    with torch.no_grad():
        with_norm = model((x - 0.7) / 0.05).argmax(1)
        without = model(x).argmax(1)
    assert not torch.equal(with_norm, without)  # so the wrapping is what made them agree
    assert given["models"]["m"]["clean"] == pytest.approx((with_norm == y).float().mean().item())


def test_transfer_between_foreign_models(tmp_path, capsys) -> None:
    from mutualat.cli_eval import main as eval_main

    (tmp_path / "zoo.py").write_text(FACTORY)
    a = f"a=py:{tmp_path / 'zoo.py'}:build?width=4&channels=1"
    b = f"b=py:{tmp_path / 'zoo.py'}:build?width=6&channels=1"
    common = ["--data", "fashion-mnist-embedded", "--n", "10", "--no-progress", "--device", "cpu",
              "--steps", "2", "--out", str(tmp_path / "t")]
    # A foreign source records no training threat: the radius must be given.
    assert eval_main(["transfer", "--source", a, "--target", b] + common) == 2
    assert "records no linf training eps; pass --eps" in capsys.readouterr().err
    assert eval_main(["transfer", "--source", a, "--target", b, "--target", a, "--eps", "0.1"] + common) == 0
    result = json.loads((tmp_path / "t" / "transfer.json").read_text())
    assert set(result["sources"]) == {"a"} and set(result["targets"]) == {"a", "b"}


def test_compare_checks_every_variants_names_first(tmp_path, capsys, no_data) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "name": "typo", "base": str(REPO / "configs/plans/fmnist-smallcnn-base.yaml"),
        "variants": {"at": {"method.name": "at"}, "mat": {"method.name": "mat", "models": ["smallcnn", "smalcnn"]}},
        "grid": {"lr": [0.05]}, "seeds": [0], "baseline": "at", "suite": "quick",
    }))
    assert main(["compare", str(plan), "--out", str(tmp_path / "study")]) == 2
    assert "plan variant 'mat': models.1.name: unknown model 'smalcnn'" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_every_trained_members_learning_rate_is_recorded_wherever_it_runs() -> None:
    from mutualat.config import ModelConfig
    from mutualat.train.optim import member_learning_rates

    models = [ModelConfig(name="tinycnn", lr=0.1), ModelConfig(name="tinycnn", lr=0.02),
              ModelConfig(name="tinycnn", frozen=True)]
    roles = ["h1", "h2", "teacher"]
    # Both held here: their optimizers' rates as they are.
    assert member_learning_rates(models, roles, {0: 0.01, 1: 0.0021}) == {"lr/h1": 0.01, "lr/h2": 0.0021}
    # h2 held by another process: its base rate on the same schedule (0.1 -> 0.01 is x0.1).
    lrs = member_learning_rates(models, roles, {0: 0.01})
    assert set(lrs) == {"lr/h1", "lr/h2"} and lrs["lr/h2"] == pytest.approx(0.002)
    assert member_learning_rates(models, roles, {}) == {}


def test_compare_data_dir_gives_the_same_tasks_however_it_is_spelled(tmp_path, monkeypatch) -> None:
    """A relative --data-dir is made absolute (by load_plan): the same study's tasks, hence their specs and
    their records' digests, whether it was typed relative to one folder or absolute (else a
    scheduler restarted with the other spelling would count its interrupted tasks afresh)."""
    import mutualat.cli as cli
    from mutualat.compare.records import spec_digest

    seen = []
    monkeypatch.setattr(cli, "status_lines", lambda study: seen.append(study.tasks()[0]) or [])
    (tmp_path / "data").mkdir()
    (tmp_path / "work").mkdir()
    plan, out = str(REPO / "configs/plans/fmnist-smallcnn.yaml"), str(tmp_path / "study")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path))
    for spelling in (str(tmp_path / "data"), "../data", "../data/", "../work/../data", "~/data"):
        assert main(["compare", plan, "--out", out, "--data-dir", spelling, "--status"]) == 0
    first = [(t.key, spec_digest(t.spec)) for t in seen[0]]
    assert first and all([(t.key, spec_digest(t.spec)) for t in ready] == first for ready in seen[1:])
    train = next(t for t in seen[1] if t.kind == "train")
    assert train.spec["config"]["data"]["data_dir"] == str(tmp_path / "data")
    # load_plan does it, so a Python caller's relative data folder gives the same tasks too
    from mutualat.compare import Study, load_plan

    study = Study(load_plan(plan, {"data.data_dir": "../data/"}), out)
    assert [(t.key, spec_digest(t.spec)) for t in study.tasks()[0]] == first

"""Typed run configuration: dataclasses, loaded from YAML, overridden with ``key=value``.

A config file holds a subset of the keys below; everything else takes its documented
default. ``--set optim.epochs=3`` or ``--set models.0.name=resnet18`` overrides one key. An
unknown key or a value of the wrong type is a :class:`ConfigError` naming the key. The fully
resolved config is written as ``config.yaml`` into every run folder.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mutualat.attacks.threat import Threat
from mutualat.errors import ConfigError, FieldError


@dataclass
class DataConfig:
    name: str = "fashion-mnist-embedded"  # a registered dataset (mutualat.data.DATASETS)
    path: str | None = None  # an image folder or .tar.gz (dataset "image-folder")
    data_dir: str | None = None  # root for downloads/caches; else $MUTUALAT_DATA, else user cache
    val_fraction: float = 0.2  # held out of train for model selection (the paper holds out 20%)
    train_subset: int | None = None  # cap on training images (CPU-scale runs); None = all
    test_subset: int | None = None  # cap on test images for the final evaluation; None = all
    val_subset: int | None = 1000  # cap on validation images evaluated each epoch
    batch_size: int = 128
    augment: str | None = None  # None = the dataset's own ("crop_flip" CIFAR-like, "none" MNIST-like)


@dataclass
class ModelConfig:
    name: str = "tinycnn"  # a registered architecture (mutualat.models.MODELS)
    kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {depth: 34, widen_factor: 10}
    lr: float | None = None  # None = the architecture's default (docs/METHOD.md §4)
    weight_decay: float | None = None
    init: str | None = None  # start from a saved model file instead of random weights
    frozen: bool = False  # a fixed teacher/peer: no optimizer, always in eval mode
    seed: int | None = None  # initialization seed; None = RunConfig.seed + the model's index


@dataclass
class AttackConfig:
    """The training attack (PGD): a :class:`~mutualat.attacks.threat.Threat` and how batch-norm
    runs while it attacks; its loss is chosen by the method."""

    norm: str = "linf"
    eps: float = 0.1
    steps: int = 10
    step_size: float | None = None  # None = travel 2.5 eps over the steps (l1: per coordinate, see PGD)
    random_start: bool = True
    bn_mode: str = "eval"  # batch-norm during attack generation (docs/METHOD.md §6)

    @property
    def threat(self) -> Threat:
        """The threat these fields describe (validated when it is made)."""
        try:
            return Threat(self.norm, self.eps, self.steps, self.step_size, self.random_start)
        except FieldError as exc:
            raise ConfigError(f"attack.{exc.field} {exc.reason}") from None


@dataclass
class MethodConfig:
    name: str = "at"  # a registered method (mutualat.methods.METHODS)
    params: dict[str, Any] = field(default_factory=dict)  # checked against the method's Params


@dataclass
class OptimConfig:
    epochs: int = 120
    momentum: float = 0.9
    nesterov: bool = False
    # The paper divides the learning rate by 10 at epochs 75, 90 and 100 of 120; the same
    # fractions of any other epoch count.
    milestones: list[float] = field(default_factory=lambda: [75 / 120, 90 / 120, 100 / 120])
    gamma: float = 0.1
    grad_clip: float | None = None


@dataclass
class EvalConfig:
    pgd_steps: int = 20  # validation attack each epoch (PGD-20, cross-entropy, no random start)
    pgd_step_size: float | None = None  # None = 2.5 * eps / steps
    test_pgd_steps: int = 20  # final test evaluation of the last models
    test: bool = True  # evaluate the last models on the test split at the end
    # The members validated each epoch, by role (None: every trained member). A cohort judged
    # by some members only (MAT-MP's generalist) can skip the others' validation (on the CPU
    # Table 5 plan, validating all four was about half of a MAT-MP run); they then get no
    # per-epoch numbers and no .best model. A comparison plan requires select_on within it.
    # Validation at l1 draws its step's coordinate counts from the run's random stream, so
    # with an l1 threat a run validating fewer members trains differently (by chance, not in
    # kind): choose it before a study starts, never to match runs already trained.
    val_roles: list[str] | None = None


@dataclass
class DistributedConfig:
    """Training on several processes (``torchrun`` or ``mutualat train --nproc K``); a run in
    one process ignores it. See :mod:`mutualat.train.placement`."""

    # "data": every process holds every member and trains on its shard of each batch (any
    # method); "cohort": the members are split over the processes, which exchange their
    # clean soft labels every step (methods whose members share only those: mat, mat-mp).
    mode: str = "data"
    backend: str = "auto"  # "auto" = nccl on CUDA, gloo otherwise; or "nccl", "gloo"
    # A collective that waits longer than this (another process died or hangs) stops the
    # run with an error instead of hanging; it must exceed the longest gap between two
    # collectives (the per-epoch validation of the slowest process).
    timeout_s: float = 1800.0
    # Data mode: SyncBatchNorm (batch statistics of the global batch, CUDA only). Default:
    # each process normalizes its shard with the shard's statistics, as DDP does.
    sync_bn: bool = False


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"  # "auto" picks cuda, mps, cpu
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    # bf16 autocast of the training step and the channels_last memory format: "auto" =
    # on the CPU whichever a one-off timed trial finds fastest (recorded in metrics.jsonl),
    # on CUDA both, else neither (mutualat.train.precision); or force "bf16"/"off", "on"/"off".
    # Evaluation (validation, final test, mutualat eval) always runs in fp32.
    amp: str = "auto"
    channels_last: str = "auto"
    # Kept so that configs written before it was removed still load: a cohort's members
    # always run one after the other ("auto" and "loop" mean that). The batched (vmap)
    # cohort was 1.27x slower than the loop on the CPU and never measured on a GPU.
    cohort_batch: str = "auto"
    # torch.compile: "none"; "model" compiles every member in place (its forward and
    # backward, so also the attack's passes); "all" also fuses PGD's l-inf update step.
    # None by default: on this project's CPU, compile made the backward 2x slower
    # (docs/PERFORMANCE.md); try it on a GPU.
    compile: str = "none"
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0 = epoch ends)
    progress: bool = True  # tqdm bar
    data: DataConfig = field(default_factory=DataConfig)
    models: list[ModelConfig] = field(default_factory=lambda: [ModelConfig()])
    method: MethodConfig = field(default_factory=MethodConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> "RunConfig":
        _check(self.optim.epochs >= 1, "optim.epochs must be >= 1")
        _check(self.data.batch_size >= 1, "data.batch_size must be >= 1")
        _check(0.0 <= self.data.val_fraction < 1.0, "data.val_fraction must be in [0, 1)")
        for key in ("train_subset", "val_subset", "test_subset"):
            n = getattr(self.data, key)
            _check(n is None or n >= 1, f"data.{key} must be a positive integer or null, got {n}")
        self.attack.threat  # noqa: B018 (made to be validated: norm, eps, steps, step size)
        _check(len(self.models) >= 1, "models must list at least one model")
        _check(self.eval.pgd_steps >= 1 and self.eval.test_pgd_steps >= 1,
               "eval.pgd_steps and eval.test_pgd_steps must be >= 1")
        _check(self.eval.val_roles is None or len(self.eval.val_roles) > 0,
               "eval.val_roles must name at least one member's role, or be null (all)")
        _check(self.amp in ("auto", "bf16", "off"), f"amp must be auto, bf16 or off, got {self.amp!r}")
        _check(
            self.channels_last in ("auto", "on", "off"),
            f"channels_last must be auto, on or off, got {self.channels_last!r}",
        )
        _check(self.cohort_batch in ("auto", "loop"),
               f"cohort_batch={self.cohort_batch!r}: the batched cohort was removed (it was "
               "slower than running the members one after the other); use auto or loop")
        _check(self.compile in ("none", "model", "all"),
               f"compile must be none, model or all, got {self.compile!r}")
        _check(all(0 < m < 1 for m in self.optim.milestones), "optim.milestones are fractions in (0, 1)")
        o = self.optim
        _check(0.0 <= o.momentum < 1.0, f"optim.momentum must be in [0, 1), got {o.momentum}")
        _check(0.0 < o.gamma <= 1.0, f"optim.gamma (the decay factor) must be in (0, 1], got {o.gamma}")
        _check(o.grad_clip is None or (math.isfinite(o.grad_clip) and o.grad_clip > 0),
               f"optim.grad_clip must be a positive number or null, got {o.grad_clip}")
        for i, m in enumerate(self.models):
            _check(m.lr is None or (math.isfinite(m.lr) and m.lr > 0),
                   f"models.{i}.lr must be a positive number, got {m.lr}")
            _check(m.weight_decay is None or (math.isfinite(m.weight_decay) and m.weight_decay >= 0),
                   f"models.{i}.weight_decay must be >= 0, got {m.weight_decay}")
        d = self.distributed
        _check(d.mode in ("data", "cohort"), f"distributed.mode must be data or cohort, got {d.mode!r}")
        _check(d.backend in ("auto", "nccl", "gloo"),
               f"distributed.backend must be auto, nccl or gloo, got {d.backend!r}")
        _check(math.isfinite(d.timeout_s) and d.timeout_s > 0, "distributed.timeout_s must be > 0")
        return self


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# --- dict <-> dataclass ---------------------------------------------------------------


def to_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}; known keys here: {', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, path)
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in kwargs:
            raise ConfigError(f"{where + '.' if where else ''}{f.name} is required")
    try:
        return cls(**kwargs)
    except FieldError as exc:  # the object names its field; the path is known only here
        raise ConfigError(f"{where + '.' if where else ''}{exc.field} {exc.reason}") from None


# A decimal number as YAML 1.2 and Python write it, exponent included ("1e-1", "-2.5E+3").
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            # read_yaml reads "1e-1" as a number; data built elsewhere may hold it as text.
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            # YAML 1.1 reads on/off (and yes/no) as booleans; the switches that take
            # "on"/"off" (channels_last, amp=off) get back the word the user wrote.
            return "on" if value else "off"
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported type {tp}")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that scientific notation is a float wherever it is
    written: YAML 1.1 needs a dot and a signed exponent ("1.0e-1"), and reads "1e-1" or
    "5E4" as strings, which no float field, suite, plan or method parameter would accept."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """Parse YAML text as every mutualat file is read (config, suite, plan, ``--set`` values):
    safe, with numbers in scientific notation read as numbers."""
    return yaml.load(text, Loader=_Loader)


def read_yaml_file(path: Path, what: str) -> dict:
    """The mapping a YAML file holds ({} for an empty one), with a clear error naming ``what``
    it is ("config file", "plan file") when it is missing, not YAML, or not a mapping."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        loaded = read_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return loaded or {}


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to the plain config mapping ``data``."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    set_value(data, key.strip(), read_yaml(raw) if raw.strip() else None)


def set_value(data: dict, key: str, value: Any) -> None:
    """Set the dotted ``key`` (``models.0.lr``) of the plain config mapping ``data`` to
    ``value``, creating the mappings and list items on the way."""
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = _list_item(node, part, key)
            continue
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        index = int(last) if last.isdigit() else -1
        if not 0 <= index <= len(node):
            raise ConfigError(f"--set {key}: index {last} out of range for a list of {len(node)}")
        if index == len(node):
            node.append(value)
        else:
            node[index] = value
    else:
        node[last] = value


def _list_item(node: list, part: str, key: str) -> Any:
    if not part.isdigit():
        raise ConfigError(f"--set {key}: {part!r} should be a list index")
    index = int(part)
    if index == len(node):
        node.append({})
    if index >= len(node):
        raise ConfigError(f"--set {key}: index {index} out of range for a list of {len(node)}")
    return node[index]


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML experiment file (or start from defaults), apply ``--set`` overrides."""
    data: dict = {}
    if path is not None:
        data = read_yaml_file(Path(path), "config file")
    if overrides:
        # Overrides address the resolved structure (e.g. models.0.lr even if the file omits
        # models), so resolve defaults first.
        data = to_dict(from_dict(RunConfig, data))
        for assignment in overrides:
            apply_override(data, assignment)
    return config_from_data(data)


def config_from_data(data: dict) -> RunConfig:
    """A validated :class:`RunConfig` from a plain mapping (as a config file holds it)."""
    # A model entry given as a bare name is shorthand for {name: ...}.
    if isinstance(data.get("models"), list):
        data = {**data, "models": [{"name": m} if isinstance(m, str) else m for m in data["models"]]}
    return from_dict(RunConfig, data).validate()


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)

"""The experiment files shipped inside the package: ``configs/`` (run configs and comparison
plans) reach users of the wheel, not only of a clone.

In a clone ``src/mutualat/configs`` is a link to the top-level ``configs/`` folder, so there
is one copy; the wheel holds the files themselves (package data). ``mutualat configs``
lists them or copies them out, and every ``--config``/plan argument that is not an existing
file is looked up here (``--config cpu/fmnist-mat.yaml``).
"""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

from mutualat.errors import ConfigError


def _root():
    return importlib.resources.files("mutualat") / "configs"


def packaged_configs() -> list[str]:
    """Every shipped YAML file, as a path relative to ``configs/`` (``cpu/fmnist-mat.yaml``)."""
    found: list[str] = []

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith((".yaml", ".yml")):
                found.append(prefix + child.name)

    root = _root()
    if root.is_dir():
        walk(root, "")
    return sorted(found)


def resolve_config(path: str | Path) -> Path:
    """``path`` itself if it is a file; else the shipped config of that name (with or without
    a leading ``configs/`` and the ``.yaml``); else ``path`` (whose absence the loader reports)."""
    path = Path(path)
    if path.is_file():
        return path
    name = path.as_posix().removeprefix("configs/")
    known = packaged_configs()
    for candidate in (name, f"{name}.yaml"):
        if candidate in known:
            with importlib.resources.as_file(_root() / candidate) as real:
                return Path(real)
    return path


def copy_configs(out: str | Path, force: bool = False) -> list[Path]:
    """Copy every shipped config into ``out`` (keeping ``cpu/``, ``paper/``, ``plans/``);
    an existing file is an error unless ``force``. Returns the files written."""
    out = Path(out)
    names = packaged_configs()
    if not names:
        raise ConfigError("this installation ships no configs (a broken install?)")
    clash = [n for n in names if (out / n).exists()]
    if clash and not force:
        raise ConfigError(f"{out} already holds {len(clash)} of the configs ({clash[0]}, ...); "
                          "pass --force to overwrite them or choose another --out")
    written = []
    for name in names:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with importlib.resources.as_file(_root() / name) as source:
            shutil.copyfile(source, target)
        written.append(target)
    return written

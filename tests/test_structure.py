"""The package's structure, checked by scripts/check_structure.py: no import cycles, no file
of src/mutualat over 400 lines, and project modules imported at the top of a module, except
those listed in ALLOWED_DEFERRED with their reason.

The checker reads the source with ``ast``; the last test builds a small package with one of
each fault and shows that the checker finds them, so the first tests can fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, script_module

MAX_LINES = 400

#: Function-level imports of project modules that stay deferred, each with the reason:
#: {("src/mutualat/FILE.py", "mutualat.MODULE"): "why it cannot be imported at the top"}.
#: None today: every project import is at the top of its module. Third-party packages that
#: are optional or slow to import (wandb, tensorboard, matplotlib's pyplot) are still imported
#: where they are used; the checker does not report those. Any other deferred project import
#: fails test_deferred_imports_are_allowed, and so does an entry here no longer needed.
ALLOWED_DEFERRED: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def report() -> dict:
    """The checker's --json report on src/mutualat, from the command line as a developer runs it."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_structure.py"), "--json",
         "--max-lines", str(MAX_LINES)],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def test_the_package_has_no_import_cycles(report) -> None:
    assert report["cycles"] == [], "\n".join(report["chains"])


def test_no_file_of_the_package_is_over_400_lines(report) -> None:
    assert report["long"] == {}


def test_deferred_imports_are_allowed(report) -> None:
    found = {(path, module) for path, imports in report["deferred"].items()
             for _, module in imports}
    unexplained = sorted(found - set(ALLOWED_DEFERRED))
    assert not unexplained, ("function-level imports of project modules (import them at the top, "
                             f"or list them in ALLOWED_DEFERRED with the reason): {unexplained}")
    stale = sorted(set(ALLOWED_DEFERRED) - found)
    assert not stale, f"ALLOWED_DEFERRED lists imports that are no longer deferred: {stale}"


def test_the_checker_finds_a_cycle_a_deferred_import_and_a_long_file(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub.c import C\n")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("import pkg.a\n")
    (package / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import a\n"  # never runs: neither a cycle nor deferred
        "class C:\n    pass\n"
        "def later():\n    from ..d import D\n    import json\n    return D, json\n")
    (package / "d.py").write_text("D = 1\n" * 12)

    check = script_module("check_structure")
    report = check.check(package, max_lines=10)

    cycles = [[Path(p).name for p in component] for component in report["cycles"]]
    assert cycles == [["a.py", "b.py"]]
    assert report["chains"] == ["pkg.a -> pkg.b -> pkg.a"]
    deferred = {Path(p).name: found for p, found in report["deferred"].items()}
    assert deferred == {"c.py": [[7, "pkg.d"]]}  # json is not a project module
    assert {Path(p).name: n for p, n in report["long"].items()} == {"d.py": 12}

    # The command line says the same and fails; a tidy package passes.
    assert check.main(["--src", str(package), "--max-lines", "10"]) == 1
    for name in ("a.py", "b.py", "d.py"):
        (package / name).unlink()
    (package / "sub" / "c.py").write_text("class C:\n    pass\n")
    assert check.main(["--src", str(package), "--max-lines", "10"]) == 0

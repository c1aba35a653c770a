"""scripts/check_structure.py finds import cycles, function-level imports of project modules
and long files: a small package with one of each fault."""

from __future__ import annotations

from pathlib import Path

from conftest import script_module


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

    assert [[Path(p).name for p in component] for component in report["cycles"]] == [["a.py", "b.py"]]
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

"""docs/EXTENDING.md's worked example of a new cohort method runs as written: its method
block registers the method, and its test block passes against the trainer."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "EXTENDING.md"


def test_the_documented_cohort_method_works_as_written(tmp_path):
    from mutualat.methods import METHODS

    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 2, "the page holds the method and its test"
    namespace: dict = {}
    try:
        exec(compile(blocks[0], "EXTENDING.md (method)", "exec"), namespace)
        assert "mat-mean-peer" in METHODS
        exec(compile(blocks[1], "EXTENDING.md (test)", "exec"), namespace)
        namespace["test_mean_peer_mat"](tmp_path)
    finally:  # the registry is the process's: leave it as the package made it
        METHODS._entries.pop("mat-mean-peer", None)

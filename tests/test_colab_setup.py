"""The repository URL is written in one place (_config.yml's `repository: url:`); every copy equals it.

The Colab buttons are made from _config.yml. Each chapter's set-up cell must clone the book on a fresh
Colab runtime before any file of it exists, so it repeats the URL literally; this test finds every
copy in the tracked files and says which to change when the repository moves.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import colab_setup  # noqa: E402

# Links to other projects' repositories (none yet): add "owner/name" here when a page cites one.
OTHER_REPOSITORIES: set = set()
REPO_LINK = re.compile(r"(?:github\.com|colab\.research\.google\.com/github)/([\w.-]+)/([\w.-]+?)(?:\.git)?(?![\w.-])")


def _tracked_text_files() -> list:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files = []
    for name in listed:
        path = ROOT / name
        if name == "tests/test_colab_setup.py":
            continue  # this file's own examples name made-up repositories
        if path.is_file() and path.suffix not in {".png", ".jpg", ".gif", ".ico", ".woff", ".woff2", ".gguf", ".pdf"}:
            try:
                files.append((name, path.read_text(encoding="utf-8")))
            except UnicodeDecodeError:
                pass
    return files


def test_repository_url_is_read_from_the_book_config():
    url = colab_setup.repository_url(str(ROOT))
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url


def test_repository_url_reader_finds_the_repository_block_only(tmp_path):
    (tmp_path / "_config.yml").write_text(
        "title: x\nlaunch_buttons:\n  url: https://example.org/not-this\nrepository:\n  # where the book lives\n"
        "  path_to_book: \"\"\n  url: https://github.com/someone/a-book/\n  branch: main\n")
    assert colab_setup.repository_url(str(tmp_path)) == "https://github.com/someone/a-book"
    (tmp_path / "_config.yml").write_text("title: x\nrepository:\n  branch: main\nhtml:\n  url: https://x.org\n")
    with pytest.raises(ValueError, match="repository: url:"):
        colab_setup.repository_url(str(tmp_path))


def test_every_copy_of_the_repository_url_equals_the_config():
    url = colab_setup.repository_url(str(ROOT))
    owner, name = url.rsplit("/", 2)[-2:]
    wrong, copies = [], 0
    for path, text in _tracked_text_files():
        for number, line in enumerate(text.splitlines(), 1):
            for match in REPO_LINK.finditer(line):
                found = f"{match.group(1)}/{match.group(2).rstrip('.')}"  # a sentence's full stop is not the name's
                if found in OTHER_REPOSITORIES:
                    continue
                copies += 1
                if found != f"{owner}/{name}":
                    wrong.append(f"{path}:{number}: {found}")
    assert copies >= 10, "the chapters' set-up cells should clone the book from the repository URL"
    assert not wrong, (
        f"_config.yml names the repository {url}, but these lines name another (a link to some other project? add it "
        f"to OTHER_REPOSITORIES; else change each, e.g. git grep -l OLD/NAME | xargs sed -i 's#OLD/NAME#{owner}/{name}#g', "
        f"then regenerate the notebooks with scripts/sync_notebooks.sh):\n" + "\n".join(wrong))


def test_each_chapter_set_up_cell_clones_the_configured_repository():
    url = colab_setup.repository_url(str(ROOT))
    chapters = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))
    assert chapters
    for chapter in chapters:
        text = chapter.read_text()
        assert f'"git", "clone", "--depth", "1", "{url}", BOOK' in text, f"{chapter.name}: the set-up cell must clone {url}"
        assert f'BOOK = "/content/{url.rsplit("/", 1)[-1]}"' in text, f"{chapter.name}: clone into /content/<repository name>"

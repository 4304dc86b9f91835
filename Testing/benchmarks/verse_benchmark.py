"""The benchmark command on the shared graded VerSe'19 subjects: predicted grade beside LOSO score thresholds.

    .venv/bin/python Testing/benchmarks/verse_benchmark.py [--data ../shared/data] [--out out/benchmark]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))

from VertebralFractureLib import cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(REPOSITORY / "out" / "benchmark"))
    args = parser.parse_args(argv)
    verse = Path(args.data) / "verse19"
    return cli.main(["benchmark", "--masks", str(verse), "--grades", str(verse / "genant_grades.csv"),
                     "--out", args.out, "--cross-validate", "--quiet"])


if __name__ == "__main__":
    sys.exit(main())

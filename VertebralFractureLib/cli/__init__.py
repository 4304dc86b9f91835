"""The console script ``vertebral-fracture`` (= ``python -m VertebralFractureLib``): one module per command family
(``measure``, ``segment`` (analyze, evaluate), ``screen`` (report), ``deep`` (models, infer, train), ``batch``,
``benchmark``), the shared options in ``common``, the parser and the entry point in ``entry``."""

import os

# One OpenBLAS thread unless the user sets another number (read when numpy loads OpenBLAS, so before any import of
# numpy). The products the measurement computes are tiny (points N x 3 by a 3 x 3 frame): a second thread saves
# nothing, and while another process keeps the other cores busy it waits for its turn: measured on 2 cores, one such
# product took 56 ms with two threads against 3 ms with one, and ``measure`` on a 53 M-voxel map 2.7 s against 1.9 s.
# Deep backends (torch) keep their own threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from VertebralFractureLib.cli.entry import main  # noqa: E402

__all__ = ["main"]

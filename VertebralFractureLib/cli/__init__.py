"""The console script ``vertebral-fracture`` (= ``python -m VertebralFractureLib``): one module per command family
(``measure``, ``segment`` (analyze, evaluate), ``screen`` (report), ``deep`` (models, infer, train), ``batch``,
``benchmark``), the shared options in ``common``, the parser and the entry point in ``entry``."""

from VertebralFractureLib.cli.entry import main

__all__ = ["main"]

"""Command line: ``python -m VertebralFractureLib COMMAND ...`` (also installed as ``vertebral-fracture``).

Each command is a function ``cmd_NAME(args) -> int`` registered with :func:`command`; errors in inputs end with a
one-line message on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from . import __version__
from .errors import VertebralFractureError

log = logging.getLogger("VertebralFractureLib")

_COMMANDS: dict[str, tuple[callable, callable, str]] = {}


def command(name: str, help_text: str):
    """Register ``cmd_NAME``; the decorated function's ``add_arguments`` attribute fills the subparser."""

    def decorator(function):
        _COMMANDS[name] = (function, getattr(function, "add_arguments", None), help_text)
        return function

    return decorator


def arguments(adder):
    """Attach an argument-adding function to a command function."""

    def decorator(function):
        function.add_arguments = adder
        return function

    return decorator


class Progress:
    """Progress on stderr: a tqdm bar on a terminal, plain lines otherwise (logs of batch runs stay readable)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar = None
        self._last_message = None
        self._start = time.perf_counter()

    def __call__(self, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        if sys.stderr.isatty():
            from tqdm import tqdm

            if self._bar is None:
                self._bar = tqdm(total=100, unit="%", leave=False, file=sys.stderr)
            self._bar.set_description(message)
            self._bar.n = int(round(100 * fraction))
            self._bar.refresh()
        elif message != self._last_message:
            print(f"[{time.perf_counter() - self._start:6.1f} s] {100 * fraction:3.0f}% {message}", file=sys.stderr)
        self._last_message = message

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    """--seg, --ct, --series, --labels, --out: the inputs of every command that starts from a label map."""
    parser.add_argument("--seg", required=True, metavar="LABELMAP",
                        help="vertebra label map (NIfTI, NRRD, MetaImage or Slicer .seg.nrrd)")
    parser.add_argument("--ct", metavar="CT", help="CT volume (NIfTI, NRRD, MetaImage or DICOM series folder); "
                                                    "gives trabecular HU and the overview image")
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID to read when the DICOM folder holds several")
    parser.add_argument("--labels", default="auto", choices=["auto", "verse", "totalseg_v2", "totalseg_v1"],
                        help="label convention of --seg (default: auto; .seg.nrrd files are read by segment name)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")


def read_measure_inputs(args: argparse.Namespace, progress) -> tuple:
    """(ct or None, label map on the CT's grid, inputs record) from the options of :func:`add_measure_arguments`."""
    from . import io

    progress(0.0, "reading inputs")
    ct = io.read_ct(args.ct, args.series) if args.ct else None
    # On another grid than the CT, the label map is checked for overlap and resampled onto the CT's grid.
    label_map = io.read_label_map(args.seg, args.labels, reference=ct)
    inputs = {"seg": str(args.seg), "ct": None if args.ct is None else str(args.ct), "labels": label_map.convention}
    return ct, label_map, inputs


@command("measure", "measure vertebral body heights, grade fractures (Genant) from a label map")
@arguments(add_measure_arguments)
def cmd_measure(args: argparse.Namespace) -> int:
    from . import measure, report

    progress = Progress(not args.quiet)
    ct, label_map, inputs = read_measure_inputs(args, progress)
    case = measure.measure_case(label_map.volume, ct, inputs=inputs, progress=progress)
    progress(0.95, "writing outputs")
    written = report.write_measure_outputs(case, args.out, label_map.volume, ct)
    progress.close()
    _print_summary(case, written)
    return 0


def _print_summary(case, written: dict) -> None:
    for vertebra in case.vertebrae:
        if not vertebra.complete:
            print(f"{vertebra.level:>4}  incomplete ({vertebra.incomplete_reason})")
            continue
        heights = vertebra.heights_mm
        if vertebra.genant_grade is None:
            print(f"{vertebra.level:>4}  {vertebra.grade_reason}")
            continue
        print(f"{vertebra.level:>4}  Ha {heights['anterior']:5.1f}  Hm {heights['middle']:5.1f}  "
              f"Hp {heights['posterior']:5.1f} mm  grade {vertebra.genant_grade} {vertebra.morphology}")
    patient = case.patient
    fractured = ", ".join(patient.fractured_levels) or "none"
    print(f"fractured: {fractured}; worst grade {patient.worst_grade}; L1 trabecular HU "
          f"{'n/a' if patient.l1_trabecular_hu is None else round(patient.l1_trabecular_hu)}")
    for name, path in written.items():
        print(f"wrote {name}: {path}")


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(prog="python -m VertebralFractureLib",
                                     description="Vertebral fracture and bone density screening on CT.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (function, adder, help_text) in _COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if adder:
            adder(sub)
        sub.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
        sub.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        sub.set_defaults(function=function)
    return parser


def _load_command_modules() -> None:
    """Modules that add commands of their own register them on import."""
    import importlib

    for module in ("cli_segment", "cli_screen", "cli_deep", "cli_benchmark"):
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"{__package__}.{module}":
                raise


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.function(args) or 0)
    except VertebralFractureError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())

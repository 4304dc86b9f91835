"""Screen a reviewed case and publish its clinical report (and DICOM SEG + SR): in this process, or in a fresh child
process when this one holds packages that have changed on disk since they were imported.

Why a child. Slicer 5.10 imports its bundled pydicom 2.4 at start-up; installing highdicom (the DICOM outputs)
upgrades pydicom to 3.x on disk, and from then on the running Slicer mixes the loaded 2.4 modules with 3.x files:
``import highdicom`` fails (``cannot import name 'parse_basic_offsets' from 'pydicom.encaps'``) until Slicer is
restarted. A child Python (``PythonSlicer -m VertebralFractureLib.slicer.reporting FOLDER``) imports everything afresh,
so the report and its DICOM files are written at once, without a restart. The MRML adapter
(:meth:`VertebralFractureCase.write_report <VertebralFractureLib.slicer.mrml.VertebralFractureCase.write_report>`) calls
:func:`report` with the case and arrays taken from the scene; :func:`report` chooses the process.

No Slicer import here: the child runs in plain Python (``PythonSlicer`` or any interpreter with the Lib).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from VertebralFractureLib.errors import InputError, VertebralFractureError
from VertebralFractureLib.io import Volume
from VertebralFractureLib.results import CaseResult

REQUEST_NAME = "request.json"
RESPONSE_NAME = "response.json"


def screen_and_publish(case: CaseResult, ct: Volume, labels: Volume, out_dir: str | Path, dicom_files=(),
                       kvp: float | None = None, contrast_phase: str | None = None, volume_is_ct: bool = True,
                       dicom_out: bool = False, deidentify: bool = False, pseudonym: str = ""):
    """Screen ``case`` (its trabecular fields are filled in place; grades are read, never changed) and publish the
    report set to ``out_dir``; returns (ScreeningResult, {name: published path}).

    ``dicom_files``: the CT's source images (checked to be this grid's slices); they give the report's patient
    header, kVp and contrast agent, and the references of DICOM SEG + SR (``dicom_out``). ``kvp`` and
    ``contrast_phase`` state or override what the header says.
    """
    from VertebralFractureLib import io as io_mod
    from VertebralFractureLib import pipeline
    from VertebralFractureLib.screening import recommend as screen

    files = [str(path) for path in dicom_files or ()]
    if files:
        from VertebralFractureLib.outputs import dicom as dicom_outputs

        # The files must be this volume's images: SEG frames and the report's patient header come from them.
        datasets, _warnings = dicom_outputs.read_source_datasets(files)
        dicom_outputs.slice_indices(datasets, ct)
        ct.meta["dicom_files"] = files
        ct.meta["dicom"] = io_mod.dicom_header_summary(files[0])
    header = dict(ct.meta.get("dicom") or {})
    if kvp is not None:
        header["kvp"] = float(kvp)
    if contrast_phase:
        header["contrast_phase"] = contrast_phase
    screened_ct = ct if volume_is_ct else None
    screening = screen.screen_case(labels, screened_ct, case, dicom=header or None)
    # The writers scrub (de-identified export) or annotate (DICOM warnings) the case they get: give them a copy.
    written = pipeline.publish(CaseResult.from_dict(case.to_dict()), screening, labels, screened_ct, out_dir,
                               dicom_out=dicom_out, deidentify=deidentify, pseudonym=pseudonym)
    return screening, {name: Path(path) for name, path in written.items()}


def report(case: CaseResult, ct: Volume, labels: Volume, out_dir: str | Path, fresh_process: bool | None = None,
           python: str | None = None, **options) -> tuple[CaseResult, dict, dict[str, Path]]:
    """:func:`screen_and_publish` where it works: here, or in a child when :func:`needs_fresh_process` (or
    ``fresh_process=True``). Returns (the screened case, the screening as a dict, {name: published path}); the
    case given is left as it was. A failure is a :class:`VertebralFractureError` with the one-line reason."""
    if fresh_process is None:
        fresh_process = bool(needs_fresh_process())
    if not fresh_process:
        screened = CaseResult.from_dict(case.to_dict())
        screening, written = screen_and_publish(screened, ct, labels, out_dir, **options)
        return screened, screening.to_dict(), written
    return _report_in_child(case, ct, labels, out_dir, python, options)


def needs_fresh_process() -> list[str]:
    """The packages this process imported whose installed version has changed since (``"pydicom 2.4.4 -> 3.0.2"``);
    empty when a report can be written here."""
    from VertebralFractureLib.slicer.dependencies import stale_imports

    return [f"{name} {loaded} -> {installed}" for name, loaded, installed in stale_imports()]


def _report_in_child(case, ct, labels, out_dir, python, options):
    from VertebralFractureLib.io import write_nifti
    from VertebralFractureLib.slicer import process

    work = Path(tempfile.mkdtemp(prefix="VertebralFracture-report-"))
    try:
        write_nifti(ct, work / "ct.nii.gz")
        write_nifti(labels, work / "labels.nii.gz")
        request = {"case": case.to_dict(), "ct": "ct.nii.gz", "labels": "labels.nii.gz",
                   "out_dir": str(Path(out_dir).expanduser().absolute()), "ct_meta": _json_meta(ct.meta),
                   "options": {**options, "dicom_files": [str(f) for f in options.get("dicom_files") or ()]}}
        (work / REQUEST_NAME).write_text(json.dumps(request), encoding="utf-8")
        command = [python or process.python_executable(), "-m", "VertebralFractureLib.slicer.reporting", str(work)]
        runner = process.ProcessRunner(command, env=process.child_environment())
        try:
            runner.start().wait()
        except process.ProcessFailedError as error:
            raise VertebralFractureError(str(error)) from None
        response = json.loads((work / RESPONSE_NAME).read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    written = {name: Path(path) for name, path in response["written"].items()}
    return CaseResult.from_dict(response["case"]), response["screening"], written


def _json_meta(meta: dict) -> dict:
    """The parts of a volume's ``meta`` that JSON carries (the child rebuilds the rest from the DICOM files)."""
    return {key: value for key, value in meta.items() if isinstance(value, (str, int, float, bool, type(None)))}


def main(argv: list[str] | None = None) -> int:
    """``python -m VertebralFractureLib.slicer.reporting FOLDER``: the child's side of :func:`report`. Prints ``error:
    PATH: problem`` and exits 2 on a refused input, as the command line does."""
    from VertebralFractureLib.io import read_label_map, read_volume

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m VertebralFractureLib.slicer.reporting FOLDER", file=sys.stderr)
        return 2
    work = Path(argv[0])
    try:
        request = json.loads((work / REQUEST_NAME).read_text(encoding="utf-8"))
        ct = read_volume(work / request["ct"])
        ct.meta.update(request.get("ct_meta") or {})
        labels = read_label_map(work / request["labels"], "verse", reference=ct).volume
        case = CaseResult.from_dict(request["case"])
        screening, written = screen_and_publish(case, ct, labels, request["out_dir"], **request["options"])
    except (InputError, VertebralFractureError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    response = {"case": case.to_dict(), "screening": screening.to_dict(),
                "written": {name: str(path) for name, path in written.items()}}
    (work / RESPONSE_NAME).write_text(json.dumps(response), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

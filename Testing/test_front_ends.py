"""The same CT gives the same levels, grades, warnings and QC from the command line, the Slicer module's path (the
child process it starts, then the MRML case built from the child's results) and batch."""

from __future__ import annotations

import csv
import json

import pytest

from VertebralFractureLib import cli, io
from VertebralFractureLib.results import CaseResult
from VertebralFractureLib.segment import CLASSICAL_FALLBACK_WARNING
from VertebralFractureLib.slicer import process

CT = "totalsegmentator-example/example_ct.nii.gz"


def _key(case: CaseResult) -> dict:
    """What a reader acts on: names, grades, how the names were decided, warnings, quality findings."""
    quality = getattr(case, "quality", None)
    return {
        "levels": [v.level for v in case.vertebrae],
        "complete": [v.complete for v in case.vertebrae],
        "grades": [(v.genant_grade, v.morphology) for v in case.vertebrae],
        "heights": [None if v.heights_mm is None else {k: round(h, 1) for k, h in v.heights_mm.items()}
                    for v in case.vertebrae],
        "levels_status": case.levels_status,
        "level_evidence": case.level_evidence,
        "backend": case.segmentation_backend,
        # The classical backend's warning ends with the steps to a deep backend that work where it is printed:
        # the panel's inside Slicer, commands elsewhere; the finding before them is the same everywhere.
        "warnings": [w.split(" (", 1)[0] if w.startswith(CLASSICAL_FALLBACK_WARNING) else w for w in case.warnings],
        "quality": quality.to_dict() if hasattr(quality, "to_dict") else quality,
    }


def _read(path) -> CaseResult:
    return CaseResult.from_dict(json.loads(path.read_text(encoding="utf-8")))


@pytest.mark.slow
def test_command_line_module_and_batch_agree(shared_file, tmp_path, capsys):
    ct_path = shared_file(CT)

    assert cli.main(["analyze", "-i", str(ct_path), "-o", str(tmp_path / "cli"), "-q"]) == 0
    from_cli = _read(tmp_path / "cli" / "results.json")

    listing = tmp_path / "cases.csv"
    listing.write_text(f"case,ct\nexample,{ct_path}\n")
    assert cli.main(["batch", "-i", str(listing), "-o", str(tmp_path / "batch"), "-q"]) == 0
    from_batch = _read(tmp_path / "batch" / "example" / "results.json")
    with open(tmp_path / "batch" / "summary.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    capsys.readouterr()

    # The module's Apply: the child process (analyze --no-report), then the MRML case from the child's results.
    job = process.SegmentationJob(io.read_ct(ct_path)).start()
    try:
        labels = job.wait(600)
        child_case = job.case()
    finally:
        job.cleanup()
    mrml = pytest.importorskip("VertebralFractureLib.slicer.mrml", reason="slicer-core (PyPI) is needed for MRML")
    context = mrml.new_scene()
    volume_node = mrml.load_volume_node(context.scene, ct_path, "CT")
    module = mrml.VertebralFractureCase.create(volume_node, labels=labels, case=child_case)
    from_module = mrml.VertebralFractureCase.from_table_node(module.table_node).case

    assert from_cli.levels_status == "confirmed" and from_cli.segmentation_backend == "classical"
    assert _key(from_cli) == _key(from_batch) == _key(from_module)
    assert row["levels"] == " ".join(_key(from_cli)["levels"]) and row["levels_status"] == "confirmed"
    assert row["warnings"] == " | ".join(from_cli.warnings)
    assert row["recommendation"] == json.loads((tmp_path / "cli" / "screening.json").read_text())[
        "screening"]["recommendation"]["statement"]
    summary = module.summary()
    assert summary.startswith("Status: assessed\nLevel names confirmed by an anatomical anchor in view")

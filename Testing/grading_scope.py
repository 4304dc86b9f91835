"""Which levels a case graded: T1-T3 are graded only on request (``--include-upper-thoracic``), and the tests of
every front end check the same thing, graded against not assessed, never which grade (the grading numbers are the
grading's to change)."""

from __future__ import annotations

from VertebralFractureLib.morphometry import grade

UPPER_THORACIC_MASK = "ungraded-masks/sub-sample001_seg-vert_msk.nii.gz"
"""A real mask holding T1-L5 (no CT)."""
UPPER_THORACIC = ("T1", "T2", "T3")


def upper_thoracic_status(vertebrae: list) -> str:
    """"graded" when T1-T3 all carry a grade (or at least a score, should a shape check hold a grade back) and none
    is left out of the grading's scope, "not assessed" when all are out of scope, else "mixed". ``vertebrae``:
    results.json's dicts or :class:`~VertebralFractureLib.results.VertebraResult`."""
    rows = [v if isinstance(v, dict) else v.to_dict() for v in vertebrae]
    rows = [row for row in rows if row["level"] in UPPER_THORACIC]
    assert [row["level"] for row in rows] == list(UPPER_THORACIC)
    out_of_scope = [row["not_assessed_reason"] == grade.not_assessed_reason(row["level"]) for row in rows]
    if not any(out_of_scope) and all(r["genant_grade"] is not None or r["fracture_score"] is not None for r in rows):
        return "graded"
    if all(out_of_scope) and all(r["genant_grade"] is None and r["fracture_score"] is None for r in rows):
        return "not assessed"
    return "mixed"

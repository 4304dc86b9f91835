"""VertebralFractureLib: vertebra morphometry, Genant fracture grading and bone density on CT.

Pure Python (numpy, scipy, SimpleITK, nibabel, pydicom); no Slicer, Qt or VTK outside ``slicer/``. The folders follow
the pipeline: ``io`` -> ``segment`` -> ``morphometry`` -> ``screening`` -> ``outputs``; ``pipeline`` runs them in
order for every front end (``cli``, ``batch``, the Slicer module through ``slicer``).
"""

import importlib

__version__ = "0.1.0"

# Modules users import by their short names (`from VertebralFractureLib import mrml`), found lazily so that importing
# the package imports nothing else (``mrml`` needs Slicer, the deep backends torch).
_MOVED = {
    "labels": "io.labels", "download": "io.download", "models": "segment.models", "renumber": "segment.renumber",
    "measure": "morphometry.measure", "grade": "morphometry.grade", "qc": "morphometry.qc",
    "screen": "screening.recommend", "report": "outputs.files", "report_clinical": "outputs.clinical",
    "dicom_outputs": "outputs.dicom", "deid": "outputs.deid", "mrml": "slicer.mrml", "review": "slicer.review",
    "process": "slicer.process", "dependencies": "slicer.dependencies",
}


def __getattr__(name: str):
    if name in _MOVED:
        return importlib.import_module(f"{__name__}.{_MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

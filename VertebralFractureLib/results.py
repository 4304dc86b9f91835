"""Result objects shared by the CLI, the reports, the Slicer module and the tests.

Plain dataclasses with ``to_dict``/``from_dict`` so the same object is written to JSON, shown in an MRML table and
read back for review. Every point is in world millimetres, **RAS**, as the field names say.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

POINT_NAMES = (
    "superior_anterior",
    "superior_middle",
    "superior_posterior",
    "inferior_anterior",
    "inferior_middle",
    "inferior_posterior",
)
HEIGHT_NAMES = ("anterior", "middle", "posterior")
MORPHOLOGIES = ("normal", "wedge", "biconcave", "crush")
SCHEMA_VERSION = "1.2"
BORDERLINE = "borderline — review"
"""How a borderline vertebra (:attr:`VertebraResult.borderline`) is named in every output: not a fracture, not
normal; a reader should look at it."""
LEVELS_STATUSES = ("confirmed", "conflicting", "unconfirmed", "anchored", "given")
"""How the level names were decided: the anchors in view agree, they disagree, none in view (the count may be
off), the user fixed the count, or they came with a given label map."""


def finite_for_json(value):
    """``value`` with every NaN or infinite float replaced by None: JSON has no NaN, and a reader parsing the
    file strictly (any JSON library but Python's) would refuse the whole file for one such number."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_for_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_for_json(item) for item in value]
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():  # a NumPy scalar
        return finite_for_json(value.item())
    return value


def json_text(data, indent: int | None = 2) -> str:
    """Strict JSON text of ``data`` (no NaN or Infinity: they are written as null)."""
    return json.dumps(finite_for_json(data), indent=indent, allow_nan=False)


def _rounded(values, digits=2):
    return None if values is None else [round(float(v), digits) for v in values]


@dataclass
class VertebraResult:
    """Measurements and grade of one vertebra (VerSe id ``label``, level name ``level``)."""

    label: int
    level: str
    complete: bool = True
    incomplete_reason: str | None = None
    heights_mm: dict[str, float] | None = None
    points_ras: dict[str, list[float]] | None = None
    centroid_ras: list[float] | None = None
    axes_ras: dict[str, list[float]] | None = None
    depth_mm: float | None = None
    body_volume_ml: float | None = None
    voxel_extent_mm: float | None = None
    """Extent of one voxel along the vertebra's superior axis: how finely the mask places an endplate."""
    midsagittal_area_mm2: float | None = None
    """Area of the body's section on the central sagittal planes (median over the planes the heights come from)."""
    body_voxels: int = 0
    trabecular_hu: float | None = None
    trabecular_hu_iqr: float | None = None
    trabecular_voxels: int = 0
    ratios: dict[str, float | None] = field(default_factory=dict)
    expected_posterior_mm: float | None = None
    expected_heights_mm: dict[str, float] | None = None
    height_loss: float | None = None
    genant_grade: int | None = None
    morphology: str | None = None
    grade_reason: str = ""
    fracture_score: float | None = None
    """Continuous fracture likelihood (higher = more likely fractured), the score an ROC curve is drawn from."""
    withheld_for_voxel_size: float | None = None
    """A reduction that reaches Genant's grade 1 and lies beyond the SD criterion on the population's spread alone,
    but not once the mask's voxel size along the spine counts: not called a fracture (the grade is what the other
    reductions give), and said so in the case's warnings (review it on thinner slices); None otherwise."""
    borderline: bool = False
    """Graded 0, but a reduction lies in the band where normal shapes and mild fractures overlap (Genant's grade 0.5,
    see :mod:`.morphometry.grade`): reported as :data:`BORDERLINE`, neither a fracture nor normal."""
    not_assessed_reason: str | None = None
    """Why the vertebra has no Genant grade although it was measured: outside the grading's scope (cervical spine,
    sacrum, coccyx, T1-T3 by default) or withheld by quality control (:mod:`.qc`); None when graded."""
    # Review state (set by a reviewer; the automatic values above stay recorded beside it).
    grade_override: int | None = None
    morphology_override: str | None = None
    reviewed: bool = False

    @property
    def final_grade(self) -> int | None:
        return self.grade_override if self.grade_override is not None else self.genant_grade

    @property
    def borderline_in_force(self) -> bool:
        """Borderline as the outputs show it: graded 0 automatically, not withheld, not overridden by a reviewer."""
        return bool(self.borderline) and self.genant_grade == 0 and self.grade_override is None

    @property
    def final_morphology(self) -> str | None:
        return self.morphology_override if self.morphology_override is not None else self.morphology

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if self.heights_mm:
            data["heights_mm"] = {k: round(float(v), 2) for k, v in self.heights_mm.items()}
        if self.points_ras:
            data["points_ras"] = {k: _rounded(v) for k, v in self.points_ras.items()}
        data["centroid_ras"] = _rounded(self.centroid_ras)
        if self.axes_ras:
            data["axes_ras"] = {k: _rounded(v, 4) for k, v in self.axes_ras.items()}
        data["ratios"] = {k: (None if v is None else round(float(v), 3)) for k, v in self.ratios.items()}
        rounded = (
            "depth_mm",
            "body_volume_ml",
            "voxel_extent_mm",
            "midsagittal_area_mm2",
            "trabecular_hu",
            "trabecular_hu_iqr",
            "expected_posterior_mm",
        )
        for key in rounded:
            if data[key] is not None:
                data[key] = round(float(data[key]), 2)
        if self.expected_heights_mm:
            data["expected_heights_mm"] = {k: round(float(v), 2) for k, v in self.expected_heights_mm.items()}
        for key in ("height_loss", "fracture_score", "withheld_for_voxel_size"):
            if data[key] is not None:
                data[key] = round(float(data[key]), 3)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> VertebraResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class PatientSummary:
    fractured_levels: list[str] = field(default_factory=list)
    worst_grade: int | None = None
    l1_trabecular_hu: float | None = None
    graded_levels: list[str] = field(default_factory=list)
    incomplete_levels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if data["l1_trabecular_hu"] is not None:
            data["l1_trabecular_hu"] = round(float(data["l1_trabecular_hu"]), 1)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PatientSummary:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class CaseResult:
    """Everything measured on one case.

    ``inputs`` records where the data came from (file paths, label convention, DICOM series); what the front ends
    exchange about the segmentation and its level names has typed fields of its own.
    """

    vertebrae: list[VertebraResult]
    patient: PatientSummary
    inputs: dict = field(default_factory=dict)
    coordinate_system: str = "RAS"
    warnings: list[str] = field(default_factory=list)
    schema_version: str = SCHEMA_VERSION
    quality: QualityReport | None = None
    """Quality control of the segmentation behind the grades (:mod:`.qc`); None when it was not run."""
    levels_status: str | None = None
    """One of :data:`LEVELS_STATUSES` (None: not recorded, results of schema 1.0 without it)."""
    level_evidence: list[str] = field(default_factory=list)
    """Why the vertebrae carry their names, one reason per item."""
    segmentation_backend: str | None = None
    """"classical", "monai", "totalsegmentator", "given" (a label map from elsewhere) ..."""
    segmentation_backend_reason: str | None = None
    """Why that backend segmented the CT: the automatic choice's reason, "asked for with --backend NAME", ..."""
    segmentation_backend_details: dict = field(default_factory=dict)
    """What exactly ran: model, version, weights SHA-256, resolution, device (see ``segment.SegmentationOutput``)."""
    full_vertebrae: bool | None = None
    """True when the masks hold the posterior elements, False for vertebral bodies only."""
    level_corrections: list[dict] = field(default_factory=list)
    """Renumberings a reviewer made, in order: ``{"from": "L3", "to": "L4"}``."""
    front_back_doubt: str | None = None
    """Why the patient's front and back could not be established from the anatomy (two signs disagree: a
    bodies-only mask off its bodies, or a mirrored header); None when they were. Quality control fails on it."""

    def vertebra(self, level_or_label) -> VertebraResult:
        for vertebra in self.vertebrae:
            if vertebra.level == level_or_label or vertebra.label == level_or_label:
                return vertebra
        raise KeyError(level_or_label)

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "coordinate_system": self.coordinate_system,
            "inputs": self.inputs,
            "levels_status": self.levels_status,
            "level_evidence": list(self.level_evidence),
            "segmentation_backend": self.segmentation_backend,
            "segmentation_backend_reason": self.segmentation_backend_reason,
            "segmentation_backend_details": dict(self.segmentation_backend_details),
            "full_vertebrae": self.full_vertebrae,
            "level_corrections": [dict(c) for c in self.level_corrections],
            "front_back_doubt": self.front_back_doubt,
            "patient": self.patient.to_dict(),
            "vertebrae": [v.to_dict() for v in self.vertebrae],
            "warnings": list(self.warnings),
            "quality": None if self.quality is None else self.quality.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> CaseResult:
        inputs = dict(data.get("inputs", {}))
        # Schema 1.0 kept these in ``inputs``: the CLI under inputs["segmentation"], the Slicer module at its top.
        legacy = inputs.get("segmentation") if isinstance(inputs.get("segmentation"), dict) else {}

        def typed(name, default=None):
            if name in data:
                return data[name]
            return legacy.get(name, inputs.get(name, default))

        return cls(
            vertebrae=[VertebraResult.from_dict(v) for v in data.get("vertebrae", [])],
            patient=PatientSummary.from_dict(data.get("patient", {})),
            inputs=inputs,
            coordinate_system=data.get("coordinate_system", "RAS"),
            warnings=list(data.get("warnings", [])),
            schema_version=data.get("schema_version", SCHEMA_VERSION),
            quality=QualityReport.from_dict(data.get("quality")),
            levels_status=typed("levels_status"),
            level_evidence=list(typed("level_evidence", []) or []),
            segmentation_backend=typed("segmentation_backend", legacy.get("backend")),
            segmentation_backend_reason=typed("segmentation_backend_reason", legacy.get("backend_reason")),
            segmentation_backend_details=dict(typed("segmentation_backend_details",
                                                    legacy.get("backend_details")) or {}),
            full_vertebrae=typed("full_vertebrae"),
            level_corrections=list(typed("level_corrections", []) or []),
            front_back_doubt=data.get("front_back_doubt"),
        )


# Quality control results (the rules that fill them live in morphometry/qc.py)
PASSED = "passed"
LEVELS_UNCONFIRMED = "levels unconfirmed"
FAILED = "failed"


@dataclass
class QualityCheck:
    """One case-level check: name, whether it passed, and what was measured against which limit."""

    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class VertebraQuality:
    """Quality of one vertebra: the problems found (empty when plausible) and any grade withheld from it."""

    level: str
    label: int
    problems: list[str] = field(default_factory=list)
    withheld_grade: int | None = None
    withheld_morphology: str | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict) -> VertebraQuality:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class QualityReport:
    """Result of :func:`assess_quality`: ``status`` is "passed", "levels unconfirmed" or "failed"."""

    status: str = PASSED
    headline: str = ""
    segmentation_source: str = "given"
    """"automatic" (a segmentation backend of this program) or "given" (a label map from the user)."""
    levels_status: str = "given"
    failed_checks: list[str] = field(default_factory=list)
    checks: list[QualityCheck] = field(default_factory=list)
    vertebrae: list[VertebraQuality] = field(default_factory=list)

    @property
    def findings_withheld(self) -> bool:
        return self.status != PASSED

    def vertebra(self, label: int) -> VertebraQuality | None:
        return next((v for v in self.vertebrae if v.label == label), None)

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "headline": self.headline,
            "segmentation_source": self.segmentation_source,
            "levels_status": self.levels_status,
            "failed_checks": list(self.failed_checks),
            "checks": [c.to_dict() for c in self.checks],
            "vertebrae": [v.to_dict() for v in self.vertebrae],
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> QualityReport | None:
        if not data:
            return None
        return cls(
            status=data.get("status", PASSED),
            headline=data.get("headline", ""),
            segmentation_source=data.get("segmentation_source", "given"),
            levels_status=data.get("levels_status", "given"),
            failed_checks=list(data.get("failed_checks", [])),
            checks=[QualityCheck(**c) for c in data.get("checks", [])],
            vertebrae=[VertebraQuality.from_dict(v) for v in data.get("vertebrae", [])],
        )


# --------------------------------------------------------------------------------------------------------------
# The one rule for density statements (re-exported by screening.rules, where the other screening rules live)
# --------------------------------------------------------------------------------------------------------------
DOUBTFUL_LEVEL_STATUSES = ("unconfirmed", "conflicting")


def density_not_usable(case, vertebra) -> str | None:
    """The one rule for density statements: None when the vertebra's trabecular density may be stated and a
    recommendation made from it, else why not (a few words, for the headline).

    A density is stated only from a vertebra that is in view and whole (not cut by the field of view), whose
    segmentation passed quality control (the case's and its own), and whose level name is confirmed (the
    thresholds are level-specific: a density of an unknown vertebra cannot be compared with them)."""
    if vertebra is None:
        return "not in view"
    if not vertebra.complete:
        return "cut by the field of view"
    quality = getattr(case, "quality", None)
    if quality is not None and quality.status == FAILED:
        return "segmentation failed quality control"
    entry = None if quality is None else quality.vertebra(vertebra.label)
    if entry is not None and entry.problems:
        return "failed quality control"
    # Quality control decides whether the names are trusted (a model that names the levels itself is); without
    # it, the case's own level status does.
    if (quality.status == LEVELS_UNCONFIRMED if quality is not None
            else getattr(case, "levels_status", None) in DOUBTFUL_LEVEL_STATUSES):
        return "level name unconfirmed"
    return None


def stated_l1_hu(case) -> float | None:
    """``patient.l1_trabecular_hu``: L1's trabecular median when :func:`density_not_usable` lets it be stated."""
    l1 = next((v for v in case.vertebrae if v.level == "L1"), None)
    if l1 is None or l1.trabecular_hu is None or density_not_usable(case, l1) is not None:
        return None
    return l1.trabecular_hu

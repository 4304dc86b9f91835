"""Which series of a study the node analyses: one axial CT series fit for morphometry, the others skipped with the
reason.

The rules read only what the server indexes (Modality, Image Type, Slice Thickness, Image Orientation, the number
of images), so the choice is made before any image is downloaded. Every limit is named here, once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

OUTPUT_MANUFACTURER = "VertebralFracture"
"""Manufacturer (0008,0070) of the SEG, SR and Encapsulated PDF instances this program writes: the node recognises
its own outputs in a study by it (never analyses them, and replaces them when it analyses the study again)."""
OUTPUT_MODALITIES = ("SEG", "SR", "DOC")

MAX_SLICE_THICKNESS_MM = 3.0
"""Thicker sections blur the endplates: each endplate of a 25 mm tall body is placed to within half a section, so
5 mm sections leave the height uncertain by up to 5 mm (20 %), as much as a whole Genant grade-1 reduction
(20-25 %); 3 mm sections keep that within 12 %."""
MIN_SERIES_LENGTH_MM = 30.0
"""Images x slice thickness: a series shorter than one lumbar vertebral body with its endplates (about 25-30 mm
tall in adults) holds no whole vertebra to measure: typically a few key images or a dose-planning stack."""
AXIAL_TOLERANCE_DEG = 15.0
"""The image plane's normal within this angle of the patient's head-foot axis counts as axial (gantry tilts stay
below about 30 degrees; sagittal and coronal reformats are 90 degrees off). Steeper oblique stacks are skipped
because the segmentation backends are trained on axial acquisitions."""
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
"""Single-frame CT: the DICOM SEG and SR outputs reference the source images frame by frame."""


@dataclass
class SeriesInfo:
    orthanc_id: str
    series_uid: str
    modality: str
    description: str
    number: str
    manufacturer: str
    images: int
    last_update: str
    image_type: list[str] = field(default_factory=list)
    slice_thickness_mm: float | None = None
    orientation: list[float] | None = None
    sop_class_uid: str = ""

    @classmethod
    def from_orthanc(cls, series: dict, shared_tags: dict | None = None) -> SeriesInfo:
        tags = dict(series.get("MainDicomTags") or {})
        shared = shared_tags or {}

        def floats(text) -> list[float] | None:
            try:
                values = [float(v) for v in str(text).split("\\")]
            except ValueError:
                return None
            return values or None

        thickness = floats(shared.get("SliceThickness", "")) if shared.get("SliceThickness") else None
        orientation = floats(tags.get("ImageOrientationPatient") or shared.get("ImageOrientationPatient") or "")
        image_type = shared.get("ImageType")
        return cls(
            orthanc_id=str(series["ID"]), series_uid=str(tags.get("SeriesInstanceUID", "")),
            modality=str(tags.get("Modality", "")), description=str(tags.get("SeriesDescription", "")),
            number=str(tags.get("SeriesNumber", "")), manufacturer=str(tags.get("Manufacturer", "")),
            images=len(series.get("Instances") or []), last_update=str(series.get("LastUpdate", "")),
            image_type=[v.strip().upper() for v in str(image_type).split("\\")] if image_type else [],
            slice_thickness_mm=thickness[0] if thickness else None,
            orientation=orientation if orientation and len(orientation) == 6 else None,
            sop_class_uid=str(shared.get("SOPClassUID", "") or ""))

    @property
    def is_output(self) -> bool:
        return self.manufacturer == OUTPUT_MANUFACTURER and self.modality in OUTPUT_MODALITIES

    @property
    def name(self) -> str:
        number = f"series {self.number}" if self.number else "series"
        return f"{number} {self.description!r}" if self.description else f"{number} {self.series_uid}"

    def to_dict(self) -> dict:
        return {"series_uid": self.series_uid, "orthanc_id": self.orthanc_id, "modality": self.modality,
                "description": self.description, "number": self.number, "images": self.images,
                "slice_thickness_mm": self.slice_thickness_mm}


def tilt_from_axial_deg(orientation: list[float]) -> float:
    """Angle between the image plane's normal and the head-foot axis, in degrees (0 = axial)."""
    row, column = orientation[:3], orientation[3:]
    normal = [row[1] * column[2] - row[2] * column[1], row[2] * column[0] - row[0] * column[2],
              row[0] * column[1] - row[1] * column[0]]
    length = math.sqrt(sum(v * v for v in normal)) or 1.0
    return math.degrees(math.acos(min(1.0, abs(normal[2]) / length)))


def unfit_reason(series: SeriesInfo) -> str | None:
    """Why the series cannot be analysed, or None when it can."""
    if series.modality != "CT":
        return f"modality {series.modality or 'not given'}, not CT"
    if series.sop_class_uid and series.sop_class_uid != CT_IMAGE_STORAGE:
        return f"SOP class {series.sop_class_uid} (not single-frame CT Image Storage)"
    if "LOCALIZER" in series.image_type:
        return "a localizer (scout) image, not a cross-sectional series"
    if series.orientation is None:
        return "image orientation differs between images or is not given"
    tilt = tilt_from_axial_deg(series.orientation)
    if tilt > AXIAL_TOLERANCE_DEG:
        return f"not axial (image plane {tilt:.0f} degrees off axial; at most {AXIAL_TOLERANCE_DEG:g})"
    if series.slice_thickness_mm is not None and series.slice_thickness_mm > MAX_SLICE_THICKNESS_MM + 1e-6:
        return f"slices {series.slice_thickness_mm:g} mm thick (at most {MAX_SLICE_THICKNESS_MM:g} mm)"
    length = series.images * (series.slice_thickness_mm or 1.0)
    if length < MIN_SERIES_LENGTH_MM:
        return (f"{series.images} image(s) covering about {length:.0f} mm (at least {MIN_SERIES_LENGTH_MM:g} mm: "
                "one vertebral body)")
    return None


@dataclass
class StudyChoice:
    chosen: SeriesInfo | None
    skipped: list[tuple[SeriesInfo, str]]
    outputs: list[SeriesInfo]
    """Series this program wrote into the study earlier."""

    def skipped_records(self) -> list[dict]:
        return [dict(series.to_dict(), reason=reason) for series, reason in self.skipped]

    @property
    def reason(self) -> str:
        """One line: why nothing was chosen (for a study with no fit series)."""
        if not self.skipped:
            return "the study holds no image series"
        return "no axial CT series fit for analysis: " + "; ".join(f"{s.name}: {r}" for s, r in self.skipped)


def choose_series(series: list[SeriesInfo]) -> StudyChoice:
    """The series to analyse: among the fit ones the thinnest slices, then the most images (the longest stretch of
    spine), then the lowest series number; the others are skipped with the reason."""
    outputs = [s for s in series if s.is_output]
    candidates, skipped = [], []
    for item in series:
        if item.is_output:
            continue
        reason = unfit_reason(item)
        if reason is None:
            candidates.append(item)
        else:
            skipped.append((item, reason))
    if not candidates:
        return StudyChoice(None, skipped, outputs)

    def number(item: SeriesInfo) -> float:
        try:
            return float(item.number)
        except ValueError:
            return math.inf

    ranked = sorted(candidates, key=lambda s: (s.slice_thickness_mm or MAX_SLICE_THICKNESS_MM, -s.images,
                                               number(s), s.series_uid))
    chosen = ranked[0]
    for other in ranked[1:]:
        skipped.append((other, f"{chosen.name} analysed instead (thinner slices or more images)"))
    return StudyChoice(chosen, skipped, outputs)

"""Clinical report: ``report.html`` (self-contained, images embedded as base64) and ``report.pdf``.

Contents, in reading order: patient and study, the recommendation with its confidence and reasons, the bone
density against its thresholds (a scale graphic), a sagittal view of the spine **straightened along its curve**
(curved planar reformat through the vertebral body centroids, so every level shows in one image) with the six
morphometry points, the three heights and the grade drawn per level, a table per vertebra with grade colours, the
caveats and the method notes. The PDF is drawn with matplotlib only (no browser, no system library).
"""

from __future__ import annotations

import base64
import datetime
import html
import io as _io
from pathlib import Path

import numpy as np
from scipy import interpolate, ndimage

from VertebralFractureLib import __version__
from VertebralFractureLib.io import Volume, atomic_path
from VertebralFractureLib.io import labels as labels_mod
from VertebralFractureLib.morphometry.qc import headline as quality_headline
from VertebralFractureLib.outputs.density_scale import render_density_scale
from VertebralFractureLib.outputs.files import LEVELS_DOUBTFUL, levels_line
from VertebralFractureLib.outputs.layout import PdfFlow, separate_labels
from VertebralFractureLib.results import BORDERLINE, CaseResult
from VertebralFractureLib.screening.rules import (
    BANDS_TEXT,
    RESEARCH_USE,
    case_status,
    contrast_words,
    density_not_usable,
    grade_explanation,
    grade_words,
    loss_percent,
)

GRADE_COLORS = {0: "#2e7d32", 1: "#f9a825", 2: "#ef6c00", 3: "#c62828", None: "#757575"}
BORDERLINE_COLOR = "#827717"
"""Neither normal's green nor a fracture's amber: a borderline vertebra is for a reader to look at."""
GRADE_TEXT = {0: "0 normal", 1: "1 mild", 2: "2 moderate", 3: "3 severe", None: "not graded"}
ACTION_COLORS = {"refer": "#c62828", "dxa": "#ef6c00", "consider": "#f9a825", "none": "#2e7d32",
                 "indeterminate": "#546e7a"}
BONE_WINDOW = (-250.0, 1150.0)  # HU shown black .. white: trabecular bone mid-grey, cortex white


# --------------------------------------------------------------------------------------------------------------
# Straightened (curved planar) sagittal reformat
# --------------------------------------------------------------------------------------------------------------
class StraightenedView:
    """Curved planar reformat along the spine: rows follow arc length down the centroid curve (cranial at the top),
    columns the antero-posterior offset (anterior on the left, as a sagittal view is read)."""

    def __init__(self, centroids_ras: np.ndarray, step_mm: float = 0.5, half_width_mm: float = 50.0,
                 extend_mm: float | tuple[float, float] = 20.0, anteriors_ras: np.ndarray | None = None):
        points = np.asarray(centroids_ras, dtype=float)
        if len(points) > 1:
            # Coincident centroids (a label split in two, a duplicated level) would stall the spline's parameter.
            keep = np.r_[True, np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-3]
            points = points[keep]
            if anteriors_ras is not None and len(anteriors_ras) == len(keep):
                anteriors_ras = np.asarray(anteriors_ras)[keep]
            centroids_ras = points
        if len(points) == 1:
            points = np.array([points[0] + [0, 0, 15.0], points[0] - [0, 0, 15.0]])
        chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]
        degree = min(3, len(points) - 1)
        spline = interpolate.make_interp_spline(chord, points, k=degree) if degree >= 1 else None
        # Extend past the end centroids along the end tangents so the outer bodies show whole.
        dense_t = np.linspace(0, chord[-1], max(50, int(chord[-1] / 0.25)))
        dense = spline(dense_t)
        start_tangent = _unit(dense[0] - dense[1])
        end_tangent = _unit(dense[-1] - dense[-2])
        extend_head, extend_tail = (extend_mm, extend_mm) if np.isscalar(extend_mm) else extend_mm
        head = dense[0] + np.outer(np.linspace(extend_head, 0, 40, endpoint=False), start_tangent)
        tail = dense[-1] + np.outer(np.linspace(0, extend_tail, 41)[1:], end_tangent)
        curve = np.vstack([head, dense, tail])
        arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))]
        self.length_mm = float(arc[-1])
        self.s = np.arange(0.0, self.length_mm, step_mm)
        self.centres = np.stack([np.interp(self.s, arc, curve[:, d]) for d in range(3)], axis=1)
        tangents = np.gradient(self.centres, axis=0)
        tangents = ndimage.gaussian_filter1d(tangents, sigma=max(1.0, 4.0 / step_mm), axis=0)
        self.tangents = tangents / np.linalg.norm(tangents, axis=1, keepdims=True)  # pointing caudally
        if anteriors_ras is not None and len(anteriors_ras) == len(centroids_ras) and len(centroids_ras) > 1:
            chord_s = np.interp(chord, arc - arc[40], arc)  # arc positions of the centroids
            anterior = np.stack([np.interp(self.s, chord_s, np.asarray(anteriors_ras)[:, d]) for d in range(3)], 1)
        else:
            anterior = np.tile([0.0, 1.0, 0.0], (len(self.s), 1))
        anterior = anterior - np.sum(anterior * self.tangents, axis=1, keepdims=True) * self.tangents
        self.anteriors = anterior / np.linalg.norm(anterior, axis=1, keepdims=True)
        self.laterals = np.cross(self.tangents, self.anteriors)
        self.step_mm = step_mm
        self.u = np.arange(-half_width_mm, half_width_mm + step_mm / 2, step_mm)

    def sample(self, volume: Volume, order: int = 1, slab_mm: float = 3.0, cval: float = -1024.0) -> np.ndarray:
        """Image [row = arc position, column = anterior offset u], averaged over a thin lateral slab."""
        offsets = np.linspace(-slab_mm / 2, slab_mm / 2, 3) if slab_mm > 0 and order > 0 else [0.0]
        total = np.zeros((len(self.s), len(self.u)), dtype=np.float32)
        for offset in offsets:
            world = (self.centres[:, None, :] + self.u[None, :, None] * self.anteriors[:, None, :]
                     + offset * self.laterals[:, None, :])
            ijk = volume.world_to_ijk(world.reshape(-1, 3)).T
            values = ndimage.map_coordinates(volume.array.astype(np.float32, copy=False), ijk, order=order,
                                             mode="constant", cval=cval)
            total += values.reshape(total.shape)
        return total / len(offsets)

    def project(self, point_ras) -> tuple[float, float]:
        """RAS point -> (u anterior offset mm, s arc length mm) in the straightened image."""
        point = np.asarray(point_ras, dtype=float)
        index = int(np.argmin(np.linalg.norm(self.centres - point, axis=1)))
        delta = point - self.centres[index]
        return float(delta @ self.anteriors[index]), float(self.s[index] + delta @ self.tangents[index])


def _unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=float)
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def _centroids(case: CaseResult, labels: Volume | None) -> tuple[np.ndarray, list, np.ndarray | None, tuple]:
    """Points the centre line passes through (RAS), the vertebrae to draw, the anterior axes at the points and how
    far to extend the line beyond its ends (mm).

    The curve runs through the centroids of the *complete* vertebrae: a body cut by the field of view has a
    centroid off the spine's axis. With fewer than two complete ones the view is a plain (straight) sagittal
    plane along the patient's superior axis through the vertebrae present.
    """
    vertebrae = [v for v in case.vertebrae if v.centroid_ras is not None and labels_mod.is_vertebra(v.label)]
    vertebrae.sort(key=lambda v: labels_mod.rank(v.label))
    if not vertebrae:
        raise ValueError("no vertebra centroids to straighten along")
    complete = [v for v in vertebrae if v.complete]
    if len(complete) >= 2:
        centroids = np.array([v.centroid_ras for v in complete], dtype=float)
        anteriors = None
        if all(v.axes_ras and v.axes_ras.get("anterior") is not None for v in complete):
            anteriors = np.array([v.axes_ras["anterior"] for v in complete], dtype=float)
        # Reach past the ends far enough to show the cut vertebrae beyond the complete ones.
        ranks = [labels_mod.rank(v.label) for v in complete]
        head = [np.linalg.norm(np.subtract(v.centroid_ras, centroids[0])) for v in vertebrae
                if labels_mod.rank(v.label) < ranks[0]]
        tail = [np.linalg.norm(np.subtract(v.centroid_ras, centroids[-1])) for v in vertebrae
                if labels_mod.rank(v.label) > ranks[-1]]
        extend = (max(head, default=0.0) + 20.0, max(tail, default=0.0) + 20.0)
        return centroids, vertebrae, anteriors, extend
    points = np.array([v.centroid_ras for v in vertebrae], dtype=float)
    centre = points.mean(axis=0)
    half = 0.5 * float(np.ptp(points[:, 2])) + 5.0
    return np.array([centre + [0.0, 0.0, half], centre - [0.0, 0.0, half]]), vertebrae, None, (20.0, 20.0)


def render_straightened(case: CaseResult, ct: Volume | None, labels: Volume | None, width_in: float = 6.0,
                        roi: Volume | None = None, screening_level: str | None = None):
    """Matplotlib figure of the straightened sagittal view with points, heights and grades per level; ``roi``
    (trabecular regions, VerSe ids) is outlined in cyan, the screening level's region filled."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    centroids, vertebrae, anteriors, extend = _centroids(case, labels)
    view = StraightenedView(centroids, anteriors_ras=anteriors, extend_mm=extend)
    if ct is not None:
        image = view.sample(ct)
        vmin, vmax = BONE_WINDOW
    else:
        image = view.sample(labels.with_array((labels.array > 0).astype(np.float32)), cval=0.0) * 600.0
        vmin, vmax = BONE_WINDOW
    # Array column c is offset u[c], row r arc length s[r]; the axis limits below put anterior (+u) on the left.
    extent = (view.u[0], view.u[-1], view.s[-1], view.s[0])
    height_in = width_in * (view.s[-1] - view.s[0]) / (view.u[-1] - view.u[0] + 60.0) + 0.6
    fig, ax = plt.subplots(figsize=(width_in, max(4.0, min(height_in, 11.0))))
    ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, interpolation="bilinear")
    if labels is not None:
        mask = view.sample(labels.with_array(labels.array.astype(np.float32)), order=0, slab_mm=0, cval=0.0)
        for vertebra in vertebrae:
            region = (mask == vertebra.label).astype(float)
            if region.any():
                ax.contour(view.u, view.s, region, levels=[0.5], colors=[GRADE_COLORS.get(vertebra.final_grade)],
                           linewidths=0.6, alpha=0.7)
    if roi is not None:
        regions = view.sample(roi.with_array(roi.array.astype(np.float32)), order=0, slab_mm=0, cval=0.0)
        for vertebra in vertebrae:
            region = (regions == vertebra.label).astype(float)
            if not region.any():
                continue
            chosen = vertebra.level == screening_level
            if chosen:
                ax.contourf(view.u, view.s, region, levels=[0.5, 1.5], colors=["#00e5ff"], alpha=0.25)
            ax.contour(view.u, view.s, region, levels=[0.5], colors=["#00e5ff"], linewidths=1.1 if chosen else 0.5,
                       linestyles="solid" if chosen else "dotted")
    labels = []
    for vertebra in vertebrae:
        color = GRADE_COLORS.get(vertebra.final_grade, "#757575")
        u_c, s_c = view.project(vertebra.centroid_ras)
        if vertebra.points_ras:
            projected = {name: view.project(p) for name, p in vertebra.points_ras.items() if p is not None}
            for which in ("anterior", "middle", "posterior"):
                top, bottom = projected.get(f"superior_{which}"), projected.get(f"inferior_{which}")
                if top and bottom:
                    ax.plot([top[0], bottom[0]], [top[1], bottom[1]], "-", color=color, lw=1.4)
            xs = [p[0] for p in projected.values()]
            ys = [p[1] for p in projected.values()]
            ax.plot(xs, ys, "o", ms=3.2, mfc="white", mec=color, mew=1.2)
        detail = ""
        if vertebra.heights_mm:
            h = vertebra.heights_mm
            detail = f"\nHa {h['anterior']:.0f} Hm {h['middle']:.0f} Hp {h['posterior']:.0f} mm"
        if not vertebra.complete:
            detail = "\ncut (incomplete)"
        grade = vertebra.final_grade
        grade_text = f"G{grade}" if grade is not None else ("not assessed" if vertebra.not_assessed_reason else "–")
        # Beside the image, not on it: a narrow image (a long spine) leaves no room for labels inside.
        labels.append(ax.text(1.02, s_c, f"{vertebra.level} {grade_text}{detail}", color="white", fontsize=6.5,
                              va="center", ha="left", transform=ax.get_yaxis_transform(), clip_on=False,
                              bbox={"boxstyle": "round,pad=0.2", "fc": color, "ec": "none", "alpha": 0.9}))
    ax.set_xlim(view.u[-1], view.u[0])
    ax.set_ylim(view.s[-1], view.s[0])
    ax.set_xlabel("anterior  ←  offset from the spine's centre line (mm)  →  posterior", fontsize=7)
    ax.set_ylabel("distance along the spine (mm), cranial at the top", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title("Sagittal view straightened along the spine (curved reformat through the body centroids)",
                 fontsize=8)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color="#616161", lw=1.4, marker="o", ms=3.2, mfc="white",
                      label="Ha / Hm / Hp: anterior (left), middle, posterior height, in the grade's colour")]
    handles += [Patch(facecolor=GRADE_COLORS[grade], label=GRADE_TEXT[grade]) for grade in (0, 1, 2, 3, None)]
    handles.append(Patch(facecolor="#00e5ff", alpha=0.4, label="density region (filled: screening level)"))
    legend = fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=6.5, frameon=False,
                        bbox_to_anchor=(0.5, 0.0))
    # The legend gets its measured height under the image.
    legend_in = legend.get_window_extent(fig.canvas.get_renderer()).height / fig.dpi + 0.1
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    separate_labels(fig, ax, labels)
    return fig


def _png(fig, dpi: int = 130) -> bytes:
    import matplotlib.pyplot as plt

    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Header and table
# --------------------------------------------------------------------------------------------------------------
def header_from_ct(ct: Volume | None) -> dict:
    """Patient/study fields for the report header, read from the first source DICOM file when there is one."""
    header = {"patient_name": "", "patient_id": "", "study_date": "", "institution": "", "series_description": "",
              "deidentified": False}
    files = (ct.meta.get("dicom_files") if ct is not None else None) or []
    if files:
        import pydicom

        header.update(report_header(pydicom.dcmread(files[0], stop_before_pixels=True)))
    return header


def report_header(dataset) -> dict:
    """Report header fields taken from a DICOM dataset (de-identified or not): what a report's header shows."""
    return {
        "patient_name": str(dataset.get("PatientName", "") or "").replace("^", " ").strip(),
        "patient_id": str(dataset.get("PatientID", "") or ""),
        "study_date": readable_date(str(dataset.get("StudyDate", "") or "")),
        "institution": str(dataset.get("InstitutionName", "") or ""),
        "series_description": str(dataset.get("SeriesDescription", "") or ""),
        "deidentified": str(dataset.get("PatientIdentityRemoved", "")) == "YES",
    }


def readable_date(value: str) -> str:
    """A DICOM date (YYYYMMDD) as YYYY-MM-DD; anything else as it is."""
    value = value.strip()
    try:
        return datetime.datetime.strptime(value, "%Y%m%d").date().isoformat()
    except ValueError:
        return value


def _fmt(value, digits=1, suffix=""):
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def vertebra_status(case: CaseResult, vertebra) -> str:
    """The vertebra's status in the report: "graded", or why it has no grade (cut, failed quality control and
    which check, withheld with the case, outside the graded levels)."""
    if not vertebra.complete:
        return f"cut: {vertebra.incomplete_reason or 'by the field of view'}"
    quality = case.quality.vertebra(vertebra.label) if case.quality is not None else None
    if quality is not None and quality.problems:
        return "failed quality control: " + "; ".join(quality.problems)
    if vertebra.final_grade is None:
        if case.quality is not None and case.quality.findings_withheld:
            return f"not assessed ({case_status(case)[0]})"
        return f"not assessed: {vertebra.not_assessed_reason or vertebra.grade_reason or 'no grade'}"
    return "graded" + (" by the reviewer" if vertebra.grade_override is not None else "")


def vertebra_rows(case: CaseResult) -> list[dict]:
    rows = []
    for v in sorted(case.vertebrae, key=lambda v: labels_mod.rank(v.label)):
        h = v.heights_mm or {}
        ratios = v.ratios or {}
        graded = v.final_grade is not None
        loss = "–"
        if graded and v.height_loss is not None:
            loss = f"{loss_percent(v.height_loss)} %"
            if v.withheld_for_voxel_size is not None:
                loss += f" ({100 * v.withheld_for_voxel_size:.0f} % not counted)"
        density_usable = density_not_usable(case, v)
        rows.append({
            "level": v.level,
            "status": vertebra_status(case, v),
            "ha": _fmt(h.get("anterior")), "hm": _fmt(h.get("middle")), "hp": _fmt(h.get("posterior")),
            "wedge": _fmt(ratios.get("wedge"), 2) if "wedge" in ratios else
            (_fmt(h["anterior"] / h["posterior"], 2) if h.get("anterior") and h.get("posterior") else "–"),
            # A loss is shown only beside the grade it was given for: a withheld grade's loss is no finding.
            "loss": loss,
            "grade": v.final_grade,
            "borderline": v.borderline_in_force,
            "grade_text": "not assessed" if not graded else f"0 {BORDERLINE}" if v.borderline_in_force
            else grade_words(v).replace("grade ", "", 1),
            "morphology": (v.final_morphology or "–") if graded else "–",
            "hu": "–" if v.trabecular_hu is None else
            f"{v.trabecular_hu:.0f} [{_fmt(v.trabecular_hu_iqr, 0)}]" + (
                "" if density_usable is None else f" (not used: {density_usable})"),
            "reviewed": "yes" if v.reviewed else "",
            "explanation": grade_explanation(v),
        })
        status, why = rows[-1]["status"], rows[-1]["explanation"]
        # One line per vertebra where its grade (or its lack) is explained; a reason the status already gives is
        # not said twice.
        rows[-1]["explained"] = f"{v.level}: {status}" + ("" if why in status or why.split(": ", 1)[-1] in status
                                                           else f"; {why}")
    return rows


TABLE_COLUMNS = (("level", "Level"), ("status", "Status"), ("ha", "Ha mm"), ("hm", "Hm mm"), ("hp", "Hp mm"),
                 ("wedge", "Ha/Hp"), ("loss", "Height loss"), ("grade_text", "Genant grade"),
                 ("morphology", "Morphology"), ("hu", "Trabecular HU median [IQR]"), ("reviewed", "Reviewed"))


# --------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------
CSS = """
body{font-family:"Helvetica Neue",Arial,sans-serif;color:#212121;max-width:980px;margin:24px auto;padding:0 16px;
font-size:14px;line-height:1.45}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;border-bottom:1px solid #cfd8dc;padding-bottom:3px;margin-top:26px}
.meta{color:#546e7a;font-size:12.5px}.box{border-left:6px solid;padding:10px 14px;background:#fafafa;margin:14px 0}
.statement{font-size:17px;font-weight:600}.conf{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;
font-size:12px;margin-left:6px}table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{border:1px solid #cfd8dc;padding:4px 6px;text-align:center}th{background:#eceff1}
td.grade{color:#fff;font-weight:600}ul{margin:4px 0 4px 18px;padding:0}.small{font-size:12px;color:#546e7a}
.cols{display:flex;gap:18px;align-items:flex-start}.cols>div{flex:1}.cols>div.wide{flex:2}img{max-width:100%}
@media print{body{margin:0}.noprint{display:none}}
.research{font-size:12.5px;font-weight:600;color:#6a1b9a;margin:4px 0}
.quality{border:2px solid #c62828;background:#ffebee;color:#b71c1c;font-weight:600;padding:8px 12px;margin:10px 0}
"""


def _html_list(items) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(str(item))}</li>" for item in items) + "</ul>"


def build_html(case: CaseResult, screening, header: dict, sagittal_png: bytes | None, scale_png: bytes | None) -> str:
    rec = screening.recommendation
    color = ACTION_COLORS.get(rec.action, "#546e7a")
    conf_color = {"high": "#2e7d32", "moderate": "#ef6c00", "low": "#c62828"}.get(rec.confidence, "#546e7a")
    who = header.get("patient_name") or ("de-identified" if header.get("deidentified") else "not given")
    pid = header.get("patient_id") or "–"
    study_date = header.get("study_date") or "–"
    contrast = screening.contrast
    kvp = "unknown" if screening.kvp is None else f"{screening.kvp:g} kVp"
    rows = vertebra_rows(case)
    table = ["<table><tr>" + "".join(f"<th>{html.escape(title)}</th>" for _, title in TABLE_COLUMNS) + "</tr>"]
    for row in rows:
        cells = []
        for key, _ in TABLE_COLUMNS:
            value = html.escape(str(row[key]))
            if key == "grade_text":
                colour = BORDERLINE_COLOR if row["borderline"] else GRADE_COLORS.get(row["grade"], "#757575")
                cells.append(f'<td class="grade" style="background:{colour}">{value}</td>')
            else:
                cells.append(f"<td>{value}</td>")
        table.append("<tr>" + "".join(cells) + "</tr>")
    table.append("</table>")
    density_lines = []
    if screening.level is not None:
        d = screening.densities[screening.level]
        density_lines.append(f"Screening level <b>{html.escape(screening.level)}</b>: median "
                             f"<b>{screening.measured_hu:.0f} HU</b> (IQR {d.iqr_hu:.0f} HU, "
                             f"{d.p25_hu:.0f}–{d.p75_hu:.0f}; {d.voxels} voxels, {d.volume_ml:.1f} ml; region "
                             f"{d.erosion_mm:g} mm inside the cortex, posterior {100 * d.posterior_exclusion:.0f} % "
                             "excluded)")
        if screening.corrected_hu != screening.measured_hu:
            density_lines.append(f"Contrast-corrected: <b>{screening.corrected_hu:.0f} HU</b> "
                                 f"(−{contrast.offset_hu:g} HU, {html.escape(contrast.phase)} phase)")
        band = screening.thresholds.band(screening.corrected_hu)
        density_lines.append(f"Verdict: <b>{html.escape(band.verdict)}</b>: {html.escape(band.cut_off)}")
    density_lines.append(f"Why this level: {html.escape(screening.level_reason)}")
    density_lines.append(f"Contrast: {html.escape(contrast_words(contrast))} — {html.escape(contrast.note)}")
    density_lines.append(f"Tube voltage: {html.escape(kvp)}")
    image = (f'<img alt="Straightened sagittal view of the spine" src="data:image/png;base64,'
             f'{base64.b64encode(sagittal_png).decode()}">' if sagittal_png else "<p>No image available.</p>")
    scale = (f'<img alt="Bone density against thresholds" src="data:image/png;base64,'
             f'{base64.b64encode(scale_png).decode()}">' if scale_png else "")
    warnings = list(case.warnings)
    quality_banner = ""
    if quality_headline(case):
        failed = "".join(f"<li>{html.escape(item)}</li>" for item in case.quality.failed_checks)
        quality_banner = (f'<div class="quality">{html.escape(quality_headline(case))}'
                          f'{"<ul>" + failed + "</ul>" if failed else ""}</div>\n')
    levels_text = levels_line(case)
    levels_html = "" if levels_text is None else (
        f'<div class="levels" style="font-weight:{"bold" if case.levels_status in LEVELS_DOUBTFUL else "normal"};'
        f'color:{"#c62828" if case.levels_status in LEVELS_DOUBTFUL else "inherit"}">{html.escape(levels_text)}</div>')
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    t = screening.thresholds
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Vertebral fracture and bone density screening</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>
<h1>Opportunistic vertebral fracture and bone density screening</h1>
<div class="research">{html.escape(RESEARCH_USE)}</div>
{quality_banner}<div class="meta">Patient: <b>{html.escape(who)}</b> &nbsp;·&nbsp; ID: {html.escape(pid)} &nbsp;·&nbsp;
Study date: {html.escape(study_date)} &nbsp;·&nbsp; Series: {html.escape(header.get("series_description") or "–")}
&nbsp;·&nbsp; Generated {generated} by VertebralFracture {html.escape(__version__)}</div>
{levels_html}<div class="box" style="border-color:{color}"><div class="statement">{html.escape(rec.statement)}</div>
<div>Confidence: <span class="conf" style="background:{conf_color}">{html.escape(rec.confidence)}</span></div>
<div><b>Based on</b>{_html_list(rec.reasons or ["no measurement"])}</div>
<div><b>Confidence reflects</b>{_html_list(rec.confidence_reasons)}</div></div>
<h2>Bone density</h2>{scale}<div>{"<br>".join(density_lines)}</div>
<h2>Spine (sagittal, straightened)</h2>
<div class="cols"><div class="wide">{image}</div><div class="small">Each level: six morphometry points (white circles:
superior and inferior endplate at the anterior, middle and posterior cortex), the anterior, middle and
posterior heights (Ha, Hm, Hp) as lines, and the Genant grade (G0 normal, G1 mild, G2 moderate, G3 severe;
height-loss bands {html.escape(BANDS_TEXT)}). Colours: <span style="color:{GRADE_COLORS[0]}">■ grade 0</span>
<span style="color:{GRADE_COLORS[1]}">■ 1</span> <span style="color:{GRADE_COLORS[2]}">■ 2</span>
<span style="color:{GRADE_COLORS[3]}">■ 3</span> <span style="color:{GRADE_COLORS[None]}">■ not graded</span>.
Cyan: the trabecular regions where bone density was measured (filled: the screening level). The image follows
the spine's curve, so distances along it are true lengths; anterior is on the left.</div></div>
<h2>Per vertebra</h2>{"".join(table)}
<div class="small">Height loss: the loss the grade was given for ({html.escape(BANDS_TEXT)}).</div>
<h2>Grades explained</h2>{_html_list(row["explained"] for row in rows)}
<h2>Caveats</h2>{_html_list(screening.caveats + warnings)}
<h2>Method</h2><div class="small">Trabecular attenuation: median HU inside the vertebral body, at least
{screening.roi.erosion_mm:g} mm below its surface (away from the cortex and endplates), the posterior
{100 * screening.roi.posterior_exclusion:.0f} % of the depth excluded (basivertebral vein). Thresholds:
Pickhardt et al., Ann Intern Med 2013 (L1 ≤ {screening.thresholds.specific_hu:g} HU &gt; 90 % specific,
≤ {screening.thresholds.sensitive_hu:g} HU 90 % sensitive for DXA osteoporosis); bands
&lt; {t.osteoporosis_below_hu:g} / {t.osteoporosis_below_hu:g}–{t.normal_from_hu:g} / ≥ {t.normal_from_hu:g} HU.
Contrast correction as in TotalSegmentator (arterial +{t.contrast_offset_hu["arterial"]:g} HU, portal venous
+{t.contrast_offset_hu["portal venous"]:g} HU). Fracture grading: Genant semi-quantitative method
(Genant et al., JBMR 1993). This is a screening aid from a CT acquired for another purpose; it does not replace
DXA or a radiologist's reading.</div>
<div class="research">{html.escape(RESEARCH_USE)}</div>
</body></html>
"""


# --------------------------------------------------------------------------------------------------------------
# PDF (matplotlib only)
# --------------------------------------------------------------------------------------------------------------
PDF_COLUMNS = (("level", "Level"), ("status", "Status"), ("ha", "Ha mm"), ("hm", "Hm mm"), ("hp", "Hp mm"),
               ("wedge", "Ha/Hp"), ("loss", "Height loss"), ("grade_text", "Grade"), ("morphology", "Morphology"),
               ("hu", "HU median [IQR]"))


def short_status(status: str) -> str:
    """The table's status word ("graded", "cut", "failed quality control", "not assessed"); the reasons are listed
    under the table."""
    return status.split(":")[0].split(" (")[0]


def short_hu(text: str) -> str:
    return text.split(" (not used")[0] + (" (not used)" if "(not used" in text else "")


def write_pdf(path: Path, case: CaseResult, screening, header: dict, sagittal_fig_factory,
              scale_png: bytes | None) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    rec = screening.recommendation
    with atomic_path(path) as temporary, PdfPages(temporary) as pdf:
        flow = PdfFlow(pdf, RESEARCH_USE)
        flow.text("Opportunistic vertebral fracture and bone density screening", size=14, fontweight="bold")
        who = header.get("patient_name") or ("de-identified" if header.get("deidentified") else "not given")
        flow.text(f"Patient: {who}   ID: {header.get('patient_id') or '–'}   Study date: "
                  f"{header.get('study_date') or '–'}   VertebralFracture {__version__}", size=8, color="#546e7a")
        flow.text(RESEARCH_USE, size=8.5, fontweight="bold", color="#6a1b9a")
        status, reason = case_status(case)
        flow.text(f"Status: {status}" + (f" ({reason})" if reason else ""), size=8.5, fontweight="bold",
                  color="#212121" if status == "assessed" else "#b71c1c")
        if quality_headline(case):
            flow.text(quality_headline(case), size=10, fontweight="bold", color="#b71c1c")
        levels_text = levels_line(case)
        if levels_text:
            doubtful = case.levels_status in LEVELS_DOUBTFUL
            flow.text(levels_text, size=7.5, fontweight="bold" if doubtful else "normal",
                      color="#c62828" if doubtful else "#546e7a")
        flow.space(0.012)
        flow.text(rec.statement, size=10.5, fontweight="bold", color=ACTION_COLORS.get(rec.action, "black"))
        flow.text(f"Confidence: {rec.confidence}", size=9, fontweight="bold")
        for title, items in (("Based on:", rec.reasons), ("Confidence reflects:", rec.confidence_reasons)):
            flow.text(title, size=8.5, fontweight="bold")
            for item in items:
                flow.text("• " + item, size=7.5, indent=0.02, gap=0.003)
        if scale_png is not None:
            flow.space(0.006)
            flow.image(scale_png, 0.13)
        rows = vertebra_rows(case)
        cells = [[short_status(row[key]) if key == "status" else short_hu(row[key]) if key == "hu" else str(row[key])
                  for key, _ in PDF_COLUMNS] for row in rows]
        grade_column = [key for key, _ in PDF_COLUMNS].index("grade_text")
        fills = [[(BORDERLINE_COLOR if row["borderline"] else GRADE_COLORS.get(row["grade"], "#757575"))
                  if c == grade_column else None for c in range(len(PDF_COLUMNS))] for row in rows]
        flow.text("Per vertebra", size=10, fontweight="bold")
        flow.table([title for _, title in PDF_COLUMNS], cells or [["–"] * len(PDF_COLUMNS)],
                   fills or [[None] * len(PDF_COLUMNS)])
        flow.text(GRADE_LEGEND, size=7, color="#546e7a")
        flow.text("Grades explained", size=10, fontweight="bold")
        for row in rows:
            flow.text(row["explained"], size=7, indent=0.01, gap=0.002)
        flow.close()

        figure = sagittal_fig_factory()
        if figure is not None:
            pdf.savefig(figure)
            plt.close(figure)
        flow = PdfFlow(pdf, RESEARCH_USE)
        flow.text("Caveats", size=12, fontweight="bold")
        for item in screening.caveats + list(case.warnings):
            flow.text("• " + item, size=8, indent=0.01)
        flow.space(0.015)
        flow.text("Density", size=12, fontweight="bold")
        for line in density_lines(screening):
            flow.text(line, size=8, indent=0.01)
        flow.close()
        info = pdf.infodict()
        info["Title"] = "Vertebral fracture and bone density screening"
        info["Creator"] = f"VertebralFracture {__version__}"


GRADE_LEGEND = (f"Height loss: the loss the grade was given for (Genant bands: {BANDS_TEXT}); Ha, Hm, Hp: anterior, "
                "middle, posterior height; grade colours: green 0 normal, yellow 1 mild, orange 2 moderate, red 3 "
                "severe, grey not graded.")


def density_lines(screening) -> list[str]:
    """The density details in plain text, the same facts as the HTML's density section."""
    lines = []
    if screening.level is not None:
        d = screening.densities[screening.level]
        band = screening.thresholds.band(screening.corrected_hu)
        lines.append(f"Screening level {screening.level}: median {screening.measured_hu:.0f} HU (IQR {d.iqr_hu:.0f} "
                     f"HU, {d.p25_hu:.0f}–{d.p75_hu:.0f}; {d.voxels} voxels, {d.volume_ml:.1f} ml)")
        if screening.corrected_hu != screening.measured_hu:
            lines.append(f"Contrast-corrected: {screening.corrected_hu:.0f} HU")
        lines.append(f"Verdict: {band.verdict}: {band.cut_off}")
    lines.append(f"Why this level: {screening.level_reason}")
    lines.append(f"Contrast: {contrast_words(screening.contrast)} — {screening.contrast.note}")
    lines.append(f"Tube voltage: {'unknown' if screening.kvp is None else f'{screening.kvp:g} kVp'}")
    return lines


def write_clinical_report(case: CaseResult, screening, out_dir: str | Path, labels: Volume | None,
                          ct: Volume | None, header: dict | None = None) -> dict:
    """Write ``report.html`` and ``report.pdf`` into ``out_dir``; returns {name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = header if header is not None else header_from_ct(ct)
    have_centroids = any(v.centroid_ras is not None for v in case.vertebrae)

    def sagittal(width_in):
        return render_straightened(case, ct, labels, width_in=width_in, roi=screening.roi_volume,
                                   screening_level=screening.level)

    sagittal_png = _png(sagittal(6.0)) if have_centroids and (ct is not None or labels is not None) else None
    # No CT, no density: the scale would only show thresholds with nothing on them.
    # Without a density that may be stated the scale would show thresholds with nothing on them.
    stated = screening.level is not None or any(density_not_usable(case, v) is None and v.trabecular_hu is not None
                                                for v in case.vertebrae)
    scale_png = _png(render_density_scale(screening, case), dpi=160) if screening.densities and stated else None
    text = build_html(case, screening, header, sagittal_png, scale_png)
    with atomic_path(out_dir / "report.html") as temporary:
        temporary.write_text(text, encoding="utf-8")
    write_pdf(out_dir / "report.pdf", case, screening, header,
              (lambda: sagittal(7.5)) if sagittal_png else (lambda: None), scale_png)
    return {"report_html": str(out_dir / "report.html"), "report_pdf": str(out_dir / "report.pdf")}

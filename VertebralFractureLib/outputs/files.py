"""Measurement outputs: ``results.json``, ``vertebrae.csv``, a sagittal ``overview.png`` and the label map
``segmentation.nii.gz`` they were measured on.

:func:`write_measure_files` writes into a folder as is (a staging folder of :class:`.outputs.OutputSet`);
:func:`write_measure_outputs` publishes them as one set, so a failure never leaves a partial or mixed set behind.
"""

from __future__ import annotations

import contextlib
import csv
import io as stdio
import textwrap
from pathlib import Path

import numpy as np

from VertebralFractureLib.io import Volume
from VertebralFractureLib.results import HEIGHT_NAMES, POINT_NAMES, CaseResult

GRADE_COLOURS = {None: "#9e9e9e", 0: "#2e7d32", 1: "#f9a825", 2: "#ef6c00", 3: "#c62828"}
HEIGHT_COLOURS = {"anterior": "#00b8d4", "middle": "#ffd600", "posterior": "#d500f9"}

CSV_COLUMNS = (
    ["level", "label", "levels_status", "complete", "genant_grade", "borderline", "morphology", "height_loss",
     "fracture_score"]
    + [f"{name}_height_mm" for name in HEIGHT_NAMES]
    + [
        "wedge_ratio",
        "biconcavity_ratio",
        "crush_ratio",
        "expected_posterior_mm",
        "depth_mm",
        "body_volume_ml",
        "trabecular_hu",
        "trabecular_hu_iqr",
        "grade_override",
        "morphology_override",
        "reviewed",
        "incomplete_reason",
        "not_assessed_reason",
    ]
    + [f"{point}_{axis}_ras" for point in POINT_NAMES for axis in "xyz"]
)


@contextlib.contextmanager
def staged_outputs(out_dir: str | Path):
    """Yield a staging folder; on success its files replace ``out_dir``'s as one set (see :mod:`.outputs`)."""
    from VertebralFractureLib.outputs.publish import OutputSet

    with OutputSet(out_dir) as staging:
        yield staging


LEVELS_STATUS_TEXT = {
    "confirmed": "confirmed by an anatomical anchor in view",
    "conflicting": "NOT CONFIRMED: the anchors in view disagree, the names may be off by one or more levels",
    "unconfirmed": "UNCONFIRMED: nothing in view anchors the count, the names may be off by one or more levels",
    "anchored": "fixed by the user",
    "given": "as named in the given segmentation",
}


LEVELS_DOUBTFUL = ("unconfirmed", "conflicting")
"""Level statuses a reader must be warned about: the names may be off by one or more levels."""


def levels_line(case: CaseResult) -> str | None:
    """One line on how the vertebrae got their names, for every place a reader sees the results."""
    if not case.levels_status:
        return None
    text = LEVELS_STATUS_TEXT.get(case.levels_status, case.levels_status)
    evidence = "; ".join(case.level_evidence)
    return f"Level names {text}" + (f" ({evidence})" if evidence else "")


def case_to_json(case: CaseResult) -> str:
    from VertebralFractureLib.results import json_text

    return json_text(case.to_dict())


def case_to_csv(case: CaseResult) -> str:
    buffer = stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for vertebra in case.vertebrae:
        row = {
            "level": vertebra.level,
            "label": vertebra.label,
            "levels_status": case.levels_status,
            "complete": vertebra.complete,
            "genant_grade": vertebra.genant_grade,
            "borderline": vertebra.borderline_in_force,
            "morphology": vertebra.morphology,
            "height_loss": _round(vertebra.height_loss, 3),
            "fracture_score": _round(vertebra.fracture_score, 3),
            "expected_posterior_mm": _round(vertebra.expected_posterior_mm),
            "depth_mm": _round(vertebra.depth_mm),
            "body_volume_ml": _round(vertebra.body_volume_ml),
            "trabecular_hu": _round(vertebra.trabecular_hu, 1),
            "trabecular_hu_iqr": _round(vertebra.trabecular_hu_iqr, 1),
            "grade_override": vertebra.grade_override,
            "morphology_override": vertebra.morphology_override,
            "reviewed": vertebra.reviewed,
            "incomplete_reason": vertebra.incomplete_reason,
            "not_assessed_reason": vertebra.not_assessed_reason,
            "wedge_ratio": _round(vertebra.ratios.get("wedge"), 3),
            "biconcavity_ratio": _round(vertebra.ratios.get("biconcavity"), 3),
            "crush_ratio": _round(vertebra.ratios.get("crush"), 3),
        }
        for name in HEIGHT_NAMES:
            row[f"{name}_height_mm"] = _round(vertebra.heights_mm[name]) if vertebra.heights_mm else None
        for point in POINT_NAMES:
            for axis, value in zip("xyz", (vertebra.points_ras or {}).get(point, [None] * 3)):
                row[f"{point}_{axis}_ras"] = _round(value)
        writer.writerow(row)
    return buffer.getvalue()


def _round(value, digits=2):
    return None if value is None else round(float(value), digits)


def write_measure_files(case: CaseResult, folder: str | Path, labels: Volume, ct: Volume | None = None,
                        segmentation: bool = True, labels_file: bytes | None = None) -> dict:
    """Write results.json, vertebrae.csv, overview.png (and the label map as segmentation.nii.gz) into
    ``folder``; returns {name: path}. ``labels_file``: the bytes of a .nii.gz that holds ``labels`` exactly (the
    label map given, read as it is stored: :attr:`.io.LabelMap.stored_file`), written as the segmentation instead of
    encoding the voxels again."""
    from VertebralFractureLib import io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    if segmentation and labels_file is not None:
        with io.atomic_path(folder / "segmentation.nii.gz") as temporary:
            temporary.write_bytes(labels_file)
        written["segmentation"] = folder / "segmentation.nii.gz"
    elif segmentation:
        io.write_nifti(labels.with_array(labels.array.astype("int16", copy=False)), folder / "segmentation.nii.gz")
        written["segmentation"] = folder / "segmentation.nii.gz"
    io.write_text_atomic(folder / "results.json", case_to_json(case))
    io.write_text_atomic(folder / "vertebrae.csv", case_to_csv(case))
    render_overview(case, labels, ct, folder / "overview.png")
    written.update({name: folder / name for name in ("results.json", "vertebrae.csv", "overview.png")})
    return written


def write_measure_outputs(case: CaseResult, out_dir: str | Path, labels: Volume, ct: Volume | None = None) -> dict:
    """Publish segmentation.nii.gz, results.json, vertebrae.csv and overview.png as the one set in ``out_dir``
    (any earlier set there, a report included, is replaced); returns {name: path}."""
    from VertebralFractureLib.outputs.publish import OutputSet

    output_set = OutputSet(out_dir)
    with output_set as staging:
        written = write_measure_files(case, staging, labels, ct)
    return {name: output_set.path(Path(path).name) for name, path in written.items()}


def spine_plane(case: CaseResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, anterior, superior) of a sagittal plane through the measured bodies (RAS)."""
    measured = [v for v in case.vertebrae if v.axes_ras and v.centroid_ras]
    centroids = np.array([v.centroid_ras for v in measured])
    superior = np.mean([v.axes_ras["superior"] for v in measured], axis=0)
    superior /= np.linalg.norm(superior)
    anterior = np.mean([v.axes_ras["anterior"] for v in measured], axis=0)
    anterior -= np.dot(anterior, superior) * superior
    anterior /= np.linalg.norm(anterior)
    return np.median(centroids, axis=0), anterior, superior


def _sample_plane(volume: Volume, origin, anterior, superior, u_range, v_range, pixel_mm, order):
    from scipy import ndimage

    u = np.arange(u_range[0], u_range[1], pixel_mm)
    v = np.arange(v_range[1], v_range[0], -pixel_mm)
    grid_v, grid_u = np.meshgrid(v, u, indexing="ij")
    world = origin + grid_u[..., None] * anterior + grid_v[..., None] * superior
    ijk = volume.world_to_ijk(world.reshape(-1, 3))
    values = ndimage.map_coordinates(volume.array, ijk.T, order=order, mode="constant", cval=-1024 if order else 0)
    return values.reshape(grid_u.shape), u, v


def overview_title(case: CaseResult, width: int = 70) -> list[str]:
    """Lines written across the top of the overview: the quality-control headline (when findings are withheld) and
    the research-use line; the same strings the other outputs carry."""
    from VertebralFractureLib.morphometry.qc import headline
    from VertebralFractureLib.screening.rules import RESEARCH_USE

    lines = textwrap.wrap(headline(case), width) if headline(case) else []
    return lines + textwrap.wrap(RESEARCH_USE, width)


def nothing_measured_statement(case: CaseResult) -> str:
    """What the outputs say when no vertebra could be measured (a cervical-only map, a map of bodies and discs
    without level names): the levels found and why each was not measured."""
    by_reason: dict[str, list[str]] = {}
    for vertebra in case.vertebrae:
        reason = (vertebra.incomplete_reason or vertebra.not_assessed_reason or "not measured").split(" (")[0]
        if reason.startswith(f"{vertebra.level}: "):
            reason = reason[len(vertebra.level) + 2:]
        by_reason.setdefault(reason, []).append(vertebra.level)
    found = "; ".join(f"{', '.join(levels)}: {reason}" for reason, levels in by_reason.items())
    return f"No vertebra could be measured, so nothing is graded ({found or 'no vertebra level in the label map'})"


def _render_statement(case: CaseResult, statement: str, destination: str | Path) -> list[str]:
    """An overview image holding only a statement (nothing to draw), with the usual title lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(6.0, 3.0), dpi=110, facecolor="black")
    title = overview_title(case, width=int(6.0 * 72 / (0.62 * 7)))
    figure.text(0.5, 0.995, "\n".join(title), ha="center", va="top", fontsize=7, fontweight="bold", color="white",
                bbox={"boxstyle": "square,pad=0.3", "facecolor": "#4a148c", "alpha": 0.9, "edgecolor": "none"})
    figure.text(0.5, 0.45, textwrap.fill(statement, 70), ha="center", va="center", fontsize=8, color="white")
    with open(destination, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, facecolor="black")
    plt.close(figure)
    return title
def separate_labels(fig, ax, labels) -> None:
    """Move level labels apart along the image's vertical where their measured boxes would overlap, keeping them
    within the image's height (the font shrinks when they cannot all fit). Labels are text artists centred
    vertically on their vertebra."""
    if not labels:
        return
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)

    def display_y(label):
        return ax.transData.transform((0.0, label.get_position()[1]))[1]

    order = sorted(labels, key=display_y, reverse=True)  # top of the image first
    wanted = [display_y(label) for label in order]
    while True:
        # The text's extent and its box's padding (about half the font size above and below).
        heights = [label.get_window_extent(renderer).height + label.get_fontsize() * fig.dpi / 72 * 0.6
                   for label in order]
        if sum(heights) <= axes_box.height or order[0].get_fontsize() <= 4.5:
            break
        for label in order:
            label.set_fontsize(label.get_fontsize() - 0.5)
    centres = list(wanted)
    for i in range(1, len(order)):  # top to bottom: each below the one above
        centres[i] = min(centres[i], centres[i - 1] - (heights[i - 1] + heights[i]) / 2)
    centres[-1] = max(centres[-1], axes_box.y0 + heights[-1] / 2)
    for i in range(len(order) - 2, -1, -1):  # bottom to top: each above the one below, none below the image
        centres[i] = max(centres[i], centres[i + 1] + (heights[i] + heights[i + 1]) / 2)
    to_data = ax.transData.inverted()
    for label, centre in zip(order, centres):
        label.set_y(to_data.transform((0.0, centre))[1])
        # Nor across the figure's left or right edge (a long reason beside a vertebra near the edge).
        box = label.get_window_extent(renderer)  # the text; its rounded box pads it by a few points
        margin = 6.0
        shift = max(0.0, fig.bbox.x0 + margin - box.x0) - max(0.0, box.x1 - (fig.bbox.x1 - margin))
        if shift and label.get_transform() is ax.transData:
            x_display = ax.transData.transform((label.get_position()[0], 0.0))[0] + shift
            label.set_x(to_data.transform((x_display, 0.0))[0])


def _overview_legend(figure):
    """Legend strip under the overview: what the line colours (heights) and label colours (grades) mean."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=HEIGHT_COLOURS[name], marker="o", markersize=3.5, linewidth=1.4,
                      label=f"{short} {name} height") for name, short in zip(HEIGHT_NAMES, ("Ha", "Hm", "Hp"))]
    handles += [Patch(facecolor=GRADE_COLOURS[grade], label=text) for grade, text in
                ((0, "G0 normal"), (1, "G1 mild"), (2, "G2 moderate"), (3, "G3 severe"), (None, "not graded"))]
    return figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=6.5, frameon=False,
                         labelcolor="white", bbox_to_anchor=(0.5, 0.0), handlelength=1.6, columnspacing=1.0)


def render_overview(
    case: CaseResult, labels: Volume, ct: Volume | None, destination: str | Path, pixel_mm: float = 0.5
) -> list[str]:
    """Sagittal view through the spine with the six points, the three heights and the grade of each vertebra.

    The image shows the patient's anterior to the left and superior up, as radiologists read a sagittal CT. Across
    its top: :func:`overview_title` (returned). A vertebra whose grade quality control withheld is labelled
    "not assessed".
    """
    # The figure API without pyplot: no global figure state, no GUI backend chosen, a faster import.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    measured = [v for v in case.vertebrae if v.axes_ras and v.centroid_ras]
    if not measured:
        return _render_statement(case, nothing_measured_statement(case), destination)
    origin, anterior, superior = spine_plane(case)
    centroids = np.array([v.centroid_ras for v in measured])
    along = (centroids - origin) @ superior
    across = (centroids - origin) @ anterior
    u_range = (across.min() - 60, across.max() + 95)
    v_range = (along.min() - 35, along.max() + 35)
    if ct is not None:
        image, u, v = _sample_plane(ct, origin, anterior, superior, u_range, v_range, pixel_mm, order=1)
        display = np.clip((image + 250) / 1500.0, 0, 1)
    else:
        image, u, v = _sample_plane(labels, origin, anterior, superior, u_range, v_range, pixel_mm, order=0)
        display = np.where(image > 0, 0.75, 0.08)
    height_px, width_px = display.shape
    width_in, image_in = max(4.5, width_px / 110), max(5.0, height_px / 110)
    figure = Figure(figsize=(width_in, image_in), dpi=110)
    FigureCanvasAgg(figure)
    # Across the top a banner, below the image a legend: each gets its measured height of the figure, so neither
    # covers the image (and the top vertebra's label).
    withheld = case.quality is not None and case.quality.findings_withheld
    font_size = 8 if withheld else 7
    # About 0.6 em per character: the lines fit the figure's width.
    title = overview_title(case, width=int(width_in * 72 / (0.62 * font_size)))
    banner = figure.text(0.5, 1.0, "\n".join(title), ha="center", va="top", fontsize=font_size,
                         fontweight="bold", color="white",
                         bbox={"boxstyle": "square,pad=0.3", "facecolor": "#b71c1c" if withheld else "#4a148c",
                               "alpha": 0.9, "edgecolor": "none"})
    renderer = figure.canvas.get_renderer()
    # The text's own extent plus the box's padding (0.3 em above and below).
    banner_in = banner.get_window_extent(renderer).height / figure.dpi + 2 * 0.3 * font_size / 72 + 0.06
    legend = _overview_legend(figure)
    legend_in = legend.get_window_extent(renderer).height / figure.dpi + 0.08
    total_in = image_in + banner_in + legend_in
    figure.set_size_inches(width_in, total_in)
    banner.set_position((0.5, 1.0 - 0.02 / total_in))
    figure.set_facecolor("black")
    axes = figure.add_axes((0, legend_in / total_in, 1, image_in / total_in))
    # Anterior to the left: flip the u axis.
    axes.imshow(display[:, ::-1], cmap="gray", vmin=0, vmax=1, extent=(u[-1], u[0], v[-1], v[0]), aspect="equal")
    axes.set_xlim(u[-1], u[0])
    axes.set_ylim(v[-1], v[0])
    placed_labels = []
    for vertebra in measured:
        colour = GRADE_COLOURS.get(vertebra.final_grade, GRADE_COLOURS[None])
        centre = np.array(vertebra.centroid_ras) - origin
        label_u, label_v = centre @ anterior, centre @ superior
        if vertebra.points_ras:
            for name in HEIGHT_NAMES:
                top = np.array(vertebra.points_ras[f"superior_{name}"]) - origin
                bottom = np.array(vertebra.points_ras[f"inferior_{name}"]) - origin
                axes.plot(
                    [top @ anterior, bottom @ anterior],
                    [top @ superior, bottom @ superior],
                    color=HEIGHT_COLOURS[name],
                    linewidth=1.4,
                )
                axes.plot(
                    [top @ anterior, bottom @ anterior],
                    [top @ superior, bottom @ superior],
                    "o",
                    color=HEIGHT_COLOURS[name],
                    markersize=3.5,
                    markeredgecolor="black",
                    markeredgewidth=0.4,
                )
            heights = vertebra.heights_mm
            grade_text = "not assessed" if vertebra.final_grade is None else (
                f"G{vertebra.final_grade}"
                f"{'' if vertebra.final_morphology in (None, 'normal') else ' ' + vertebra.final_morphology}")
            text = (
                f"{vertebra.level}  {grade_text}\n"
                f"Ha {heights['anterior']:.1f} Hm {heights['middle']:.1f} Hp {heights['posterior']:.1f}"
            )
        else:
            # The label stands beside the image: the reason without its figures (results.json keeps them), wrapped.
            reason = (vertebra.incomplete_reason or "").split(" (")[0]
            text = f"{vertebra.level}  not graded\n" + textwrap.fill(reason, width=28)
        placed = axes.text(
            label_u + 30,
            label_v,
            text,
            color="white",
            fontsize=7,
            va="center",
            ha="right",
            bbox={"boxstyle": "round,pad=0.25", "facecolor": colour, "alpha": 0.85, "edgecolor": "none"},
        )
        placed_labels.append(placed)
    separate_labels(figure, axes, placed_labels)
    axes.text(u[-1] - 2, v[0] - 2, "A", color="white", fontsize=9, ha="left", va="top")
    axes.text(u[0] + 2, v[0] - 2, "P", color="white", fontsize=9, ha="right", va="top")
    if case.levels_status and case.levels_status != "confirmed":
        axes.text((u[0] + u[-1]) / 2, v[-1] + 2, f"level names {case.levels_status}", color="white", fontsize=8,
                  ha="center", va="bottom",
                  bbox={"boxstyle": "round,pad=0.25", "facecolor": "#ef6c00" if case.levels_status in LEVELS_DOUBTFUL
                        else "#546e7a", "alpha": 0.9, "edgecolor": "none"})
    axes.set_axis_off()
    with open(destination, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, facecolor="black")
    return title

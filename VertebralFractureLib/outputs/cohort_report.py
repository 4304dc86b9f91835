"""Cohort report of a batch: ``cohort.html`` with its figures beside it as PNG files.

What a clinician or a study lead reads without opening a case folder: how many cases were screened, how many the
quality gate refused and why, how many failed and why, the prevalence of vertebral fractures by grade and by level,
the recommendations by action and reason, the trabecular attenuation by level against the screening thresholds,
and the batch's throughput. Built from the cohort tables' rows (:mod:`.cohort`), so it says what the tables say.
"""

from __future__ import annotations

import collections
import datetime
import html
from pathlib import Path

from VertebralFractureLib import __version__
from VertebralFractureLib.io import atomic_path

FIGURES = {
    "fractures": "cohort_fractures_by_level.png",
    "density": "cohort_trabecular_hu_by_level.png",
    "recommendations": "cohort_recommendations.png",
}
GRADE_COLORS = {1: "#f9a825", 2: "#ef6c00", 3: "#c62828"}
GRADE_NAMES = {0: "normal", 1: "mild", 2: "moderate", 3: "severe"}
ACTION_ORDER = ("refer", "dxa", "consider", "none", "indeterminate")
ACTION_COLORS = {"refer": "#c62828", "dxa": "#ef6c00", "consider": "#f9a825", "none": "#2e7d32",
                 "indeterminate": "#546e7a"}
CASE_FIELDS = ["case", "status", "reason", "qc_failed_checks", "graded_vertebrae", "worst_grade",
               "recommendation_action", "recommendation_reasons", "seconds", "worker", "worker_peak_memory_mb"]
VERTEBRA_FIELDS = ["case_status", "level", "final_grade", "trabecular_hu"]
MIN_VALUES_FOR_BOX = 3
"""A level's attenuation is drawn as a box from this many vertebrae on; fewer are drawn as points."""


def _level_order(levels) -> list[str]:
    from VertebralFractureLib.io.labels import label_from_level, rank

    def key(level):
        try:
            return rank(label_from_level(level))
        except ValueError:
            return 1e9

    return sorted(set(levels), key=key)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


GENERATOR = f"VertebralFractureLib {__version__} cohort report"
"""Written into cohort.html and its figures: a later batch replaces only files that carry it."""


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", metadata={"Software": GENERATOR})
    return path


def written_here(path: Path) -> bool:
    """Whether ``path`` (cohort.html or one of its figures) was written by this program (its generator mark lies in
    the HTML head, in the PNG's text chunk before the pixels)."""
    try:
        with open(path, "rb") as handle:
            return b"VertebralFractureLib" in handle.read(65536)
    except OSError:
        return False


def fractures_figure(vertebrae: list[dict], path: Path) -> Path:
    """Share of graded vertebrae with a fracture, per level, stacked by Genant grade (counts on the bars)."""
    graded = [v for v in vertebrae if v.get("final_grade") is not None]
    levels = _level_order(v["level"] for v in graded)
    figure = _figure(max(6.0, 0.45 * len(levels) + 2), 3.6)
    axes = figure.add_subplot()
    if not levels:
        axes.text(0.5, 0.5, "no graded vertebra", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return _save(figure, path)
    totals = collections.Counter(v["level"] for v in graded)
    bottom = [0.0] * len(levels)
    for grade in (1, 2, 3):
        counts = collections.Counter(v["level"] for v in graded if v["final_grade"] == grade)
        shares = [100.0 * counts[level] / totals[level] for level in levels]
        axes.bar(levels, shares, bottom=bottom, color=GRADE_COLORS[grade], label=f"grade {grade} {GRADE_NAMES[grade]}")
        bottom = [b + s for b, s in zip(bottom, shares)]
    for x, level in enumerate(levels):
        axes.text(x, bottom[x] + 1, f"n={totals[level]}", ha="center", va="bottom", fontsize=7)
    axes.set_ylabel("fractured vertebrae (%)")
    axes.set_ylim(0, max(10.0, max(bottom) * 1.25))
    axes.set_title("Vertebral fractures by level (Genant grade >= 1 among graded vertebrae)")
    axes.legend(fontsize=8, loc="upper left")
    return _save(figure, path)


def density_figure(vertebrae: list[dict], path: Path, thresholds) -> Path:
    """Trabecular HU per level (boxes, or points for few values) with the screening thresholds drawn."""
    measured = [v for v in vertebrae if v.get("trabecular_hu") is not None]
    levels = _level_order(v["level"] for v in measured)
    figure = _figure(max(6.0, 0.45 * len(levels) + 2), 3.8)
    axes = figure.add_subplot()
    if not levels:
        axes.text(0.5, 0.5, "no trabecular measurement (no CT, or --no-report)", ha="center", va="center",
                  transform=axes.transAxes)
        axes.set_axis_off()
        return _save(figure, path)
    values = [[v["trabecular_hu"] for v in measured if v["level"] == level] for level in levels]
    boxed = [i for i, vals in enumerate(values) if len(vals) >= MIN_VALUES_FOR_BOX]
    if boxed:
        axes.boxplot([values[i] for i in boxed], positions=boxed, widths=0.6, showfliers=True)
    for i, vals in enumerate(values):
        if i not in boxed:
            axes.plot([i] * len(vals), vals, "o", color="#37474f", markersize=4)
    axes.set_xticks(range(len(levels)), levels)
    axes.set_xlim(-0.7, len(levels) - 0.3)
    for value, style, text in (
            (thresholds.osteoporosis_below_hu, "-", f"{thresholds.osteoporosis_below_hu:g} HU osteoporosis below"),
            (thresholds.normal_from_hu, "-", f"{thresholds.normal_from_hu:g} HU normal from"),
            (thresholds.specific_hu, "--", f"{thresholds.specific_hu:g} HU > 90 % specific (L1)"),
            (thresholds.sensitive_hu, ":", f"{thresholds.sensitive_hu:g} HU 90 % sensitive (L1)")):
        axes.axhline(value, linestyle=style, color="#c62828" if style == "-" else "#ef6c00", linewidth=1,
                     label=text)
    axes.set_ylabel("trabecular attenuation (HU, as measured)")
    axes.set_title("Trabecular attenuation by level, with the screening thresholds (non-contrast 120 kVp)")
    axes.legend(fontsize=7, loc="upper right")
    return _save(figure, path)


def recommendations_figure(cases: list[dict], path: Path) -> Path:
    counts = collections.Counter(c.get("recommendation_action") or "not screened" for c in cases
                                 if c.get("status") != "failed")
    names = [a for a in ACTION_ORDER if counts.get(a)] + sorted(a for a in counts if a not in ACTION_ORDER)
    figure = _figure(6.0, 0.4 * max(3, len(names)) + 1.2)
    axes = figure.add_subplot()
    if not names:
        axes.text(0.5, 0.5, "no case screened", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return _save(figure, path)
    axes.barh(names[::-1], [counts[n] for n in names[::-1]],
              color=[ACTION_COLORS.get(n, "#9e9e9e") for n in names[::-1]])
    for y, name in enumerate(names[::-1]):
        axes.text(counts[name], y, f" {counts[name]}", va="center", fontsize=8)
    axes.set_xlabel("cases")
    axes.set_title("Recommendations by action")
    return _save(figure, path)


def _table(header: list[str], rows: list[list]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _percent(part: int, whole: int) -> str:
    return "n/a" if whole == 0 else f"{100.0 * part / whole:.1f} %"


def write_cohort_report(out_dir: Path, cases: list[dict], vertebrae: list[dict], throughput: dict) -> dict:
    """``cohort.html`` and its PNG figures in ``out_dir`` from the cohort tables' rows; returns {name: path}.

    ``throughput``: ``workers`` (description), ``wall_s``, ``analysed`` (cases this run analysed), ``resumed``.
    """
    from VertebralFractureLib.screening.rules import (
        ASSESSED,
        FAILED,
        FINDINGS_WITHHELD,
        QC_FAILED,
        RESEARCH_USE,
        DensityThresholds,
    )

    if not isinstance(cases, list):  # Arrow tables: only the columns the report reads
        cases = cases.select(CASE_FIELDS).to_pylist()
        vertebrae = vertebrae.select(VERTEBRA_FIELDS).to_pylist()
    thresholds = DensityThresholds()
    written = {
        "fractures": fractures_figure(vertebrae, out_dir / FIGURES["fractures"]),
        "density": density_figure(vertebrae, out_dir / FIGURES["density"], thresholds),
        "recommendations": recommendations_figure(cases, out_dir / FIGURES["recommendations"]),
    }
    status = collections.Counter(c["status"] for c in cases)
    total = len(cases)
    qc_reasons = collections.Counter(
        check for c in cases if c["status"] == "qc-failed" for check in (c.get("qc_failed_checks") or "?").split("; "))
    failure_reasons = collections.Counter((c.get("reason") or "?")[:160] for c in cases if c["status"] == "failed")
    screened = [c for c in cases if c["status"] == ASSESSED]
    with_grades = [c for c in screened if (c.get("graded_vertebrae") or 0) > 0]
    by_worst = collections.Counter(c.get("worst_grade") for c in with_grades)
    graded = [v for v in vertebrae if v.get("final_grade") is not None and v.get("case_status") == ASSESSED]
    levels = _level_order(v["level"] for v in graded)
    level_rows = []
    for level in levels:
        at_level = [v for v in graded if v["level"] == level]
        fractured = [v for v in at_level if v["final_grade"] > 0]
        level_rows.append([level, len(at_level), len(fractured), _percent(len(fractured), len(at_level))]
                          + [sum(1 for v in at_level if v["final_grade"] == g) for g in (1, 2, 3)])
    actions = collections.Counter(c.get("recommendation_action") for c in screened if c.get("recommendation_action"))
    reasons = collections.Counter(reason for c in screened for reason in
                                  (c.get("recommendation_reasons") or "").split("; ") if reason)
    hu_rows = []
    for level in _level_order(v["level"] for v in vertebrae if v.get("trabecular_hu") is not None):
        import numpy as np

        values = np.array([v["trabecular_hu"] for v in vertebrae
                           if v["level"] == level and v.get("trabecular_hu") is not None])
        hu_rows.append([level, len(values), f"{np.median(values):.0f}", f"{np.percentile(values, 25):.0f}"
                        f" – {np.percentile(values, 75):.0f}",
                        _percent(int((values < thresholds.osteoporosis_below_hu).sum()), len(values))])
    wall = throughput.get("wall_s") or 0.0
    analysed = throughput.get("analysed", 0)
    rate = f"{3600.0 * analysed / wall:.0f}" if wall > 0 and analysed else "n/a"
    seconds = sorted(c["seconds"] for c in cases if c.get("seconds") is not None)
    memory = collections.defaultdict(float)
    for c in cases:
        if c.get("worker") and c.get("worker_peak_memory_mb") is not None:
            memory[c["worker"]] = max(memory[c["worker"]], c["worker_peak_memory_mb"])
    sections = [
        f"<h1>Cohort report</h1><p class='note'>{html.escape(RESEARCH_USE)}</p>",
        f"<p>{datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} · VertebralFracture "
        f"{html.escape(__version__)} · tables: <code>cases.parquet</code>, <code>vertebrae.parquet</code>, "
        f"<code>summary.csv</code></p>",
        "<h2>Cases</h2>",
        _table(["cases", "assessed", "findings withheld (level names unconfirmed)", "qc-failed (refused by quality "
                "control)", "failed"],
               [[total] + [f"{status[s]} ({_percent(status[s], total)})"
                           for s in (ASSESSED, FINDINGS_WITHHELD, QC_FAILED, FAILED)]]),
        "<h3>Why quality control refused cases</h3>",
        _table(["failed check", "cases"], [[k, n] for k, n in qc_reasons.most_common()]),
        "<h3>Why cases failed</h3>",
        _table(["reason", "cases"], [[k, n] for k, n in failure_reasons.most_common()]),
        "<h2>Vertebral fractures</h2>",
        f"<p>Screened cases with graded vertebrae: {len(with_grades)}. Worst Genant grade per case:</p>",
        _table(["worst grade", "cases", "share"],
               [[f"{g} {GRADE_NAMES[g]}", by_worst.get(g, 0), _percent(by_worst.get(g, 0), len(with_grades))]
                for g in (0, 1, 2, 3)]),
        f"<p><img src='{FIGURES['fractures']}' alt='fractures by level'></p>",
        _table(["level", "graded", "fractured", "share", "grade 1", "grade 2", "grade 3"], level_rows),
        "<h2>Recommendations</h2>",
        f"<p><img src='{FIGURES['recommendations']}' alt='recommendations'></p>",
        _table(["action", "cases"], [[a, actions[a]] for a in ACTION_ORDER if actions.get(a)]),
        "<h3>Reasons given</h3>",
        _table(["reason", "cases"], [[k, n] for k, n in reasons.most_common(20)]),
        "<h2>Trabecular attenuation</h2>",
        f"<p>Median HU of the interior trabecular region per vertebra, as measured (before any contrast "
        f"correction). Thresholds for a non-contrast 120 kVp CT: osteoporosis below "
        f"{thresholds.osteoporosis_below_hu:g} HU, normal from {thresholds.normal_from_hu:g} HU (Pickhardt et al. "
        f"2013); at L1 &le; {thresholds.specific_hu:g} HU is over 90 % specific, &le; "
        f"{thresholds.sensitive_hu:g} HU 90 % sensitive for osteoporosis.</p>",
        f"<p><img src='{FIGURES['density']}' alt='trabecular HU by level'></p>",
        _table(["level", "vertebrae", "median HU", "interquartile range", f"below {thresholds.osteoporosis_below_hu:g}"
                                                                          " HU"], hu_rows),
        "<h2>Throughput</h2>",
        _table(["run on", "cases analysed", "earlier run", "wall time", "cases per hour",
                "median s per case", "peak memory per worker"],
               [[throughput.get("workers", "this process"), analysed, throughput.get("resumed", 0),
                 f"{wall:.0f} s", rate, f"{seconds[len(seconds) // 2]:.1f}" if seconds else "n/a",
                 f"{max(memory.values()):.0f} MiB" if memory else "n/a"]]),
    ]
    style = ("body{font-family:sans-serif;max-width:60em;margin:1em auto;color:#212121}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #bdbdbd;padding:2px 8px;"
             "text-align:left}th{background:#eeeeee}.note{color:#b71c1c}img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='generator' content='{GENERATOR}'>"
            f"<title>Cohort report</title><style>{style}</style>"
            f"</head><body>{''.join(sections)}</body></html>")
    with atomic_path(out_dir / "cohort.html") as temporary:
        temporary.write_text(page, encoding="utf-8")
    written["html"] = out_dir / "cohort.html"
    return written

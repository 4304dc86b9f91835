"""The report's bone density scale: the verdict table's bands, Pickhardt's cut-offs and the densities that may be
stated, every label measured and placed where it meets no other."""

from __future__ import annotations

import numpy as np

from VertebralFractureLib.results import CaseResult, density_not_usable

BAND_COLOURS = {"osteoporosis": "#ef9a9a", "osteopenia": "#ffe082", "normal": "#a5d6a7"}


def render_density_scale(screening, case: CaseResult | None = None, width_in: float = 6.5):
    """Horizontal HU scale with the verdict table's bands, Pickhardt's cut-offs and the measured values: the
    screening level's, and the other levels' that the rule for density statements lets be stated. Every label is
    measured and moved to a free row (or inside the scale) so none collides with or crosses another."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    t = screening.thresholds
    low, high = 0.0, 260.0
    fig, ax = plt.subplots(figsize=(width_in, 1.5))
    ax.set_xlim(low, high)
    ax.set_ylim(0, 1)
    start = low
    spans: dict[str, list[float]] = {}
    for band in t.bands():
        stop = min(band.upper_hu, high)
        if stop > start:
            ax.axvspan(start, stop, color=BAND_COLOURS.get(band.category, "#e0e0e0"), lw=0)
            spans.setdefault(band.category, [start, stop])[1] = stop
        start = max(start, stop)
    for category, (start, stop) in spans.items():
        ax.text((start + stop) / 2, 0.16, category, ha="center", va="center", fontsize=7, color="#333333")
    for x, text, ha in ((t.specific_hu, f"≤{t.specific_hu:g} specific", "right"),
                        (t.sensitive_hu, f"≤{t.sensitive_hu:g} sensitive", "left")):
        ax.axvline(x, color="#37474f", ls="--", lw=0.9)
        # Beside its line, away from the other: the two cut-offs' labels never meet.
        ax.text(x + (-1.5 if ha == "right" else 1.5), 1.02, text, ha=ha, va="bottom", fontsize=6, color="#37474f",
                transform=ax.get_xaxis_transform())
    incomplete = set(screening.incomplete_levels)
    stated = {v.level for v in case.vertebrae if density_not_usable(case, v) is None} if case is not None else None
    others = [(level, d) for level, d in screening.densities.items()
              if d.median_hu is not None and level != screening.level and level not in incomplete
              and (stated is None or level in stated)]
    renderer = fig.canvas.get_renderer()
    to_data = ax.transData.inverted()

    def extent(artist):
        box = artist.get_window_extent(renderer)
        (x0, _), (x1, _) = to_data.transform([(box.x0, 0), (box.x1, 0)])
        return x0, x1

    rows: list[list[tuple[float, float]]] = [[], [], []]
    for level, density in sorted(others, key=lambda item: item[1].median_hu):
        value = float(np.clip(density.median_hu - screening.contrast.offset_hu, low, high))
        ax.plot([value], [0.74], "|", color="#455a64", ms=7)
        label = ax.text(value, 0.83, level, ha="center", fontsize=5.5, color="#455a64")
        x0, x1 = extent(label)
        shift = max(0.0, low - x0) - max(0.0, x1 - high)  # inside the scale, not clipped at its ends
        x0, x1 = x0 + shift, x1 + shift
        for row_index, row in enumerate(rows):
            if all(x1 + 1.0 < a or x0 - 1.0 > b for a, b in row):
                row.append((x0, x1))
                label.set_position((value + shift, 0.83 + 0.075 * row_index))
                break
        else:
            label.remove()  # no free row: the value's tick still shows, the table lists it
    if screening.corrected_hu is not None:
        value = float(np.clip(screening.corrected_hu, low, high))
        ax.plot([value], [0.5], "v", color="black", ms=11)
        text = f"{screening.level} {screening.corrected_hu:.0f} HU"
        right = left = value
        if screening.measured_hu != screening.corrected_hu:
            # Hollow marker: the value before the contrast correction.
            raw = float(np.clip(screening.measured_hu, low, high))
            ax.plot([raw], [0.5], "v", mfc="none", mec="black", ms=9)
            text += f" (measured {screening.measured_hu:.0f})"
            right, left = max(right, raw), min(left, raw)
        label = ax.text(right + 3, 0.5, text, va="center", fontsize=8, fontweight="bold")
        if extent(label)[1] > high:
            label.set_position((left - 3, 0.5))
            label.set_ha("right")
    ax.set_yticks([])
    ax.set_xlabel("trabecular attenuation (HU, contrast-corrected); thresholds for L1 at 120 kVp", fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig

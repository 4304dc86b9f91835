"""``overview.png``: a sagittal view through the spine with the six points, the three heights and the grade of each
measured vertebra, drawn with Pillow.

Pillow, not matplotlib: importing matplotlib took a quarter of a second of every ``measure`` run (the largest single
cost left), Pillow a few milliseconds. Sizes are given in points and drawn at :data:`DPI` (the pixel size of the
picture matplotlib drew before: a 7-point label font is 10.7 pixels high). Lines, dots and boxes are drawn at
:data:`SUPERSAMPLING` times the size and reduced (antialiased edges); text is drawn at the picture's size with
Pillow's own antialiasing (hinted glyphs, sharper than reduced ones).

Top to bottom: the banner (:func:`overview_title`), the image with its level labels, the legend; each gets its
measured height, so neither the banner nor the legend covers the image.
"""

from __future__ import annotations

import functools
import importlib.util
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from VertebralFractureLib.io import Volume
from VertebralFractureLib.results import DOUBTFUL_LEVEL_STATUSES, HEIGHT_NAMES, CaseResult

GRADE_COLOURS = {None: "#9e9e9e", 0: "#2e7d32", 1: "#f9a825", 2: "#ef6c00", 3: "#c62828"}
HEIGHT_COLOURS = {"anterior": "#00b8d4", "middle": "#ffd600", "posterior": "#d500f9"}
BANNER_COLOUR = "#4a148c"
BANNER_WITHHELD_COLOUR = "#b71c1c"  # findings withheld by quality control
LEVELS_DOUBTFUL_COLOUR = "#ef6c00"
LEVELS_OTHER_COLOUR = "#546e7a"

DPI = 110
SUPERSAMPLING = 4
MIN_IMAGE_AREA_PX = (495, 550)  # 4.5 x 5 inches: a short spine's image is enlarged to fill it
STATEMENT_SIZE_PX = (660, 330)  # the picture that holds only a statement

LABEL_FONT_PT = 7.0
SMALLEST_LABEL_FONT_PT = 4.5  # labels shrink down to this size when they cannot all fit beside each other
LABEL_OFFSET_MM = 30.0  # a label's right edge: this far anterior of its vertebra's centroid
LABEL_MARGIN_PT = 4.0  # least distance of a label box from the picture's left and right edges
LINE_SPACING = 1.2  # line pitch in font sizes
HEIGHT_LINE_PT = 1.4
DOT_PT = 3.5
DOT_EDGE_PT = 0.4
LEGEND_FONT_PT = 6.5


def px(points: float) -> float:
    """Points to pixels of the picture."""
    return points * DPI / 72.0


# --------------------------------------------------------------------------------------------------------------
# What the picture shows
# --------------------------------------------------------------------------------------------------------------
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


def sample_plane(volume: Volume, origin, anterior, superior, u_range, v_range, pixel_mm, order):
    """The plane's values on a grid of ``pixel_mm`` (rows: superior first; columns: posterior first), with the
    offsets ``u`` (anterior, mm) of its columns and ``v`` (superior, mm) of its rows."""
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


def label_text(vertebra) -> str:
    """A level label: level, grade and heights; or, for a vertebra without points, why it is not graded (the
    reason without its figures, which results.json keeps), wrapped."""
    if not vertebra.points_ras:
        reason = (vertebra.incomplete_reason or "").split(" (")[0]
        return f"{vertebra.level}  not graded\n" + textwrap.fill(reason, width=28)
    heights = vertebra.heights_mm
    grade_text = "not assessed" if vertebra.final_grade is None else (
        f"G{vertebra.final_grade}"
        f"{'' if vertebra.final_morphology in (None, 'normal') else ' ' + vertebra.final_morphology}")
    return (f"{vertebra.level}  {grade_text}\n"
            f"Ha {heights['anterior']:.1f} Hm {heights['middle']:.1f} Hp {heights['posterior']:.1f}")


# --------------------------------------------------------------------------------------------------------------
# Fonts and text
# --------------------------------------------------------------------------------------------------------------
def _matplotlib_fonts_folder() -> Path | None:
    """matplotlib's DejaVu Sans folder (the font the overview always had), found without importing matplotlib."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf"


@functools.lru_cache(maxsize=32)
def font(size_pt: float, bold: bool = False):
    """DejaVu Sans (bold) of ``size_pt`` points; Pillow's own font where matplotlib's files are missing."""
    from PIL import ImageFont

    folder = _matplotlib_fonts_folder()
    if folder is not None:
        try:
            return ImageFont.truetype(str(folder / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")), px(size_pt))
        except OSError:
            pass
    return ImageFont.load_default(size=px(size_pt))


@dataclass
class TextBlock:
    """Lines of text in one font, measured: ``width`` x ``height`` pixels (``LINE_SPACING`` per line)."""

    lines: list[str]
    size_pt: float
    bold: bool = False

    @property
    def font(self):
        return font(self.size_pt, self.bold)

    @property
    def pitch(self) -> float:
        return px(self.size_pt) * LINE_SPACING

    @property
    def width(self) -> float:
        return max((self.font.getlength(line) for line in self.lines), default=0.0)

    @property
    def height(self) -> float:
        return self.pitch * len(self.lines)

    def draw(self, draw, x: float, top: float, align: str = "left", colour="white") -> None:
        """Each line with its left edge (``align`` "left"), centre ("centre") or right edge ("right") at ``x``;
        the first line's box starts at ``top``."""
        anchor = {"left": "lm", "centre": "mm", "right": "rm"}[align]
        for index, line in enumerate(self.lines):
            draw.text((x, top + (index + 0.5) * self.pitch), line, fill=colour, font=self.font, anchor=anchor)


def fit_lines(text_for_width, size_pt: float, bold: bool, width_px: float, start: int) -> list[str]:
    """``text_for_width(characters)`` wrapped at ``start`` characters a line, or fewer until every line measures
    at most ``width_px``."""
    characters = start
    lines = text_for_width(characters)
    while characters > 10 and TextBlock(lines, size_pt, bold).width > width_px:
        characters -= 1
        lines = text_for_width(characters)
    return lines


# --------------------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------------------
class ShapeLayer:
    """Transparent layer for lines, dots and boxes, drawn at :data:`SUPERSAMPLING` times the picture's size (in
    the picture's pixel coordinates) and laid over the picture reduced: antialiased edges. Its colours are stored
    premultiplied by their opacity (mode "RGBa"), so reducing averages them right and needs no conversion of the
    large layer."""

    def __init__(self, size: tuple[int, int]):
        from PIL import Image, ImageDraw

        self.size = size
        self.image = Image.new("RGBa", (size[0] * SUPERSAMPLING, size[1] * SUPERSAMPLING), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)

    @staticmethod
    def _scaled(*values: float) -> list[float]:
        return [value * SUPERSAMPLING for value in values]

    @staticmethod
    def _ink(colour: str, alpha: float = 1.0) -> tuple[int, int, int, int]:
        from PIL import ImageColor

        return tuple(round(channel * alpha) for channel in ImageColor.getrgb(colour)[:3]) + (round(255 * alpha),)

    def line(self, start, end, colour: str, width_pt: float) -> None:
        self.draw.line(self._scaled(*start, *end), fill=self._ink(colour),
                       width=max(1, round(px(width_pt) * SUPERSAMPLING)))

    def dot(self, centre, colour: str, edge: str = "black") -> None:
        """A dot marker of :data:`DOT_PT` with an ``edge`` of :data:`DOT_EDGE_PT` (black: it stands out on bone)."""
        radius = (px(DOT_PT) + px(DOT_EDGE_PT)) / 2
        self.draw.ellipse(self._scaled(centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius),
                          fill=self._ink(colour), outline=self._ink(edge),
                          width=max(1, round(px(DOT_EDGE_PT) * SUPERSAMPLING)))

    def box(self, box, colour: str, alpha: float = 1.0, radius_px: float = 0.0) -> None:
        self.draw.rounded_rectangle(self._scaled(*box), radius=radius_px * SUPERSAMPLING, fill=self._ink(colour, alpha))

    def onto(self, picture) -> None:
        """Lay the layer, reduced to the picture's size, over ``picture`` (RGBA)."""
        picture.alpha_composite(self.image.reduce(SUPERSAMPLING).convert("RGBA"))


@dataclass
class LevelLabel:
    """A level's label: its text, its colour, the x of its right edge and the y it wants as its centre (pixels)."""

    text: str
    colour: str
    right: float
    wanted_y: float


def stack_centres(wanted: list[float], heights: list[float], top: float | None, bottom: float) -> list[float]:
    """Centres (y, down the picture) of boxes of ``heights`` stacked in the order given (top first), each as near
    its wanted centre as the others let it be: none overlaps the next, none reaches below ``bottom`` or above
    ``top`` (when all fit between; when they do not, none overlaps and the lowest reach below ``bottom``). ``top``
    None: no limit above."""
    centres = list(wanted)
    count = len(centres)
    for i in range(1, count):  # top to bottom: each below the one above
        centres[i] = max(centres[i], centres[i - 1] + (heights[i - 1] + heights[i]) / 2)
    if count:
        centres[-1] = min(centres[-1], bottom - heights[-1] / 2)
    for i in range(count - 2, -1, -1):  # bottom to top: each above the one below, none below the image
        centres[i] = min(centres[i], centres[i + 1] - (heights[i] + heights[i + 1]) / 2)
    if count and top is not None and centres[0] - heights[0] / 2 < top:  # nor above it: top to bottom again
        centres[0] = top + heights[0] / 2
        for i in range(1, count):
            centres[i] = max(centres[i], centres[i - 1] + (heights[i - 1] + heights[i]) / 2)
    return centres


def place_labels(labels: list[LevelLabel], image_box, picture_width: float) -> tuple[float, list[tuple]]:
    """Font size (points) and box (left, top, right, bottom; pixels) of each label: moved apart along the vertical
    where they would overlap, kept within the image's height (the font shrinks when they cannot all fit at
    :data:`LABEL_FONT_PT`) and within the picture's width."""
    if not labels:
        return LABEL_FONT_PT, []
    size_pt = LABEL_FONT_PT
    while True:
        blocks = [TextBlock(label.text.split("\n"), size_pt) for label in labels]
        pad = px(size_pt) * 0.25
        heights = [block.height + 2 * pad for block in blocks]
        if sum(heights) <= image_box[3] - image_box[1] or size_pt <= SMALLEST_LABEL_FONT_PT:
            break
        size_pt -= 0.5
    order = sorted(range(len(labels)), key=lambda i: labels[i].wanted_y)
    centres = stack_centres([labels[i].wanted_y for i in order], [heights[i] for i in order], image_box[1],
                            image_box[3])
    boxes: list[tuple] = [()] * len(labels)
    margin = px(LABEL_MARGIN_PT)
    for i, centre in zip(order, centres):
        right = labels[i].right + pad
        left = labels[i].right - blocks[i].width - pad
        shift = max(0.0, margin - left) - max(0.0, right - (picture_width - margin))
        boxes[i] = (left + shift, centre - heights[i] / 2, right + shift, centre + heights[i] / 2)
    return size_pt, boxes


def _banner(case: CaseResult, picture_width: int, size_pt: float):
    """Title lines fitted to the picture's width, their text block and the banner's height (pixels)."""
    # Half an em per character to start from (more than fit); measured, fewer until every line fits.
    start = int(picture_width / (0.5 * px(size_pt)))
    pad = px(size_pt) * 0.3
    title = fit_lines(lambda characters: overview_title(case, width=characters), size_pt, True,
                      picture_width - 2 * px(size_pt), start)
    block = TextBlock(title, size_pt, bold=True)
    return title, block, block.height + 2 * pad


def _draw_banner(picture, draw, block: TextBlock, height: float, withheld: bool) -> None:
    from PIL import ImageColor

    # 90% of the colour over the black picture.
    colour = tuple(round(0.9 * channel) for channel in ImageColor.getrgb(
        BANNER_WITHHELD_COLOUR if withheld else BANNER_COLOUR)[:3])
    draw.rectangle((0, 0, picture.width - 1, round(height) - 1), fill=colour)
    block.draw(draw, picture.width / 2, (height - block.height) / 2, align="centre")


LEGEND_ENTRIES = (
    [(f"{short} {name} height", "line", HEIGHT_COLOURS[name]) for name, short in zip(HEIGHT_NAMES, ("Ha", "Hm", "Hp"))]
    + [(text, "patch", GRADE_COLOURS[grade]) for grade, text in
       ((0, "G0 normal"), (1, "G1 mild"), (2, "G2 moderate"), (3, "G3 severe"), (None, "not graded"))]
)
"""What the line colours (heights) and the label colours (grades) mean: (text, sample, colour)."""


@dataclass
class LegendLayout:
    """Columns of :data:`LEGEND_ENTRIES` (filled column by column) that fit the picture's width."""

    columns: list[list[int]]
    column_widths: list[float]
    height: float

    EM = px(LEGEND_FONT_PT)
    HANDLE = 2.0 * EM
    HANDLE_GAP = 0.8 * EM
    COLUMN_GAP = 1.0 * EM
    ROW_PITCH = 1.5 * EM
    PAD = 0.5 * EM

    @classmethod
    def fit(cls, picture_width: float) -> LegendLayout:
        legend_font = font(LEGEND_FONT_PT)
        for count in (4, 3, 2, 1):
            rows = -(-len(LEGEND_ENTRIES) // count)
            columns = [list(range(c * rows, min(len(LEGEND_ENTRIES), (c + 1) * rows))) for c in range(count)]
            widths = [cls.HANDLE + cls.HANDLE_GAP + max(legend_font.getlength(LEGEND_ENTRIES[i][0]) for i in column)
                      for column in columns if column]
            if sum(widths) + cls.COLUMN_GAP * (len(widths) - 1) <= picture_width - 2 * cls.PAD or count == 1:
                return cls(columns, widths, 2 * cls.PAD + rows * cls.ROW_PITCH)

    def draw(self, shapes: ShapeLayer, draw, picture_width: float, top: float) -> None:
        x = (picture_width - sum(self.column_widths) - self.COLUMN_GAP * (len(self.column_widths) - 1)) / 2
        for column, width in zip(self.columns, self.column_widths):
            for row, index in enumerate(column):
                text, sample, colour = LEGEND_ENTRIES[index]
                y = top + self.PAD + (row + 0.5) * self.ROW_PITCH
                if sample == "line":
                    shapes.line((x, y), (x + self.HANDLE, y), colour, HEIGHT_LINE_PT)
                    shapes.dot((x + self.HANDLE / 2, y), colour, edge=colour)
                else:
                    shapes.box((x, y - 0.35 * self.EM, x + self.HANDLE, y + 0.35 * self.EM), colour)
                draw.text((x + self.HANDLE + self.HANDLE_GAP, y), text, fill="white", font=font(LEGEND_FONT_PT),
                          anchor="lm")
            x += width + self.COLUMN_GAP


def _save(picture, destination: str | Path) -> None:
    with open(destination, "wb") as handle:
        picture.convert("RGB").save(handle, format="PNG")


def render_statement(case: CaseResult, statement: str, destination: str | Path) -> list[str]:
    """An overview image holding only a statement (nothing to draw), with the usual title lines (returned)."""
    from PIL import Image, ImageDraw

    withheld = case.quality is not None and case.quality.findings_withheld
    picture = Image.new("RGBA", STATEMENT_SIZE_PX, "black")
    draw = ImageDraw.Draw(picture)
    title, banner, banner_height = _banner(case, picture.width, 8 if withheld else 7)
    _draw_banner(picture, draw, banner, banner_height, withheld)
    lines = fit_lines(lambda characters: textwrap.wrap(statement, characters), 8, False, picture.width - px(24), 70)
    block = TextBlock(lines, 8)
    centre_y = max(0.55 * picture.height, banner_height + px(8) + block.height / 2)
    block.draw(draw, picture.width / 2, centre_y - block.height / 2, align="centre")
    _save(picture, destination)
    return title


def render_overview(
    case: CaseResult, labels: Volume, ct: Volume | None, destination: str | Path, pixel_mm: float = 0.5
) -> list[str]:
    """Sagittal view through the spine with the six points, the three heights and the grade of each vertebra.

    The image shows the patient's anterior to the left and superior up, as radiologists read a sagittal CT, one
    picture pixel per sampled ``pixel_mm`` (a short spine enlarged to :data:`MIN_IMAGE_AREA_PX`). Across its top:
    :func:`overview_title` (returned). A vertebra whose grade quality control withheld is labelled "not assessed".
    """
    from PIL import Image, ImageDraw

    measured = [v for v in case.vertebrae if v.axes_ras and v.centroid_ras]
    if not measured:
        return render_statement(case, nothing_measured_statement(case), destination)
    origin, anterior, superior = spine_plane(case)
    centroids = np.array([v.centroid_ras for v in measured])
    along = (centroids - origin) @ superior
    across = (centroids - origin) @ anterior
    u_range = (across.min() - 60, across.max() + 95)
    v_range = (along.min() - 35, along.max() + 35)
    if ct is not None:
        image, u, v = sample_plane(ct, origin, anterior, superior, u_range, v_range, pixel_mm, order=1)
        display = np.clip((image + 250) / 1500.0, 0, 1)  # a bone window: -250 to 1250 HU
    else:
        image, u, v = sample_plane(labels, origin, anterior, superior, u_range, v_range, pixel_mm, order=0)
        display = np.where(image > 0, 0.75, 0.08)
    # Anterior to the left: the columns reversed.
    grey = Image.fromarray(np.round(display[:, ::-1] * 255).astype(np.uint8))
    area_width, area_height = max(MIN_IMAGE_AREA_PX[0], grey.width), max(MIN_IMAGE_AREA_PX[1], grey.height)
    scale = min(area_width / grey.width, area_height / grey.height)
    if scale != 1.0:
        from PIL.Image import Resampling

        grey = grey.resize((round(grey.width * scale), round(grey.height * scale)), Resampling.LANCZOS)

    withheld = case.quality is not None and case.quality.findings_withheld
    title, banner, banner_height = _banner(case, area_width, 8 if withheld else 7)
    legend = LegendLayout.fit(area_width)
    area_top = round(banner_height + px(4))
    picture = Image.new("RGBA", (area_width, area_top + area_height + round(legend.height)), "black")
    image_left, image_top = (area_width - grey.width) // 2, area_top + (area_height - grey.height) // 2
    picture.paste(grey.convert("RGBA"), (image_left, image_top))
    image_box = (image_left, image_top, image_left + grey.width, image_top + grey.height)

    def to_pixel(point_ras) -> tuple[float, float]:
        """A point's place in the picture: its offsets along the plane's anterior and superior axes."""
        offset = np.asarray(point_ras, dtype=float) - origin
        return (image_left + (u[-1] - offset @ anterior) / (u[-1] - u[0]) * grey.width,
                image_top + (v[0] - offset @ superior) / (v[0] - v[-1]) * grey.height)

    mm = grey.width / (u[-1] - u[0])  # pixels per millimetre
    shapes = ShapeLayer(picture.size)
    level_labels = []
    for vertebra in measured:
        if vertebra.points_ras:
            for name in HEIGHT_NAMES:
                top = to_pixel(vertebra.points_ras[f"superior_{name}"])
                bottom = to_pixel(vertebra.points_ras[f"inferior_{name}"])
                shapes.line(top, bottom, HEIGHT_COLOURS[name], HEIGHT_LINE_PT)
            for name in HEIGHT_NAMES:  # the dots over every line
                for end in ("superior", "inferior"):
                    shapes.dot(to_pixel(vertebra.points_ras[f"{end}_{name}"]), HEIGHT_COLOURS[name])
        centre_x, centre_y = to_pixel(vertebra.centroid_ras)
        level_labels.append(LevelLabel(label_text(vertebra), GRADE_COLOURS.get(vertebra.final_grade,
                                                                                GRADE_COLOURS[None]),
                                       centre_x - LABEL_OFFSET_MM * mm, centre_y))
    label_pt, label_boxes = place_labels(level_labels, image_box, picture.width)
    for label, box in zip(level_labels, label_boxes):
        shapes.box(box, label.colour, alpha=0.85, radius_px=px(label_pt) * 0.25)
    levels_block = None
    if case.levels_status and case.levels_status != "confirmed":
        levels_block = TextBlock([f"level names {case.levels_status}"], 8)
        pad = px(8) * 0.25
        bottom = image_box[3] - 2 * mm
        levels_box = (picture.width / 2 - levels_block.width / 2 - pad, bottom - levels_block.height - 2 * pad,
                      picture.width / 2 + levels_block.width / 2 + pad, bottom)
        shapes.box(levels_box, LEVELS_DOUBTFUL_COLOUR if case.levels_status in DOUBTFUL_LEVEL_STATUSES
                   else LEVELS_OTHER_COLOUR, alpha=0.9, radius_px=pad)
    draw = ImageDraw.Draw(picture)
    legend_top = area_top + area_height
    legend.draw(shapes, draw, picture.width, legend_top)
    shapes.onto(picture)

    # Text over the shapes.
    _draw_banner(picture, draw, banner, banner_height, withheld)
    label_pad = px(label_pt) * 0.25
    for label, box in zip(level_labels, label_boxes):
        TextBlock(label.text.split("\n"), label_pt).draw(draw, box[2] - label_pad, box[1] + label_pad, align="right")
    letters = font(9)
    draw.text((image_box[0] + 2 * mm, image_box[1] + 2 * mm), "A", fill="white", font=letters, anchor="lt")
    draw.text((image_box[2] - 2 * mm, image_box[1] + 2 * mm), "P", fill="white", font=letters, anchor="rt")
    if levels_block is not None:
        levels_block.draw(draw, picture.width / 2, levels_box[1] + pad, align="centre")
    _save(picture, destination)
    return title

"""Page layout of the PDF report by measured size (:class:`PdfFlow`): matplotlib draws, the renderer measures, and
every element goes below the one before it, on a new page when the rest of the page is too short. Level labels of
the report's spine view are moved apart by their measured size too (:func:`separate_labels`)."""

from __future__ import annotations

import io as _io


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


PAGE_SIZE_IN = (8.27, 11.69)  # A4


class PdfFlow:
    """Pages of the PDF filled from top to bottom by measured size: every element is drawn, measured with the
    renderer and the next one placed below it; text is wrapped until it fits the width, and an element that does
    not fit the rest of the page starts a new one. Nothing is placed by a guessed line count."""

    LEFT, RIGHT, TOP, BOTTOM = 0.06, 0.94, 0.965, 0.05

    def __init__(self, pdf, footer: str):
        import matplotlib.pyplot as plt

        self._plt, self._pdf, self._footer = plt, pdf, footer
        self.page = None
        self.new_page()

    # -- pages -------------------------------------------------------------------------------------------------
    def new_page(self) -> None:
        if self.page is not None:
            self._finish()
        self.page = self._plt.figure(figsize=PAGE_SIZE_IN)
        self.renderer = self.page.canvas.get_renderer()
        self.y = self.TOP

    def _finish(self) -> None:
        self.page.text(self.LEFT, 0.02, self._footer, fontsize=7.5, fontweight="bold", color="#6a1b9a", va="bottom")
        self._pdf.savefig(self.page)
        self._plt.close(self.page)

    def close(self) -> None:
        self._finish()
        self.page = None

    # -- measuring ---------------------------------------------------------------------------------------------
    def _extent(self, artist):
        """(left, bottom, right, top) of a drawn artist in figure fractions."""
        box = artist.get_window_extent(self.renderer).transformed(self.page.transFigure.inverted())
        return box.x0, box.y0, box.x1, box.y1

    def text_width(self, text: str, size: float, weight: str = "normal") -> float:
        """Width of one line of text in figure fractions."""
        from matplotlib.font_manager import FontProperties

        width, _height, _descent = self.renderer.get_text_width_height_descent(
            text, FontProperties(size=size, weight=weight), ismath=False)
        return width / self.page.bbox.width

    # -- elements ----------------------------------------------------------------------------------------------
    def space(self, fraction: float) -> None:
        self.y -= fraction

    def text(self, text: str, size: float = 8.0, indent: float = 0.0, gap: float = 0.004, **style):
        """A paragraph at the left margin (plus ``indent``), wrapped to the page width; returns the artist."""
        x = self.LEFT + indent
        width = max(20, int((self.RIGHT - x) * PAGE_SIZE_IN[0] * 72 / (0.5 * size)))
        while True:
            artist = self.page.text(x, self.y, _wrap(text, width), fontsize=size, va="top", ha="left", **style)
            _left, bottom, right, top = self._extent(artist)
            if right <= self.RIGHT or width <= 20:
                break
            artist.remove()
            width = int(width * 0.92)
        if bottom < self.BOTTOM and self.y < self.TOP:
            artist.remove()
            self.new_page()
            return self.text(text, size, indent, gap, **style)
        self.y = bottom - gap
        return artist

    def image(self, png: bytes, height: float, gap: float = 0.01) -> None:
        """A picture ``height`` (figure fraction) tall, as wide as its aspect allows within the margins."""
        import matplotlib.pyplot as plt

        picture = plt.imread(_io.BytesIO(png))
        aspect = picture.shape[1] / picture.shape[0] * PAGE_SIZE_IN[1] / PAGE_SIZE_IN[0]
        width = min(self.RIGHT - self.LEFT, height * aspect)
        height = width / aspect
        if self.y - height < self.BOTTOM and self.y < self.TOP:
            self.new_page()
        axis = self.page.add_axes([self.LEFT, self.y - height, width, height])
        axis.imshow(picture)
        axis.axis("off")
        self.y -= height + gap

    def table(self, headers: list[str], rows: list[list[str]], fills: list[list[str | None]],
              size: float = 7.0) -> None:
        """A table whose columns are as wide as their widest text (the font shrinks until the table fits the
        width); rows continue on a new page, under a repeated header, when the page is full."""
        from matplotlib.patches import Rectangle

        available = self.RIGHT - self.LEFT
        pad = 0.006
        while True:
            widths = [max(self.text_width(text, size, "bold" if i == 0 else "normal") for i, text in
                          enumerate([header] + [row[c] for row in rows])) + 2 * pad
                      for c, header in enumerate(headers)]
            if sum(widths) <= available or size <= 4.5:
                break
            size -= 0.25
        spare = (available - sum(widths)) / len(widths) if sum(widths) < available else 0.0
        widths = [w + spare for w in widths]
        row_height = size * 2.0 / 72 / PAGE_SIZE_IN[1]

        def draw_row(cells, colours, bold):
            x = self.LEFT
            for text, width, colour in zip(cells, widths, colours):
                self.page.add_artist(Rectangle((x, self.y - row_height), width, row_height,
                                               transform=self.page.transFigure, facecolor=colour or "white",
                                               edgecolor="#b0bec5", linewidth=0.5))
                self.page.text(x + width / 2, self.y - row_height / 2, text, fontsize=size, ha="center",
                               va="center", fontweight="bold" if bold else "normal",
                               color="white" if colour not in (None, "white", "#eceff1") else "#212121")
                x += width
            self.y -= row_height

        if self.y - 2 * row_height < self.BOTTOM:
            self.new_page()
        draw_row(headers, ["#eceff1"] * len(headers), True)
        for cells, colours in zip(rows, fills):
            if self.y - row_height < self.BOTTOM:
                self.new_page()
                draw_row(headers, ["#eceff1"] * len(headers), True)
            draw_row(cells, colours, False)
        self.y -= 0.01


def separate_labels(fig, ax, labels) -> None:
    """Move level labels apart along the image's vertical where their measured boxes would overlap, keeping them
    within the image's height (the font shrinks when they cannot all fit). Labels are text artists centred
    vertically on their vertebra."""
    from VertebralFractureLib.outputs.overview import stack_centres

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
    # Stacked as the overview's labels are, in y down the page (display y runs up); no limit above, as before.
    centres = [-y for y in stack_centres([-y for y in wanted], heights, None, -axes_box.y0)]
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

"""The dashboard's experiments table: newest first, each row's number a button that opens its details."""
from __future__ import annotations

from typing import Callable

import ipywidgets as widgets

from .table import header_html, row_html, table_cells

NUMBER_WIDTH = "56px"


class ExperimentTable:
    """A fixed pool of row widgets, filled again on every new row (no widget is made after start-up)."""

    def __init__(self, on_choose: Callable[[int], None], limit: int = 12):
        self.limit = limit
        self._on_choose = on_choose
        self._numbers: list = [None] * limit   # which experiment each row shows now
        self.header = widgets.HTML()
        self.buttons = [widgets.Button(layout=widgets.Layout(width=NUMBER_WIDTH, height="24px", margin="0 4px 0 0"))
                        for _ in range(limit)]
        self.cells = [widgets.HTML(layout=widgets.Layout(margin="0")) for _ in range(limit)]
        # every ipywidgets box scrolls its own overflow: the rows let theirs through, so the whole table
        # (header and rows together) scrolls sideways in one piece
        self.lines = [widgets.HBox([button, cells], layout=widgets.Layout(display="none", align_items="center",
                                                                          overflow="visible"))
                      for button, cells in zip(self.buttons, self.cells)]
        for slot, button in enumerate(self.buttons):
            button.add_class("arnb-row")
            button.on_click(lambda _button, slot=slot: self._clicked(slot))
        self.more = widgets.HTML()
        heading = widgets.HBox([widgets.HTML("<b>#</b>", layout=widgets.Layout(width=NUMBER_WIDTH, margin="0 4px 0 0")),
                                self.header], layout=widgets.Layout(align_items="center", overflow="visible"))
        # wider than a phone: the table scrolls sideways rather than squeezing its columns
        self.widget = widgets.VBox([heading, *self.lines, self.more], layout=widgets.Layout(overflow="auto"))
        self.widget.add_class("arnb-rows")

    def update(self, rows: list[dict], metric: str, chosen=None, figures=None) -> None:
        """Show the newest rows; the chosen one's number highlighted."""
        self.header.value = header_html(metric)
        shown = table_cells(rows, metric, self.limit, figures)
        numbers = [number for number, _ in shown] + [None] * (self.limit - len(shown))
        for slot, line in enumerate(self.lines):
            if slot < len(shown):
                number, cells = shown[slot]
                self.buttons[slot].description = f"#{number}"
                self.buttons[slot].tooltip = f"show #{number}'s change, rationale and log"
                self.cells[slot].value = row_html(cells)
                line.layout.display = "flex"
            else:
                line.layout.display = "none"
        self._numbers = numbers
        self.more.value = (f'<div style="font-size:11px;opacity:0.7;">… {len(rows) - self.limit} earlier: '
                           f'choose them in the list below</div>' if len(rows) > self.limit else "")
        self.mark(chosen)

    def mark(self, chosen) -> None:
        for number, button in zip(self._numbers, self.buttons):
            button.button_style = "info" if number is not None and number == chosen else ""

    def _clicked(self, slot: int) -> None:
        number = self._numbers[slot]
        if number is not None:
            self._on_choose(number)

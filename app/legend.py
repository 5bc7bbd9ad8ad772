"""Owns the class legend: the ScanNet-20 classes with their colours and how much of each the scan holds;
clicking a class picks it for label correction; its check box shows or hides the class in the viewport,
and the context menu shows one class alone or all of them."""
from __future__ import annotations

from dataclasses import dataclass

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtGui import QColor, QIcon, QPixmap
from PyQt6.QtWidgets import QAbstractItemView, QHeaderView, QMenu, QTableWidget, QTableWidgetItem

from fusion.classes import CLASSES


@dataclass(frozen=True)
class LegendConfig:
    """How the legend shows amounts."""

    cell_area_m2: float = 0.05 ** 2   #: surface one labelled nets cell stands for (5 cm cells)
    swatch_px: int = 14               #: colour swatch size


class Legend(QTableWidget):
    """Class table (colour, name, surface, share). Thread: GUI thread."""

    class_selected = pyqtSignal(int)  #: NYU40 id clicked
    visibility_changed = pyqtSignal(object)  #: frozenset of the NYU40 ids now hidden

    def __init__(self, config: LegendConfig = LegendConfig(), parent=None):
        super().__init__(len(CLASSES), 3, parent)
        self.config = config
        self.ids = list(CLASSES)
        self.counts: dict[int, int] = {}
        self.setHorizontalHeaderLabels(["class", "m²", "%"])
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in (1, 2):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        for row, nyu in enumerate(self.ids):
            name, rgb = CLASSES[nyu]
            pix = QPixmap(config.swatch_px, config.swatch_px)
            pix.fill(QColor(*rgb))
            item = QTableWidgetItem(QIcon(pix), name)
            item.setData(Qt.ItemDataRole.UserRole, nyu)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            item.setToolTip("Untick to hide this class in the view; right-click to show it alone")
            self.setItem(row, 0, item)
            for col in (1, 2):
                num = QTableWidgetItem("")
                num.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.setItem(row, col, num)
        self.verticalHeader().setDefaultSectionSize(config.swatch_px + 6)
        self.cellClicked.connect(lambda row, _col: self.class_selected.emit(self.ids[row]))
        self.hidden: frozenset = frozenset()
        self.itemChanged.connect(self._visibility_edited)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._context_menu)
        self.select_class(1)

    def set_hidden(self, hidden) -> None:
        """Hide exactly the classes `hidden` (NYU40 ids); the others show."""
        self.blockSignals(True)
        for row, nyu in enumerate(self.ids):
            self.item(row, 0).setCheckState(Qt.CheckState.Unchecked if nyu in hidden else Qt.CheckState.Checked)
        self.blockSignals(False)
        self._visibility_edited()

    def isolate(self, nyu40: int) -> None:
        """Show `nyu40` alone."""
        self.set_hidden(set(self.ids) - {nyu40})

    def _visibility_edited(self, _item=None) -> None:
        hidden = frozenset(nyu for row, nyu in enumerate(self.ids)
                           if self.item(row, 0).checkState() == Qt.CheckState.Unchecked)
        if hidden != self.hidden:
            self.hidden = hidden
            self.visibility_changed.emit(hidden)

    def _context_menu(self, pos) -> None:
        item = self.itemAt(pos)
        menu = QMenu(self)
        if item is not None:
            nyu = self.ids[item.row()]
            menu.addAction(f"Show only {CLASSES[nyu][0]}", lambda: self.isolate(nyu))
        menu.addAction("Show all classes", lambda: self.set_hidden(set()))
        menu.popup(self.viewport().mapToGlobal(pos))
        self.context_menu = menu  # kept for tests

    def select_class(self, nyu40: int) -> None:
        if nyu40 in self.ids:
            self.selectRow(self.ids.index(nyu40))

    @property
    def selected_class(self) -> int:
        rows = self.selectionModel().selectedRows()
        return self.ids[rows[0].row()] if rows else self.ids[0]

    def set_counts(self, counts: dict[int, int]) -> None:
        """{NYU40 id: labelled cells}; classes absent from it show as empty."""
        self.counts = dict(counts)
        total = sum(counts.values()) or 1
        for row, nyu in enumerate(self.ids):
            n = counts.get(nyu, 0)
            self.item(row, 1).setText(f"{n * self.config.cell_area_m2:.2f}" if n else "")
            self.item(row, 2).setText(f"{100.0 * n / total:.1f}" if n else "")

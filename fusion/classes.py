"""Owns the label table: the classes the app labels as NYU40 ids, names and colours (the ScanNet-20
benchmark classes with ScanNet's colours, plus the ceiling, which the benchmark does not score)."""
from __future__ import annotations

import numpy as np

# NYU40 id -> (name, RGB). 0 is "unlabeled".
SCANNET20 = {
    1: ("wall", (174, 199, 232)),
    2: ("floor", (152, 223, 138)),
    3: ("cabinet", (31, 119, 180)),
    4: ("bed", (255, 187, 120)),
    5: ("chair", (188, 189, 34)),
    6: ("sofa", (140, 86, 75)),
    7: ("table", (255, 152, 150)),
    8: ("door", (214, 39, 40)),
    9: ("window", (197, 176, 213)),
    10: ("bookshelf", (148, 103, 189)),
    11: ("picture", (196, 156, 148)),
    12: ("counter", (23, 190, 207)),
    14: ("desk", (247, 182, 210)),
    16: ("curtain", (219, 219, 141)),
    24: ("refrigerator", (255, 127, 14)),
    28: ("shower curtain", (158, 218, 229)),
    33: ("toilet", (44, 160, 44)),
    34: ("sink", (112, 128, 144)),
    36: ("bathtub", (227, 119, 194)),
    39: ("otherfurniture", (82, 84, 163)),
}
CEILING = 22  #: NYU40 id of the ceiling: labeled and exported, ignored when scoring ScanNet-20
#: every class the app labels, in the nets' output order: ScanNet-20, then the ceiling
CLASSES = {**SCANNET20, CEILING: ("ceiling", (214, 214, 232))}
UNLABELED = 0
UNLABELED_COLOR = (0, 0, 0)
NAME_TO_ID = {name: nyu for nyu, (name, _) in CLASSES.items()}


def palette_lut() -> np.ndarray:
    """(41, 3) uint8 lookup table NYU40 id -> colour (black for ids the app does not label)."""
    lut = np.zeros((41, 3), np.uint8)
    for nyu, (_, rgb) in CLASSES.items():
        lut[nyu] = rgb
    return lut

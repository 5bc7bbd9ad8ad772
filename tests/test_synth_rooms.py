"""Tests of the synthetic world's newer furniture and room types: chair designs, thin tables, clutter, wall
fixtures, open doors cut into the shell, the ceiling label, and the classroom, conference room, corridor
and storage room."""
from __future__ import annotations

import numpy as np
import pytest

from fusion.classes import NAME_TO_ID, SCANNET20
from synth import clutter, fixtures, seating, tables
from synth.plans import HOMELY
from synth.primitives import Piece, transform
from synth.rooms import ROOM_TYPES, WALL_YAW, Placed, RoomConfig, furnish
from synth.shell import CEILING, ShellConfig, shell
from synth.world import build_world, room_type_for

L = NAME_TO_ID
ALL_IDS = set(SCANNET20) | {0, CEILING}
NEW_TYPES = ("classroom", "conference room", "corridor", "storage room")


def labels(piece: Piece) -> set:
    return {p.label for p in piece.parts}


def bounds(piece: Piece):
    pts = np.concatenate([p.vertices for p in piece.parts])
    return pts.min(0), pts.max(0)


def rngs(n: int = 6):
    return [np.random.default_rng([k, 13]) for k in range(n)]


def test_chairs_of_every_design_stand_on_the_floor_labeled_chair():
    for name, build in seating.CHAIRS.items():
        for rng in rngs():
            c = build(rng)
            lo, hi = bounds(c)
            assert labels(c) == {L["chair"]}, name
            assert abs(lo[2]) < 1e-9 and 0.75 < hi[2] < 1.4, (name, lo, hi)
            assert np.all(hi[:2] - lo[:2] < 0.85) and np.all(hi[:2] - lo[:2] > 0.35), (name, lo, hi)


def test_office_chair_has_a_five_spoke_base_and_a_swivelled_seat():
    for rng in rngs():
        c = seating.office_chair(rng)
        low = [p for p in c.parts if p.vertices[:, 2].max() < 0.15]  # spokes and casters
        assert len(low) == 10
        reach = np.linalg.norm(np.concatenate([p.vertices for p in low])[:, :2], axis=1).max()
        assert 0.27 < reach < 0.4
    seats = [seating.office_chair(r).parts[12].vertices[:, :2] for r in rngs(3)]
    corners = [s[np.argmin(s[:, 0] + s[:, 1])] for s in seats]
    assert len({tuple(np.round(c, 3)) for c in corners}) == 3  # seats turned by different angles


def test_thin_tables_have_slim_legs_and_one_label():
    for rng in rngs(9):
        t = tables.thin_table(rng, 1.4, 0.7)
        assert labels(t) == {L["table"]}
        lo, hi = bounds(t)
        assert abs(lo[2]) < 1e-9 and 0.72 <= hi[2] <= 0.76
        legs = [p for p in t.parts if p.vertices[:, 2].min() < 0.04 and p.vertices[:, 2].max() > 0.6]
        assert legs, "no legs"
        for leg in legs:
            assert np.all(np.ptp(leg.vertices[:, :2], axis=0) <= 0.051)


def test_clutter_is_unlabeled_and_stands_on_the_floor():
    for name, build in clutter.FLOOR_CLUTTER.items():
        for rng in rngs():
            piece = build(rng)
            assert labels(piece) == {0}, name
            assert abs(bounds(piece)[0][2]) < 1e-9
    for rng in rngs():
        parts = clutter.on_surface(rng, -0.7, 0.7, -0.35, 0.35, 0.75)
        assert all(p.label == 0 and p.vertices[:, 2].min() >= 0.75 - 1e-9 for p in parts)
        assert all(p.vertices[:, 0].min() >= -0.75 and p.vertices[:, 0].max() <= 0.75 for p in parts)


def test_desks_tables_and_groups_keep_clutter_unlabeled():
    furniture = {L["desk"], L["table"], L["chair"]}
    for rng in rngs():
        for piece in (tables.desk_setup(rng), tables.conference_set(rng, 3.0, 1.1),
                      tables.classroom_rows(rng, 5.0, 4.0), tables.any_table(rng, 1.2, 0.8)):
            assert labels(piece) <= furniture | {0}, piece.name
            for p in piece.parts:  # anything small sitting on a top is clutter
                ext = np.ptp(p.vertices, axis=0)
                if p.vertices[:, 2].min() > 0.7 and ext.max() < 0.45 and p.label != 0:
                    assert p.label in furniture and p.vertices[:, 2].min() < 0.8, piece.name


def test_wall_fixtures_have_their_labels():
    for rng in rngs():
        assert labels(fixtures.whiteboard(rng)) == {0}
        assert labels(fixtures.radiator(rng)) == {L["otherfurniture"]}
        assert labels(fixtures.pilaster(rng, 2.7)) == {L["wall"]}
        assert labels(fixtures.shelf_rack(rng)) == {0}
        cab = fixtures.wall_cabinets(rng, 3.7, 2.6)
        lo, hi = bounds(cab)
        assert labels(cab) == {L["cabinet"]} and hi[0] - lo[0] == pytest.approx(3.7) and hi[2] <= 2.58 + 1e-9
        win = fixtures.window_with_radiator(rng, 2.7, curtains=False)
        assert labels(win) == {L["window"], L["otherfurniture"]}
        rad_top = max(p.vertices[:, 2].max() for p in win.parts if p.label == L["otherfurniture"])
        sill = min(p.vertices[:, 2].min() for p in win.parts if p.label == L["window"])
        assert rad_top < sill
        assert max(-p.vertices[:, 1].min() for p in win.parts if p.label == L["window"]) >= 0.1  # the sill


def test_doors_open_in_their_frames_closed_doors_cut_nothing():
    for rng in rngs():
        closed, opened = fixtures.door(rng, open_prob=0.0), fixtures.door(rng, open_prob=1.0)
        assert labels(closed) == labels(opened) == {L["door"]}
        assert not closed.openings and len(opened.openings) == 1
        assert bounds(closed)[0][1] > -0.12  # flat on the wall (handle included)
        assert bounds(opened)[0][1] < -0.2  # the leaf stands out into the room
        (olo, ohi), = opened.openings
        assert ohi[2] > 1.9 and ohi[0] - olo[0] > 0.6


def _room_with_open_door():
    size = np.array([4.0, 5.0, 2.7])
    door = fixtures.door(np.random.default_rng(3), open_prob=1.0)
    moved = transform(door, WALL_YAW[0], (2.0, 0.0, 0.0))
    lo, hi = moved.bounds()
    return size, moved, shell(size, "office", np.random.default_rng(4), ShellConfig(), [Placed(moved, lo, hi, 0)])


def test_open_door_cuts_its_doorway_and_shows_a_space_beyond():
    size, door, parts = _room_with_open_door()
    (olo, ohi), = door.openings
    centre = (olo + ohi) / 2
    for p in parts:
        v = p.vertices
        if p.label == L["wall"] and np.allclose(v[:, 1], 0.0):
            covers = (v[:, 0].min() < centre[0] < v[:, 0].max()) and (v[:, 2].min() < centre[2] < v[:, 2].max())
            assert not covers, "the wall still closes the doorway"
    beyond = [p for p in parts if p.vertices[:, 1].max() < 1e-9 and p.vertices[:, 1].min() < -0.9]
    assert {p.label for p in beyond} == {L["floor"], L["wall"], CEILING}
    back = [p for p in beyond if p.label == L["wall"] and np.ptp(p.vertices[:, 1]) < 1e-9]
    assert back and back[0].vertices[:, 0].min() < olo[0] and back[0].vertices[:, 0].max() > ohi[0]


def test_ceiling_is_labeled_ceiling_and_nothing_else_is():
    for seed in (0, 5, 7):
        w = build_world(seed)
        v = w.vertices[w.triangles]
        top = np.all(np.abs(v[:, :, 2] - w.size_m[2]) < 1e-5, axis=1)
        facing_down = w.tri_normals()[:, 2] < -0.99
        ceiling = w.tri_labels == CEILING
        assert np.all(ceiling[top & facing_down]) and np.all(top[ceiling])


def test_room_types_keep_the_first_seeds_and_cycle():
    assert ROOM_TYPES[:5] == HOMELY
    assert set(NEW_TYPES) <= set(ROOM_TYPES)
    assert [room_type_for(s) for s in range(len(ROOM_TYPES))] == list(ROOM_TYPES)


@pytest.fixture(scope="module")
def new_rooms():
    """Two furnished rooms of each new type (placed pieces kept with their parts)."""
    out = []
    for room_type in NEW_TYPES:
        for k in range(2):
            size, placed = furnish(room_type, np.random.default_rng([k, 77]), RoomConfig())
            out.append((room_type, size, placed))
    return out


EXPECTED = {"classroom": {"classroom_rows", "whiteboard", "desk_with_chair", "door"},
            "conference room": {"conference_table", "whiteboard", "door"},
            "corridor": {"door"}, "storage room": {"wall_cabinets", "rack", "door"}}
LABELS_OF = {"bin": {0}, "boxes": {0}, "bag": {0}, "rack": {0}, "whiteboard": {0}, "tv": {0},
             "radiator": {L["otherfurniture"]}, "pilaster": {L["wall"]}, "wall_cabinets": {L["cabinet"]},
             "office_chair": {L["chair"]}, "stacking_chair": {L["chair"]}, "chair": {L["chair"]},
             "door": {L["door"]}, "classroom_rows": {L["table"], L["chair"], 0},
             "conference_table": {L["table"], L["chair"], 0}}


def test_new_room_types_have_their_furniture_inside_and_apart(new_rooms):
    for room_type, size, placed in new_rooms:
        names = {p.piece.name for p in placed}
        assert EXPECTED[room_type] <= names, (room_type, names)
        for i, a in enumerate(placed):
            lo, hi = bounds(a.piece)
            assert np.all(lo >= -1e-6) and np.all(hi <= size + 1e-6), (room_type, a.piece.name)
            assert labels(a.piece) <= LABELS_OF.get(a.piece.name, ALL_IDS), (room_type, a.piece.name)
            for b in placed[i + 1:]:
                assert not (np.all(a.lo < b.hi) and np.all(a.hi > b.lo)), (room_type, a.piece.name, b.piece.name)
    shapes = {t: s for t, s, _ in new_rooms}
    W, D, _ = shapes["corridor"]
    assert max(W, D) / min(W, D) >= 1.8  # long and narrow
    assert min(shapes["classroom"][:2]) >= 6.0


def test_wall_spanning_cabinets_fill_their_wall(new_rooms):
    for room_type, size, placed in new_rooms:
        for p in placed:
            if p.piece.name == "wall_cabinets":
                along = 0 if p.wall in (0, 2) else 1
                assert p.hi[along] - p.lo[along] == pytest.approx(min(size[:2]))


def test_a_seeded_new_room_is_deterministic():
    a, b = build_world(14), build_world(14)  # a classroom
    assert a.room_type == "classroom"
    for name in ("vertices", "triangles", "vertex_labels", "vertex_colors", "tri_materials", "tri_tex_offset"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert [o.name for o in a.obstacles] == [o.name for o in b.obstacles]
    assert not np.array_equal(build_world(23).vertices[:100], a.vertices[:100])

"""EmbeddedShapes: a procedurally generated, part-labelled 3D shape dataset that ships as code, not files.

Ten object classes built from surface-sampled primitives (boxes, frustums, ellipsoids, tori), registered in
openpoints' DATASETS for classification (`EmbeddedShapes`) and part segmentation (`EmbeddedShapesPart`).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Literal, NamedTuple

import numpy as np
import torch

from openpoints.dataset.build import DATASETS

logger = logging.getLogger(__name__)

Split = Literal['train', 'val', 'test']
_SPLIT_CODES = {'train': 0, 'val': 1, 'test': 1}  # val is test, as in ModelNet40Ply2048
_CHUNK = 32  # clouds per random stream: cloud j of a class does not depend on how many are asked for


class _Primitive(NamedTuple):
    """One surface in its local frame (axis z), placed by `rotation` then `centre`, for M clouds at once."""
    kind: str                      # 'box' | 'frustum' | 'ellipsoid' | 'torus'
    part: int                      # part index within the class
    dims: np.ndarray               # (M, D) shape parameters, see the _sample_* functions
    centre: np.ndarray             # (M, 3)
    rotation: np.ndarray | None    # (M, 3, 3) or None (identity)
    present: np.ndarray | None     # (M,) bool or None (always present)


# ----------------------------------------------------------------------------------------------------------------
# Primitive surfaces. Each sampler maps per-point dims (K, D) and uniforms (K, 5) to local points and unit
# normals (K, 3); each area function maps dims (M, D) to areas (M,), used to share points between primitives.

def _sample_box(dims: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dims: half extents (hx, hy, hz). A face is chosen with probability proportional to its area."""
    face_area = np.stack([dims[:, 1] * dims[:, 2], dims[:, 0] * dims[:, 2], dims[:, 0] * dims[:, 1]], 1)
    cumulative = np.cumsum(face_area, 1) / face_area.sum(1, keepdims=True)
    axis = (u[:, :1] > cumulative[:, :2]).sum(1)
    sign = np.where(u[:, 1] < 0.5, -1.0, 1.0)
    pos = (2.0 * u[:, 2:5] - 1.0) * dims
    rows = np.arange(len(dims))
    pos[rows, axis] = sign * dims[rows, axis]
    normal = np.zeros_like(pos)
    normal[rows, axis] = sign
    return pos, normal


def _box_area(dims: np.ndarray) -> np.ndarray:
    hx, hy, hz = dims.T
    return 8.0 * (hx * hy + hy * hz + hx * hz)


def _sample_frustum(dims: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dims: (r_bottom, r_top, half_height, bottom_cap, top_cap); caps are 0/1. Cylinders and cones alike."""
    r0, r1, half_height = dims[:, 0], dims[:, 1], dims[:, 2]
    side, bottom, top = _frustum_areas(dims)
    pick = u[:, 0] * (side + bottom + top)
    region = (pick > side).astype(np.int64) + (pick > side + bottom)
    phi = 2.0 * np.pi * u[:, 1]
    root = np.sqrt(u[:, 2])
    # On the side the density of the height fraction t is proportional to the radius r0 (1 - t) + r1 t: a
    # mixture of the densities 2 (1 - t) and 2 t with weights r0 and r1.
    t = np.where(u[:, 3] * (r0 + r1) < r0, 1.0 - root, root)
    radius = np.select([region == 0, region == 1], [r0 + (r1 - r0) * t, r0 * root], r1 * root)
    z = np.select([region == 0, region == 1], [half_height * (2.0 * t - 1.0), -half_height], half_height)
    pos = np.stack([radius * np.cos(phi), radius * np.sin(phi), z], 1)
    side_normal = np.stack([np.cos(phi), np.sin(phi), (r0 - r1) / (2.0 * half_height)], 1)
    side_normal /= np.linalg.norm(side_normal, axis=1, keepdims=True)
    cap_normal = np.zeros_like(pos)
    cap_normal[:, 2] = np.where(region == 1, -1.0, 1.0)
    return pos, np.where((region == 0)[:, None], side_normal, cap_normal)


def _frustum_areas(dims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r0, r1, half_height, cap0, cap1 = dims.T
    side = np.pi * (r0 + r1) * np.hypot(r1 - r0, 2.0 * half_height)
    return side, cap0 * np.pi * r0 ** 2, cap1 * np.pi * r1 ** 2


def _frustum_area(dims: np.ndarray) -> np.ndarray:
    return sum(_frustum_areas(dims))


def _sample_ellipsoid(dims: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dims: semi-axes (a, b, c). Uniform on the unit sphere (Archimedes), then stretched."""
    z = 2.0 * u[:, 0] - 1.0
    phi = 2.0 * np.pi * u[:, 1]
    ring = np.sqrt(1.0 - z ** 2)
    direction = np.stack([ring * np.cos(phi), ring * np.sin(phi), z], 1)
    normal = direction / dims
    return direction * dims, normal / np.linalg.norm(normal, axis=1, keepdims=True)


def _ellipsoid_area(dims: np.ndarray) -> np.ndarray:
    p = 1.6075  # Knud Thomsen's approximation, within about 1 %
    a, b, c = (dims ** p).T
    return 4.0 * np.pi * ((a * b + a * c + b * c) / 3.0) ** (1.0 / p)


def _sample_torus(dims: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dims: (major radius, minor radius, arc fraction); the arc is centred on +x, in the xy-plane."""
    major, minor, arc = dims.T
    theta = (u[:, 0] - 0.5) * 2.0 * np.pi * arc
    v = 2.0 * np.pi * u[:, 1]
    normal = np.stack([np.cos(v) * np.cos(theta), np.cos(v) * np.sin(theta), np.sin(v)], 1)
    ring = np.stack([major * np.cos(theta), major * np.sin(theta), np.zeros_like(theta)], 1)
    return ring + minor[:, None] * normal, normal


def _torus_area(dims: np.ndarray) -> np.ndarray:
    major, minor, arc = dims.T
    return 4.0 * np.pi ** 2 * major * minor * arc


_SAMPLERS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    'box': _sample_box, 'frustum': _sample_frustum, 'ellipsoid': _sample_ellipsoid, 'torus': _sample_torus}
_AREAS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    'box': _box_area, 'frustum': _frustum_area, 'ellipsoid': _ellipsoid_area, 'torus': _torus_area}


# ----------------------------------------------------------------------------------------------------------------
# Small constructors used by the class builders. Every argument is a scalar or an (M,) array.

def _columns(num_clouds: int, *values: Any) -> np.ndarray:
    return np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64), (num_clouds,)) for v in values], 1)


def _rotation(num_clouds: int, axis: int, angle: Any) -> np.ndarray:
    """(M, 3, 3) right-handed rotations by `angle` (radians) about coordinate axis 0, 1 or 2."""
    angle = np.broadcast_to(np.asarray(angle, dtype=np.float64), (num_clouds,))
    cos, sin = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    rotation = np.zeros((num_clouds, 3, 3))
    rotation[:, axis, axis] = 1.0
    rotation[:, i, i], rotation[:, i, j], rotation[:, j, i], rotation[:, j, j] = cos, -sin, sin, cos
    return rotation


def _box(part: int, centre: np.ndarray, half: np.ndarray, rotation: np.ndarray | None = None,
         present: np.ndarray | None = None) -> _Primitive:
    return _Primitive('box', part, half, centre, rotation, present)


def _frustum(part: int, centre: np.ndarray, r_bottom: Any, r_top: Any, half_height: Any, caps: tuple[bool, bool],
             rotation: np.ndarray | None = None, present: np.ndarray | None = None) -> _Primitive:
    num_clouds = len(centre)
    dims = _columns(num_clouds, r_bottom, r_top, half_height, float(caps[0]), float(caps[1]))
    return _Primitive('frustum', part, dims, centre, rotation, present)


def _ellipsoid(part: int, centre: np.ndarray, radii: np.ndarray, rotation: np.ndarray | None = None,
               present: np.ndarray | None = None) -> _Primitive:
    return _Primitive('ellipsoid', part, radii, centre, rotation, present)


def _torus(part: int, centre: np.ndarray, major: Any, minor: Any, arc: Any, rotation: np.ndarray | None = None,
           present: np.ndarray | None = None) -> _Primitive:
    return _Primitive('torus', part, _columns(len(centre), major, minor, arc), centre, rotation, present)


# ----------------------------------------------------------------------------------------------------------------
# Class builders: z is up while building (converted to openpoints' y-up at the end), x is the long axis.
# Each draws its own proportions and optional parts for M clouds.

def _airplane(rng: np.random.Generator, m: int) -> list[_Primitive]:
    length, radius = rng.uniform(0.8, 1.3, m), rng.uniform(0.07, 0.15, m)
    span, chord = rng.uniform(0.6, 1.2, m), rng.uniform(0.12, 0.28, m)
    sweep, dihedral = rng.uniform(-0.1, 0.6, m), rng.uniform(-0.05, 0.12, m)
    wing_x, wing_z = rng.uniform(-0.15, 0.2, m), rng.uniform(-0.6, 0.6, m) * radius
    has_engines = rng.random(m) < 0.6
    tail_x = -0.85 * length
    prims = [_ellipsoid(0, _columns(m, 0, 0, 0), _columns(m, length, radius, radius * rng.uniform(0.9, 1.2, m)))]
    for side in (-1.0, 1.0):
        turn = _rotation(m, 2, side * sweep) @ _rotation(m, 0, side * dihedral)
        centre = _columns(m, wing_x - np.sin(sweep) * span / 2, side * np.cos(sweep) * span / 2,
                          wing_z + np.sin(dihedral) * span / 2)
        prims.append(_box(1, centre, _columns(m, chord, span / 2, 0.015), turn))
        prims.append(_frustum(3, _columns(m, wing_x + 0.1, side * span * rng.uniform(0.3, 0.45, m), wing_z - 0.07),
                              0.055, 0.05, rng.uniform(0.08, 0.16, m), (True, True),
                              _rotation(m, 1, np.pi / 2), has_engines))
    fin_height = rng.uniform(0.12, 0.3, m)
    prims.append(_box(2, _columns(m, tail_x, 0, radius + fin_height / 2),
                      _columns(m, rng.uniform(0.07, 0.15, m), 0.012, fin_height / 2), _rotation(m, 1, -0.3)))
    prims.append(_box(2, _columns(m, tail_x, 0, radius * rng.uniform(0, 1, m)),
                      _columns(m, rng.uniform(0.06, 0.1, m), rng.uniform(0.15, 0.35, m), 0.012)))
    return prims


def _bottle(rng: np.random.Generator, m: int) -> list[_Primitive]:
    radius, half_height = rng.uniform(0.18, 0.35, m), rng.uniform(0.35, 0.8, m)
    neck_radius = radius * rng.uniform(0.25, 0.5, m)
    shoulder, neck = rng.uniform(0.04, 0.2, m), rng.uniform(0.06, 0.2, m)
    cap = rng.uniform(0.02, 0.06, m)
    top = 2 * half_height
    return [
        _frustum(0, _columns(m, 0, 0, half_height), radius, radius * rng.uniform(0.9, 1.05, m), half_height,
                 (True, False)),
        _frustum(1, _columns(m, 0, 0, top + shoulder), radius, neck_radius, shoulder, (False, False)),
        _frustum(1, _columns(m, 0, 0, top + 2 * shoulder + neck), neck_radius, neck_radius, neck, (False, False)),
        _frustum(2, _columns(m, 0, 0, top + 2 * shoulder + 2 * neck + cap), neck_radius * 1.2, neck_radius * 1.2,
                 cap, (False, True)),
    ]


def _car(rng: np.random.Generator, m: int) -> list[_Primitive]:
    length, width, height = rng.uniform(0.7, 1.2, m), rng.uniform(0.3, 0.5, m), rng.uniform(0.1, 0.2, m)
    wheel_radius, wheel_width = rng.uniform(0.1, 0.19, m), rng.uniform(0.03, 0.08, m)
    cabin_length, cabin_height = length * rng.uniform(0.35, 0.65, m), rng.uniform(0.08, 0.2, m)
    cabin_x = rng.uniform(-0.3, 0.15, m) * length
    body_z = wheel_radius + height * rng.uniform(0.2, 0.8, m)
    prims = [_box(0, _columns(m, 0, 0, body_z), _columns(m, length, width, height)),
             _box(1, _columns(m, cabin_x, 0, body_z + height + cabin_height),
                  _columns(m, cabin_length, width * rng.uniform(0.75, 0.95, m), cabin_height),
                  _rotation(m, 1, rng.uniform(-0.06, 0.06, m)))]
    axle = length * rng.uniform(0.55, 0.8, m)
    for x_side in (-1.0, 1.0):
        for y_side in (-1.0, 1.0):
            prims.append(_frustum(2, _columns(m, x_side * axle, y_side * width, wheel_radius), wheel_radius,
                                  wheel_radius, wheel_width, (True, True), _rotation(m, 0, np.pi / 2)))
    return prims


def _chair(rng: np.random.Generator, m: int) -> list[_Primitive]:
    depth, width = rng.uniform(0.35, 0.6, m), rng.uniform(0.35, 0.6, m)
    seat_z, thickness = rng.uniform(0.35, 0.6, m), rng.uniform(0.02, 0.07, m)
    back_height, tilt = rng.uniform(0.35, 0.9, m), rng.uniform(-0.05, 0.35, m)
    leg_radius, inset = rng.uniform(0.02, 0.05, m), rng.uniform(0.03, 0.1, m)
    has_arms = rng.random(m) < 0.4
    arm_height = rng.uniform(0.15, 0.3, m)
    back_centre = _columns(m, -depth - np.sin(tilt) * back_height / 2, 0,
                           seat_z + thickness + np.cos(tilt) * back_height / 2)
    prims = [_box(0, _columns(m, 0, 0, seat_z), _columns(m, depth, width, thickness)),
             _box(1, back_centre, _columns(m, thickness, width, back_height / 2), _rotation(m, 1, -tilt))]
    splay = rng.uniform(0.0, 0.15, m)
    for x_side in (-1.0, 1.0):
        for y_side in (-1.0, 1.0):
            turn = _rotation(m, 1, x_side * splay)
            prims.append(_frustum(2, _columns(m, x_side * (depth - inset), y_side * (width - inset), seat_z / 2),
                                  leg_radius * rng.uniform(0.6, 1.0, m), leg_radius, seat_z / 2, (False, False),
                                  turn))
        prims.append(_box(3, _columns(m, 0, x_side * (width + 0.03), seat_z + thickness + arm_height / 2),
                          _columns(m, depth * 0.9, 0.03, arm_height / 2), present=has_arms))
    return prims


def _guitar(rng: np.random.Generator, m: int) -> list[_Primitive]:
    lower = _columns(m, rng.uniform(0.28, 0.42, m), rng.uniform(0.05, 0.1, m), rng.uniform(0.3, 0.45, m))
    upper = lower * rng.uniform(0.65, 0.85, m)[:, None]
    upper_z = lower[:, 2] * rng.uniform(0.9, 1.3, m)
    neck_length = rng.uniform(0.35, 0.65, m)
    neck_z = upper_z + upper[:, 2] * 0.8 + neck_length
    head_length = rng.uniform(0.07, 0.14, m)
    head_tilt = rng.uniform(0.0, 0.3, m)
    return [
        _ellipsoid(0, _columns(m, 0, 0, 0), lower),
        _ellipsoid(0, _columns(m, 0, 0, upper_z), upper),
        _box(1, _columns(m, 0, 0, neck_z), _columns(m, rng.uniform(0.03, 0.05, m), 0.025, neck_length)),
        _box(2, _columns(m, 0, -np.sin(head_tilt) * head_length, neck_z + neck_length + head_length),
             _columns(m, rng.uniform(0.05, 0.09, m), 0.02, head_length), _rotation(m, 0, head_tilt)),
    ]


def _lamp(rng: np.random.Generator, m: int) -> list[_Primitive]:
    base_radius, base_height = rng.uniform(0.12, 0.3, m), rng.uniform(0.01, 0.05, m)
    pole_length, pole_radius = rng.uniform(0.5, 1.2, m), rng.uniform(0.012, 0.03, m)
    lean = rng.uniform(-0.5, 0.5, m) * (rng.random(m) < 0.5)
    top = _columns(m, np.sin(lean) * pole_length, 0, 2 * base_height + np.cos(lean) * pole_length)
    shade_bottom, shade_height = rng.uniform(0.12, 0.3, m), rng.uniform(0.08, 0.22, m)
    globe = rng.random(m) < 0.25
    shade_centre = top - _columns(m, 0, 0, shade_height * 0.6)
    pole_centre = _columns(m, np.sin(lean) * pole_length / 2, 0, 2 * base_height + np.cos(lean) * pole_length / 2)
    return [
        _frustum(0, _columns(m, 0, 0, base_height), base_radius, base_radius * rng.uniform(0.6, 1.0, m),
                 base_height, (True, True)),
        _frustum(1, pole_centre, pole_radius, pole_radius, pole_length / 2, (False, False), _rotation(m, 1, lean)),
        _frustum(2, shade_centre, shade_bottom, shade_bottom * rng.uniform(0.3, 0.7, m), shade_height,
                 (False, False), present=~globe),
        _ellipsoid(2, shade_centre, _columns(m, shade_bottom, shade_bottom, shade_bottom) * 0.7, present=globe),
    ]


def _mug(rng: np.random.Generator, m: int) -> list[_Primitive]:
    radius, half_height = rng.uniform(0.25, 0.45, m), rng.uniform(0.25, 0.55, m)
    top_radius = radius * rng.uniform(0.9, 1.2, m)
    handle = rng.uniform(0.35, 0.7, m) * half_height
    handle_z = half_height * (1 + rng.uniform(-0.3, 0.3, m))
    return [
        _frustum(0, _columns(m, 0, 0, half_height), radius, top_radius, half_height, (True, False)),
        _torus(1, _columns(m, (radius + top_radius) / 2, 0, handle_z), handle, rng.uniform(0.02, 0.05, m),
               rng.uniform(0.5, 0.62, m), _rotation(m, 0, np.pi / 2)),
    ]


def _rocket(rng: np.random.Generator, m: int) -> list[_Primitive]:
    radius, half_height = rng.uniform(0.08, 0.18, m), rng.uniform(0.45, 0.85, m)
    nose = rng.uniform(0.1, 0.3, m)
    num_fins = np.where(rng.random(m) < 0.5, 3, 4)
    fin_span, fin_height = rng.uniform(0.07, 0.18, m), rng.uniform(0.1, 0.22, m)
    offset = rng.uniform(0, np.pi / 2, m)
    prims = [_frustum(0, _columns(m, 0, 0, half_height), radius, radius * rng.uniform(0.85, 1.05, m), half_height,
                      (True, False)),
             _frustum(1, _columns(m, 0, 0, 2 * half_height + nose), radius, radius * 0.05, nose, (False, False))]
    for k in range(4):
        angle = offset + 2 * np.pi * k / num_fins
        reach = radius + fin_span / 2
        prims.append(_box(2, _columns(m, np.cos(angle) * reach, np.sin(angle) * reach, fin_height / 2),
                          _columns(m, fin_span / 2, 0.012, fin_height / 2), _rotation(m, 2, angle),
                          present=k < num_fins))
    return prims


def _sofa(rng: np.random.Generator, m: int) -> list[_Primitive]:
    length, depth = rng.uniform(0.8, 1.5, m), rng.uniform(0.35, 0.55, m)
    base_height, back_height = rng.uniform(0.18, 0.35, m), rng.uniform(0.25, 0.55, m)
    back_thickness, arm_width = rng.uniform(0.06, 0.15, m), rng.uniform(0.05, 0.15, m)
    arm_height = base_height + rng.uniform(0.05, 0.25, m)
    has_arms = rng.random(m) < 0.85
    prims = [_box(0, _columns(m, 0, 0, base_height / 2), _columns(m, depth, length, base_height / 2)),
             _box(1, _columns(m, -depth - back_thickness, 0, (base_height + back_height) / 2),
                  _columns(m, back_thickness, length, (base_height + back_height) / 2),
                  _rotation(m, 1, -rng.uniform(0.0, 0.2, m)))]
    for side in (-1.0, 1.0):
        prims.append(_box(2, _columns(m, -back_thickness, side * (length + arm_width), arm_height / 2),
                          _columns(m, depth + back_thickness, arm_width, arm_height / 2), present=has_arms))
    return prims


def _table(rng: np.random.Generator, m: int) -> list[_Primitive]:
    length, width = rng.uniform(0.5, 1.1, m), rng.uniform(0.35, 0.8, m)
    height, thickness = rng.uniform(0.45, 0.9, m), rng.uniform(0.02, 0.06, m)
    leg_radius, inset = rng.uniform(0.02, 0.06, m), rng.uniform(0.03, 0.12, m)
    round_top = rng.random(m) < 0.35
    has_shelf = (rng.random(m) < 0.4) & ~round_top
    leg_z = (height - thickness) / 2
    prims = [_box(0, _columns(m, 0, 0, height), _columns(m, length, width, thickness), present=~round_top),
             _frustum(0, _columns(m, 0, 0, height), length * 0.8, length * 0.8, thickness, (True, True),
                      present=round_top),
             _frustum(1, _columns(m, 0, 0, leg_z), leg_radius * 2, leg_radius * 1.5, leg_z, (False, False),
                      present=round_top),
             _frustum(1, _columns(m, 0, 0, 0.02), length * 0.4, length * 0.35, 0.02, (True, True),
                      present=round_top),
             _box(2, _columns(m, 0, 0, height * rng.uniform(0.15, 0.35, m)),
                  _columns(m, length - inset, width - inset, 0.015), present=has_shelf)]
    for x_side in (-1.0, 1.0):
        for y_side in (-1.0, 1.0):
            prims.append(_frustum(1, _columns(m, x_side * (length - inset), y_side * (width - inset), leg_z),
                                  leg_radius, leg_radius, leg_z, (False, False), present=~round_top))
    return prims


# name -> (part names, builder); the order fixes class ids and global part ids.
_CLASSES: dict[str, tuple[tuple[str, ...], Callable[[np.random.Generator, int], list[_Primitive]]]] = {
    'airplane': (('fuselage', 'wing', 'tail', 'engine'), _airplane),
    'bottle': (('body', 'neck', 'cap'), _bottle),
    'car': (('body', 'cabin', 'wheel'), _car),
    'chair': (('seat', 'back', 'leg', 'arm'), _chair),
    'guitar': (('body', 'neck', 'head'), _guitar),
    'lamp': (('base', 'pole', 'shade'), _lamp),
    'mug': (('body', 'handle'), _mug),
    'rocket': (('body', 'nose', 'fin'), _rocket),
    'sofa': (('seat', 'back', 'arm'), _sofa),
    'table': (('top', 'leg', 'shelf'), _table),
}
CLASS_NAMES: list[str] = list(_CLASSES)
PART_NAMES: list[list[str]] = [list(parts) for parts, _ in _CLASSES.values()]
PARTS_PER_CLASS: list[int] = [len(parts) for parts in PART_NAMES]
PART_START: list[int] = [int(s) for s in np.cumsum([0] + PARTS_PER_CLASS[:-1])]
NUM_PARTS: int = sum(PARTS_PER_CLASS)

_Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # (x, y, z) -> (x, z, -y)


def _normalize(pos: np.ndarray) -> np.ndarray:
    """Centre each cloud on its mean and divide by its largest radius, as ModelNet40Ply2048's data is."""
    pos = pos - pos.mean(axis=1, keepdims=True)
    return pos / np.linalg.norm(pos, axis=2).max(axis=1)[:, None, None]


def _generate_chunk(class_index: int, num_clouds: int, num_points: int, rng: np.random.Generator,
                    style: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, N, 3) points, (M, N, 3) normals, (M, N) global part ids for M clouds of one class."""
    noise_std, anisotropy, max_yaw, max_tilt = style
    m, n = num_clouds, num_points
    primitives = _CLASSES[CLASS_NAMES[class_index]][1](rng, m)
    areas = np.stack([_AREAS[p.kind](p.dims) * (1.0 if p.present is None else p.present) for p in primitives], 1)
    cumulative = np.cumsum(areas, 1) / areas.sum(1, keepdims=True)
    # Stratified draws: each primitive gets its area share of the points, up to one point.
    u = (np.arange(n) + rng.random((m, 1))) / n
    choice = (u[:, :, None] > cumulative[:, None, :-1]).sum(-1)
    pos, normal = np.empty((m, n, 3)), np.empty((m, n, 3))
    part = np.empty((m, n), dtype=np.int64)
    for index, prim in enumerate(primitives):
        cloud, point = np.nonzero(choice == index)
        local_pos, local_normal = _SAMPLERS[prim.kind](prim.dims[cloud], rng.random((len(cloud), 5)))
        if prim.rotation is not None:
            rotation = prim.rotation[cloud]
            local_pos = np.einsum('kij,kj->ki', rotation, local_pos)
            local_normal = np.einsum('kij,kj->ki', rotation, local_normal)
        pos[cloud, point] = local_pos + prim.centre[cloud]
        normal[cloud, point] = local_normal
        part[cloud, point] = PART_START[class_index] + prim.part
    # Whole-object variation: anisotropic scale (normals follow the inverse), a small random pose, noise.
    scale = np.exp(rng.uniform(-np.log(anisotropy), np.log(anisotropy), (m, 1, 3)))
    pos, normal = pos * scale, normal / scale
    tilt = rng.uniform(-max_tilt, max_tilt, (2, m))
    pose = _Z_UP_TO_Y_UP @ _rotation(m, 2, rng.uniform(-max_yaw, max_yaw, m)) @ _rotation(m, 0, tilt[0]) \
        @ _rotation(m, 1, tilt[1])
    pos, normal = np.einsum('mij,mnj->mni', pose, pos), np.einsum('mij,mnj->mni', pose, normal)
    normal /= np.linalg.norm(normal, axis=2, keepdims=True)
    pos = _normalize(_normalize(pos) + noise_std * rng.standard_normal(pos.shape))
    order = np.argsort(rng.random((m, n)), axis=1)  # points in random order, not grouped by primitive
    pos = np.take_along_axis(pos, order[..., None], 1)
    normal = np.take_along_axis(normal, order[..., None], 1)
    return pos, normal, np.take_along_axis(part, order, 1)


@functools.lru_cache(maxsize=8)
def _generate_cached(split_code: int, num_classes: int, num_per_class: int, num_points: int, seed: int,
                     style: tuple[float, float, float, float]) -> tuple[np.ndarray, ...]:
    pos, normal, part = [], [], []
    for class_index in range(num_classes):
        rngs = [np.random.default_rng([seed, split_code, class_index, chunk])
                for chunk in range(-(-num_per_class // _CHUNK))]
        chunks = [_generate_chunk(class_index, _CHUNK, num_points, rng, style) for rng in rngs]
        for arrays, chunk_arrays in zip((pos, normal, part), zip(*chunks)):
            arrays.append(np.concatenate(chunk_arrays)[:num_per_class])
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), num_per_class)
    arrays = (np.concatenate(pos).astype(np.float32), np.concatenate(normal).astype(np.float32),
              np.concatenate(part), labels)
    for array in arrays:
        array.setflags(write=False)  # shared by every dataset built with these arguments
    return arrays


def generate_embedded_shapes(*, split: Split = 'train', num_classes: int | None = None, num_per_class: int = 100,
                             num_points: int = 1024, seed: int = 0, noise_std: float = 0.01, anisotropy: float = 1.6,
                             max_yaw_deg: float = 45.0, max_tilt_deg: float = 10.0) -> dict[str, np.ndarray]:
    """All clouds of one split, class by class (class 0's clouds first).

    Cloud j of class c depends only on (seed, split, c, j, num_points and the style arguments), not on
    num_classes or num_per_class; train and test come from independent random streams; 'val' is 'test', as
    in ModelNet40Ply2048.

    Args:
        split: 'train', 'val' or 'test'. Default 'train'.
        num_classes: K, use the first K classes of `CLASS_NAMES`; None for all 10. Default None.
        num_per_class: clouds per class. Default 100.
        num_points: N, points per cloud. Default 1024.
        seed: base seed. Default 0.
        noise_std: Gaussian point noise, in units of the unit sphere. Default 0.01.
        anisotropy: each axis is scaled by a log-uniform factor in [1/anisotropy, anisotropy]. Default 1.6.
        max_yaw_deg: uniform rotation about the up axis in ±max_yaw_deg. Default 45.
        max_tilt_deg: uniform rotations about the two horizontal axes in ±max_tilt_deg. Default 10.

    Returns:
        dict with read-only arrays `pos` (M, N, 3) float32 (each cloud centred, max radius 1), `normals`
        (M, N, 3) float32 unit normals, `parts` (M, N) int64 global part ids and `labels` (M,) int64,
        where M = num_per_class * K.

    Raises:
        ValueError: on an unknown split, a non-positive size or a num_classes outside [1, 10].
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {split!r}.")
    num_classes = len(CLASS_NAMES) if num_classes is None else int(num_classes)
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f'num_classes must be in [1, {len(CLASS_NAMES)}] (the first K of {CLASS_NAMES}) '
                         f'or None for all, got {num_classes}.')
    if num_per_class < 1 or num_points < 1:
        raise ValueError(f'num_per_class and num_points must be >= 1, got {num_per_class} and {num_points}.')
    if anisotropy < 1.0:
        raise ValueError(f'anisotropy must be >= 1 (1 = no anisotropic scaling), got {anisotropy}.')
    style = (float(noise_std), float(anisotropy), float(np.deg2rad(max_yaw_deg)), float(np.deg2rad(max_tilt_deg)))
    pos, normals, parts, labels = _generate_cached(_SPLIT_CODES[split], num_classes, int(num_per_class),
                                                   int(num_points), int(seed), style)
    return {'pos': pos, 'normals': normals, 'parts': parts, 'labels': labels}


_LOGGED_IGNORED: set[tuple[str, str]] = set()


class _EmbeddedShapesBase(torch.utils.data.Dataset):
    """Generation, attributes and argument checks shared by the classification and segmentation variants."""

    def __init__(self, *, split: str, num_classes: int | None, num_points: int, num_per_class_train: int,
                 num_per_class_test: int, seed: int, transform: Callable | None, noise_std: float,
                 anisotropy: float, max_yaw_deg: float, max_tilt_deg: float, ignored: dict[str, Any]):
        name = type(self).__name__
        new = sorted(key for key in ignored if (name, key) not in _LOGGED_IGNORED)
        if new:
            _LOGGED_IGNORED.update((name, key) for key in new)
            logger.warning('%s ignores the keys %s (openpoints passes every dataset the shared keys).',
                           name, ', '.join(new))
        if not isinstance(split, str) or split.lower() not in _SPLIT_CODES:
            raise ValueError(f"{name}: split must be 'train', 'val' or 'test', got {split!r}.")
        self.split = split.lower()
        self.partition = 'train' if self.split == 'train' else 'test'
        self.num_points = int(num_points)
        self.num_per_class = int(num_per_class_train if self.split == 'train' else num_per_class_test)
        self.seed = int(seed)
        self.transform = transform
        arrays = generate_embedded_shapes(split=self.split, num_classes=num_classes, num_per_class=self.num_per_class,
                                          num_points=self.num_points, seed=self.seed, noise_std=noise_std,
                                          anisotropy=anisotropy, max_yaw_deg=max_yaw_deg, max_tilt_deg=max_tilt_deg)
        # Own, writable copies (cheap): the cached arrays are shared, and torch.from_numpy warns on read-only ones.
        self.points, self.normals = arrays['pos'].copy(), arrays['normals'].copy()
        self.parts, self.labels = arrays['parts'].copy(), arrays['labels'].copy()
        self.classes = CLASS_NAMES[:int(self.labels.max()) + 1]
        logger.info('%s %s: %d clouds x %d points, %d classes (seed %d)', name, self.split, len(self.labels),
                    self.num_points, len(self.classes), self.seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(split={self.split!r}, classes={len(self.classes)}, '
                f'num_points={self.num_points}, num_per_class={self.num_per_class}, seed={self.seed})')


@DATASETS.register_module()
class EmbeddedShapes(_EmbeddedShapesBase):
    """Procedural shape classification set (10 classes) with the item format of openpoints' ModelNet40Ply2048.

    Items are `{'pos': (N, 3) float32, 'y': int64}` passed through `transform`, then `x` = `pos` (or
    `cat(pos, heights)` when a transform added `heights`). The whole split is also available at once:
    `points` (M, N, 3) float32 and `labels` (M,) int64, sorted by class (also `normals` and `parts`).

    Args:
        split: 'train', 'val' or 'test' ('val' is 'test'). Default 'train'.
        num_classes: K, use the first K classes of `CLASS_NAMES`; None for all 10. Default None.
        num_points: N, points per cloud. Default 1024.
        num_per_class_train: clouds per class in the train split. Default 100.
        num_per_class_test: clouds per class in the val/test split. Default 50.
        seed: generation seed; the same seed gives the same clouds. Default 0.
        transform: an openpoints transform (e.g. from `build_transforms_from_cfg`) or None. Default None.
        noise_std: Gaussian point noise on the unit sphere. Default 0.01.
        anisotropy: per-axis log-uniform scale in [1/anisotropy, anisotropy]. Default 1.6.
        max_yaw_deg: random rotation about the up axis (y) in ±max_yaw_deg. Default 45.
        max_tilt_deg: random rotations about the horizontal axes in ±max_tilt_deg. Default 10.
        **kwargs: ignored (openpoints passes every dataset its shared keys); the keys are logged once.

    Raises:
        ValueError: on an unknown split, non-positive sizes or num_classes outside [1, 10].
    """

    def __init__(self, split: str = 'train', num_classes: int | None = None, num_points: int = 1024,
                 num_per_class_train: int = 100, num_per_class_test: int = 50, seed: int = 0,
                 transform: Callable | None = None, noise_std: float = 0.01, anisotropy: float = 1.6,
                 max_yaw_deg: float = 45.0, max_tilt_deg: float = 10.0, **kwargs: Any):
        super().__init__(split=split, num_classes=num_classes, num_points=num_points,
                         num_per_class_train=num_per_class_train, num_per_class_test=num_per_class_test, seed=seed,
                         transform=transform, noise_std=noise_std, anisotropy=anisotropy, max_yaw_deg=max_yaw_deg,
                         max_tilt_deg=max_tilt_deg, ignored=kwargs)
        self.num_classes = len(self.classes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        # A copy: transforms may work in place (ModelNet40Ply2048 shuffles its stored array by accident).
        data = {'pos': self.points[index].copy(), 'y': self.labels[index]}
        if self.transform is not None:
            data = self.transform(data)
        if 'heights' in data:
            data['x'] = torch.cat((data['pos'], data['heights']), dim=1)
        else:
            data['x'] = data['pos']
        return data


@DATASETS.register_module()
class EmbeddedShapesPart(_EmbeddedShapesBase):
    """The same shapes with per-point part labels, in the item format of openpoints' ShapeNetPartNormal.

    Items are `{'pos': (N, 3) float32, 'x': (N, 3) float32 unit normals, 'cls': (1,) int64 category,
    'y': (N,) int64 global part ids}` passed through `transform`. Part ids are global across categories, as
    in ShapeNet-part: category c owns ids `part_start[c] .. part_start[c] + parts_per_class[c] - 1`.

    As in PointNeXt's part-segmentation configs and `DistillPointNetSeg`, `num_classes` is the number of part
    labels (PointNeXt asserts it against `cfg.num_classes`); the number of categories is `num_shape_classes`.
    Attributes: `classes`, `num_shape_classes`, `num_parts` (= `num_classes`), `parts_per_class`, `part_start`,
    `part_names`, and ShapeNetPartNormal's `cls2parts` and `cls2partembed` ((K, num_parts) float tensor).

    Args:
        num_shape_classes: K, use the first K categories; None for all 10. Default None.
        The others: as `EmbeddedShapes`.

    Raises:
        ValueError: on an unknown split, non-positive sizes or num_shape_classes outside [1, 10].
    """

    def __init__(self, split: str = 'train', num_shape_classes: int | None = None, num_points: int = 1024,
                 num_per_class_train: int = 100, num_per_class_test: int = 50, seed: int = 0,
                 transform: Callable | None = None, noise_std: float = 0.01, anisotropy: float = 1.6,
                 max_yaw_deg: float = 45.0, max_tilt_deg: float = 10.0, **kwargs: Any):
        super().__init__(split=split, num_classes=num_shape_classes, num_points=num_points,
                         num_per_class_train=num_per_class_train, num_per_class_test=num_per_class_test, seed=seed,
                         transform=transform, noise_std=noise_std, anisotropy=anisotropy, max_yaw_deg=max_yaw_deg,
                         max_tilt_deg=max_tilt_deg, ignored=kwargs)
        k = len(self.classes)
        self.num_shape_classes = k
        self.part_names = PART_NAMES[:k]
        self.parts_per_class = PARTS_PER_CLASS[:k]
        self.part_start = PART_START[:k]
        self.num_parts = self.num_classes = sum(self.parts_per_class)
        self.cls2parts = [list(range(start, start + count)) for start, count in zip(self.part_start,
                                                                                      self.parts_per_class)]
        self.cls2partembed = torch.zeros(k, self.num_parts)
        for category, ids in enumerate(self.cls2parts):
            self.cls2partembed[category, ids] = 1.0

    def __getitem__(self, index: int) -> dict[str, Any]:
        data = {'pos': self.points[index].copy(), 'x': self.normals[index].copy(),
                'cls': self.labels[index:index + 1].copy(), 'y': self.parts[index].copy()}
        if self.transform is not None:
            data = self.transform(data)
        return data

"""Coordinates and regions of interest in world units (nm).

Everything a user writes in a config (offsets, block shapes, context) is in
world units. Arrays translate world units to voxels through their voxel size,
and every ROI that touches an array must be snapped to that voxel grid first.

Examples
--------
>>> roi = Roi((0, 0, 0), (400, 800, 800))
>>> roi.grow((40, 80, 80)).shape
(480, 960, 960)
>>> roi.snap((30, 7, 7)).shape
(420, 805, 805)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

Coordinate = tuple[int, ...]


def coordinate(values: Iterable[float]) -> Coordinate:
    """Return ``values`` as an integer coordinate tuple.

    Raises
    ------
    ValueError
        If a value is not integral (world units are whole nanometres).
    """
    out = []
    for value in values:
        if int(value) != value:
            raise ValueError(f"coordinates must be whole numbers of nm, got {value!r}")
        out.append(int(value))
    return tuple(out)


def _floor_to(value: int, step: int) -> int:
    return (value // step) * step


def _ceil_to(value: int, step: int) -> int:
    return -((-value) // step) * step


@dataclass(frozen=True, order=True)
class Roi:
    """An axis-aligned box ``[offset, offset + shape)`` in world units.

    Parameters
    ----------
    offset : sequence of int
        The lowest corner, in nm.
    shape : sequence of int
        The extent along each axis, in nm; never negative.
    """

    offset: Coordinate
    shape: Coordinate

    def __init__(self, offset: Sequence[float], shape: Sequence[float]) -> None:
        offset_c = coordinate(offset)
        shape_c = coordinate(shape)
        if len(offset_c) != len(shape_c):
            raise ValueError(f"offset {offset_c} and shape {shape_c} differ in dimensions")
        if any(s < 0 for s in shape_c):
            raise ValueError(f"ROI shape must not be negative, got {shape_c}")
        object.__setattr__(self, "offset", offset_c)
        object.__setattr__(self, "shape", shape_c)

    @property
    def dims(self) -> int:
        return len(self.offset)

    @property
    def end(self) -> Coordinate:
        return tuple(o + s for o, s in zip(self.offset, self.shape))

    @property
    def empty(self) -> bool:
        return any(s == 0 for s in self.shape)

    def grow(self, amount_neg: Sequence[int], amount_pos: Sequence[int] | None = None) -> "Roi":
        """Grow by ``amount_neg`` below and ``amount_pos`` (default: the same) above."""
        amount_pos = amount_neg if amount_pos is None else amount_pos
        offset = tuple(o - a for o, a in zip(self.offset, amount_neg))
        end = tuple(e + a for e, a in zip(self.end, amount_pos))
        return Roi(offset, tuple(e - o for o, e in zip(offset, end)))

    def shift(self, by: Sequence[int]) -> "Roi":
        return Roi(tuple(o + b for o, b in zip(self.offset, by)), self.shape)

    def intersect(self, other: "Roi") -> "Roi":
        """The overlap with ``other`` (an empty ROI if they do not overlap)."""
        offset = tuple(max(a, b) for a, b in zip(self.offset, other.offset))
        end = tuple(min(a, b) for a, b in zip(self.end, other.end))
        shape = tuple(max(0, e - o) for o, e in zip(offset, end))
        return Roi(offset, shape)

    def contains(self, other: "Roi") -> bool:
        return all(so <= oo for so, oo in zip(self.offset, other.offset)) and all(
            se >= oe for se, oe in zip(self.end, other.end)
        )

    def contains_point(self, point: Sequence[float]) -> bool:
        return all(o <= p < e for o, p, e in zip(self.offset, point, self.end))

    def snap(self, voxel_size: Sequence[int], mode: str = "grow") -> "Roi":
        """Snap to the grid of ``voxel_size``.

        ``grow`` takes the smallest grid-aligned ROI that contains this one,
        ``shrink`` the largest one it contains, ``closest`` rounds both ends.
        """
        voxel_size = coordinate(voxel_size)
        if mode == "grow":
            offset = tuple(_floor_to(o, v) for o, v in zip(self.offset, voxel_size))
            end = tuple(_ceil_to(e, v) for e, v in zip(self.end, voxel_size))
        elif mode == "shrink":
            offset = tuple(_ceil_to(o, v) for o, v in zip(self.offset, voxel_size))
            end = tuple(_floor_to(e, v) for e, v in zip(self.end, voxel_size))
        elif mode == "closest":
            offset = tuple(round(o / v) * v for o, v in zip(self.offset, voxel_size))
            end = tuple(round(e / v) * v for e, v in zip(self.end, voxel_size))
        else:
            raise ValueError(f"unknown snap mode {mode!r}: use grow, shrink or closest")
        end = tuple(max(o, e) for o, e in zip(offset, end))
        return Roi(offset, tuple(e - o for o, e in zip(offset, end)))

    def is_aligned(self, voxel_size: Sequence[int]) -> bool:
        return all(o % v == 0 and s % v == 0 for o, s, v in zip(self.offset, self.shape, voxel_size))

    def to_voxels(self, voxel_size: Sequence[int]) -> tuple[Coordinate, Coordinate]:
        """Offset and shape in voxels; the ROI must be aligned to ``voxel_size``."""
        if not self.is_aligned(voxel_size):
            raise ValueError(f"{self} is not aligned to the voxel size {tuple(voxel_size)}")
        return (
            tuple(o // v for o, v in zip(self.offset, voxel_size)),
            tuple(s // v for s, v in zip(self.shape, voxel_size)),
        )

    def slices(self, voxel_size: Sequence[int], origin: Sequence[int]) -> tuple[slice, ...]:
        """Voxel slices of this ROI in an array whose first voxel is at ``origin`` (nm)."""
        shifted = self.shift(tuple(-o for o in origin))
        offset, shape = shifted.to_voxels(voxel_size)
        return tuple(slice(o, o + s) for o, s in zip(offset, shape))

    def __str__(self) -> str:
        return f"[{', '.join(f'{o}:{e}' for o, e in zip(self.offset, self.end))}] nm"

"""Polygons of a binary mask traced along pixel edges (the exact outline of the pixels, not their centres).

Pixel (x, y) covers [x, x+1) x [y, y+1), so every vertex is an integer pixel corner and a polygon's
area equals its pixel count. Regions are 4-connected: two pixels that touch only at a corner belong
to different polygons. Rings are made valid in the OGC sense (no self-touching ring): where a
boundary passes the same corner twice it is split there, which leaves an exterior ring and a hole
that touch at that one point (allowed). Exterior rings run counter-clockwise in the (x, y) numbers
(RFC 7946), holes clockwise.

How: the boundary is the set of unit edges between a foreground and a background pixel, merged into
maximal straight runs, each directed so that the foreground lies on its right-hand side as seen on
screen (y down). Runs are chained end to start; at a corner where two diagonal foreground pixels
meet (two runs leave it) the chain turns towards the foreground it came along, which keeps the
diagonal pixels apart. Each closed chain is split into simple loops at repeated corners; a loop is
an exterior or a hole by the sign of its area and belongs to the 4-connected component on its
right-hand side.
"""

from __future__ import annotations

import numpy as np

from cervrt._cv import cv2

__all__ = ["Component", "trace_components"]


class Component:
    """One 4-connected region: its rings (integer corner coordinates), pixel count and bounding rows."""

    __slots__ = ("exteriors", "holes", "pixels", "row0", "row1")

    def __init__(self, pixels: int, row0: int, row1: int) -> None:
        self.exteriors: list[np.ndarray] = []  # (n, 2) float64 x, y, ring not repeated at its end
        self.holes: list[np.ndarray] = []
        self.pixels = pixels
        self.row0, self.row1 = row0, row1  # first row and one past the last row of its pixels


def _runs(diff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of equal non-zero values along each row of ``diff``: row, first column, end column, value."""
    padded = np.zeros((diff.shape[0], diff.shape[1] + 2), np.int8)
    padded[:, 1:-1] = diff
    inner = padded[:, 1:-1]
    rows, first = np.nonzero((inner != 0) & (inner != padded[:, :-2]))
    _, last = np.nonzero((inner != 0) & (inner != padded[:, 2:]))
    return rows, first, last + 1, inner[rows, first]


def _segments(mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Directed boundary runs: start x, start y, end x, end y, direction (0 +x, 1 +y, 2 -x, 3 -y) and the
    foreground pixel (row, column) on the right-hand side of each run's first unit edge."""
    h, w = mask.shape
    p = np.zeros((h + 2, w + 2), np.int8)
    p[1:-1, 1:-1] = mask
    y, a, b, v = _runs(p[1:, 1:-1] - p[:-1, 1:-1])  # horizontal boundaries y = 0..h; +1: foreground below
    top = v > 0
    hx0, hx1 = np.where(top, a, b), np.where(top, b, a)
    hdir = np.where(top, 0, 2)
    hpr, hpc = np.where(top, y, y - 1), np.where(top, a, b - 1)
    x, a, b, v = _runs((p[1:-1, 1:] - p[1:-1, :-1]).T)  # vertical boundaries x = 0..w; +1: foreground right
    left = v > 0
    vy0, vy1 = np.where(left, b, a), np.where(left, a, b)
    vdir = np.where(left, 3, 1)
    vpr, vpc = np.where(left, b - 1, a), np.where(left, x, x - 1)
    return (np.concatenate([hx0, x]), np.concatenate([y, vy0]), np.concatenate([hx1, x]),
            np.concatenate([y, vy1]), np.concatenate([hdir, vdir]), np.concatenate([hpr, vpr]),
            np.concatenate([hpc, vpc]))


def _successors(start: np.ndarray, end: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The run that follows each run, and whether each run starts at a saddle corner (two runs leave it)."""
    order = np.argsort(start, kind="stable")
    ordered = start[order]
    lo = np.searchsorted(ordered, end, "left")
    hi = np.searchsorted(ordered, end, "right")
    nxt = order[lo]
    two = (hi - lo) == 2
    if two.any():
        second = order[np.minimum(lo + 1, len(order) - 1)]
        turn_right = (direction + 1) % 4
        nxt = np.where(two & (direction[second] == turn_right), second, nxt)
    lo_s = np.searchsorted(ordered, start, "left")
    hi_s = np.searchsorted(ordered, start, "right")
    return nxt, (hi_s - lo_s) == 2


def _loops(nxt: np.ndarray, start: np.ndarray, saddle: np.ndarray) -> list[list[int]]:
    """Simple loops of runs: each cycle of ``nxt``, split where it passes a saddle corner a second time."""
    seen = np.zeros(len(nxt), bool)
    nxt_l, start_l, saddle_l = nxt.tolist(), start.tolist(), saddle.tolist()
    loops: list[list[int]] = []
    for first in range(len(nxt_l)):
        if seen[first]:
            continue
        path: list[int] = []
        at: dict[int, int] = {}  # saddle corner -> index in path of the run starting there
        i = first
        while not seen[i]:
            seen[i] = True
            if saddle_l[i]:
                corner = start_l[i]
                j = at.get(corner)
                if j is not None:  # back at a corner this walk passed: the runs since then close a loop
                    loop = path[j:]
                    loops.append(loop)
                    for r in loop:
                        if saddle_l[r]:
                            at.pop(start_l[r], None)
                    del path[j:]
                at[corner] = len(path)
            path.append(i)
            i = nxt_l[i]
        loops.append(path)
    return loops


def trace_components(mask: np.ndarray, row_offset: int = 0, col_offset: int = 0) -> tuple[list[Component], np.ndarray]:
    """The 4-connected components of a boolean mask with their rings in pixel-corner coordinates, and the
    int32 label image (0 background, component j has label j + 1).

    ``row_offset`` and ``col_offset`` are added to every y and x (for a crop of a larger mask); components
    come in label order.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if not mask.any():
        return [], np.zeros(mask.shape, np.int32)
    count, cc, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4, ltype=cv2.CV_32S)
    components = [Component(int(stats[k, cv2.CC_STAT_AREA]), row_offset + int(stats[k, cv2.CC_STAT_TOP]),
                            row_offset + int(stats[k, cv2.CC_STAT_TOP] + stats[k, cv2.CC_STAT_HEIGHT]))
                  for k in range(1, count)]
    sx, sy, ex, ey, direction, prow, pcol = _segments(mask)
    stride = mask.shape[1] + 1
    start, end = sy * stride + sx, ey * stride + ex
    nxt, saddle = _successors(start, end, direction)
    loops = _loops(nxt, start, saddle)
    order = np.fromiter((r for loop in loops for r in loop), np.int64, len(nxt))
    offsets = np.cumsum([0] + [len(loop) for loop in loops[:-1]])
    # twice the signed (shoelace) area: a run (x0, y0) -> (x1, y1) adds x0 * y1 - x1 * y0
    area2 = np.add.reduceat((sx * ey - ex * sy)[order].astype(np.int64), offsets)
    owner = cc[prow[order[offsets]], pcol[order[offsets]]]
    corners = np.stack([sx[order] + col_offset, sy[order] + row_offset], axis=1).astype(np.float64)
    for ring, a2, k in zip(np.split(corners, offsets[1:]), area2.tolist(), owner.tolist(), strict=True):
        component = components[k - 1]
        (component.exteriors if a2 > 0 else component.holes).append(ring)
    return components, cc

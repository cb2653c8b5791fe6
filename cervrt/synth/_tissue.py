"""The drawing behind :mod:`cervrt.synth`: stain, band geometry, nuclei by grade, stroma.

Everything is in pixels at MTCHI's 0.904 um/px and works on hematoxylin / eosin concentration maps
that :func:`render` turns into RGB by Beer-Lambert. Private to the synth module: no checks here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from cervrt._cv import cv2

__all__ = ["ATYPIA_EXTENT", "Stain", "random_grades", "random_stain", "render", "tissue"]

#: Share of the epithelial thickness, from the basement membrane, filled with atypical nuclei, by class.
ATYPIA_EXTENT: dict[int, float] = {1: 0.0, 2: 1 / 3, 3: 2 / 3, 4: 1.0}

_FULL_GEOMETRY = 400  # regions at least this big get the full 60-150 px epithelium
_H_OD = np.array([0.65, 0.70, 0.29])  # Ruifrok & Johnston hematoxylin optical density, RGB
_E_OD = np.array([0.12, 0.62, 0.30])  # eosin, tuned towards the pink of cervical stroma
_GLASS_OD = np.array([0.030, 0.034, 0.022])
_H_MAX = 2.6  # hematoxylin concentration drawn as 255 on the nucleus canvas

# Mature (normal-looking) layers: top relative depth, row gap, spacing along the membrane,
# radius along the membrane, radius across it, hematoxylin. Upright basal nuclei, small round
# parabasal and intermediate ones, flattened pyknotic superficial ones.
_LAYERS = (
    (0.10, 6.0, 7.0, 2.0, 3.0, 1.00),
    (0.30, 9.0, 10.5, 3.0, 2.8, 0.92),
    (0.75, 14.0, 19.0, 2.7, 2.5, 0.88),
    (0.97, 7.0, 22.0, 3.4, 1.2, 1.15),
)
_ATYPIA_SPACING = 9.5


class _Nuclei(NamedTuple):
    """Filled ellipses: centre, half-axes (``a`` along ``angle``), angle in degrees, hematoxylin."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    value: np.ndarray

    @staticmethod
    def concat(parts: Sequence[_Nuclei]) -> _Nuclei:
        return _Nuclei(*(np.concatenate(column) for column in zip(*parts, strict=True)))


@dataclass(frozen=True)
class Stain:
    """Per-region stain: unit H and E optical-density vectors and concentration scales."""

    h: np.ndarray
    e: np.ndarray
    h_scale: float
    e_scale: float


@dataclass(frozen=True)
class _Band:
    """An epithelial band in a frame (u along it, v across it, stroma towards +v) rotated by theta.

    The basement membrane is a displaced sum of sinusoids plus rete pegs; the surface follows it
    more smoothly at a slowly varying thickness. Segments along u carry the grades.
    """

    theta: float
    centre: tuple[float, float]
    offset: float
    waves: np.ndarray  # (n, 3): amplitude, angular frequency, phase
    pegs: np.ndarray  # depth, angular frequency, phase
    thick: np.ndarray  # mean, amplitude, angular frequency, phase
    cuts: np.ndarray = field(default_factory=lambda: np.zeros(0))  # u of the segment boundaries
    grades: tuple[int, ...] = (1,)
    extents: np.ndarray = field(default_factory=lambda: np.full(1, -1.0))  # atypia extent per segment
    wobble: np.ndarray = field(default_factory=lambda: np.zeros(3))  # atypia front: amplitude, frequency, phase
    slant: float = 0.0  # tilt of the segment boundaries

    def membrane(self, u: np.ndarray) -> np.ndarray:
        a, k, p = self.waves[:, 0], self.waves[:, 1], self.waves[:, 2]
        v = self.offset + sum(a[i] * np.sin(k[i] * u + p[i]) for i in range(len(a)))
        phase = self.pegs[1] * u + self.pegs[2] + 1.5 * np.sin(0.31 * self.pegs[1] * u)
        return v + self.pegs[0] * (0.5 + 0.5 * np.sin(phase)) ** 2

    def surface(self, u: np.ndarray) -> np.ndarray:
        a, k, p = self.waves[0]
        v = self.offset + 0.8 * a * np.sin(k * u + p)
        mean, amp, freq, phase = self.thick
        return v - (mean + amp * np.sin(freq * u + phase))

    def to_image(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.theta), math.sin(self.theta)
        return self.centre[0] + u * c - v * s, self.centre[1] + u * s + v * c

    def to_band(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.theta), math.sin(self.theta)
        dx, dy = x - self.centre[0], y - self.centre[1]
        return dx * c + dy * s, dy * c - dx * s

    def segment(self, u: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.cuts, u + self.slant * t)

    def atypia(self, u: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Relative depth up to which nuclei are atypical (negative: none, above 1: all)."""
        base = self.extents[self.segment(u, t)]
        amp, freq, phase = self.wobble
        partial = (base > 0) & (base < 1)
        return np.where(partial, base + amp * np.sin(freq * u + phase), base)

    def u_range(self, h: int, w: int) -> tuple[float, float]:
        u, _ = self.to_band(np.array([0.0, w, 0.0, w]), np.array([0.0, 0.0, h, h]))
        return float(u.min()) - 10.0, float(u.max()) + 10.0


# --- stain, noise and rendering ---------------------------------------------------------------


def random_stain(rng: np.random.Generator) -> Stain:
    def jitter(vector: np.ndarray) -> np.ndarray:
        v = np.clip(vector + rng.normal(0.0, 0.035, 3), 0.02, None)
        return v / np.linalg.norm(v)

    return Stain(jitter(_H_OD), jitter(_E_OD), float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15)))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Roughly unit-variance noise, smooth over ``scale`` pixels."""
    h, w = shape
    grid = rng.standard_normal((max(2, math.ceil(h / scale) + 1), max(2, math.ceil(w / scale) + 1)), dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def render(rng: np.random.Generator, hema: np.ndarray, eosin: np.ndarray, stain: Stain) -> np.ndarray:
    """Beer-Lambert: RGB = 255 exp(-(H h + E e + glass)), with uneven lighting and sensor noise."""
    od = (hema * stain.h_scale)[..., None] * stain.h.astype(np.float32)
    od += (eosin * stain.e_scale)[..., None] * stain.e.astype(np.float32)
    od += _GLASS_OD.astype(np.float32)
    light = 1.0 + 0.005 * _smooth_noise(rng, hema.shape, 250.0)
    rgb = 255.0 * np.exp(-od) * light[..., None]
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * 2.0
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


# --- geometry ---------------------------------------------------------------------------------


def _thickness_range(scale: float, short: int) -> tuple[float, float]:
    """Mean band thickness range: 60-150 px times ``scale``, but never under four atypical-nucleus
    spacings (38 px) where the region has room (0.3 of its short side): a thinner band leaves CIN 2
    (atypia up to 2/3) about one nucleus short of CIN 3 (full thickness), which a 64 px patch of a
    128 px region (0.32 scale, 19-48 px) could not tell apart (held-out CIN 2 recall 0.38)."""
    lo = max(60 * scale, min(4 * _ATYPIA_SPACING, 0.3 * short))
    return lo, max(150 * scale, lo)


def _band_shape(rng: np.random.Generator, scale: float, short: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Membrane waves, rete pegs and thickness (60-150 px at full scale, see ``_thickness_range``) of one band."""
    lo, hi = _thickness_range(scale, short)
    thick_mean = lo + (float(rng.uniform(60, 150)) - 60) / 90 * (hi - lo)
    waves = np.array([[rng.uniform(15, 50) * scale, 2 * math.pi / rng.uniform(250, 600) / scale, rng.uniform(0, 6.3)],
                      [rng.uniform(2, 8) * scale, 2 * math.pi / rng.uniform(60, 140) / scale, rng.uniform(0, 6.3)]])
    pegs = np.array([rng.uniform(0, 0.3) * thick_mean, 2 * math.pi / rng.uniform(70, 130) / scale, rng.uniform(0, 6.3)])
    thick = np.array([thick_mean, rng.uniform(0, 0.2) * thick_mean, 2 * math.pi / rng.uniform(300, 800),
                      rng.uniform(0, 6.3)])
    return waves, pegs, thick


def _reach(waves: np.ndarray, pegs: np.ndarray) -> float:
    """How far a membrane strays from its mean line into the stroma."""
    return float(np.abs(waves[:, 0]).sum() + pegs[0])


def _random_bands(rng: np.random.Generator, h: int, w: int, grades: tuple[int, ...]) -> list[_Band]:
    """One band (glass, epithelium, stroma) or, half the time when it fits, a strip of stroma lined
    with epithelium on both sides (glass, epithelium, stroma, epithelium, glass), near the centre.

    The second band is the first turned by 180 degrees about the centre; with two bands the first
    takes the first half of ``grades`` and the second the rest (both take a single grade).
    """
    short = min(h, w)
    scale = min(1.0, short / _FULL_GEOMETRY)
    theta = float(rng.uniform(-math.pi, math.pi))
    (waves_a, pegs_a, thick_a), (waves_b, pegs_b, thick_b) = (_band_shape(rng, scale, short) for _ in range(2))
    stroma = _reach(waves_a, pegs_a) + _reach(waves_b, pegs_b) + float(rng.uniform(0.1, 0.4)) * short
    strip = thick_a[0] + stroma + thick_b[0]
    centre = (w / 2, h / 2)
    if rng.random() < 0.5 or strip > 0.9 * short:
        offset = float(rng.uniform(-0.45, -0.1)) * short + thick_a[0]  # glass side towards -v
        return [_segmented(rng, _Band(theta, centre, offset, waves_a, pegs_a, thick_a), grades, h, w)]
    offset = float(rng.uniform(-0.1, 0.1)) * short - strip / 2 + thick_a[0]
    half = math.ceil(len(grades) / 2)
    first, second = (grades, grades) if len(grades) == 1 else (grades[:half], grades[half:])
    return [_segmented(rng, _Band(theta, centre, offset, waves_a, pegs_a, thick_a), first, h, w),
            _segmented(rng, _Band(theta + math.pi, centre, -(offset + stroma), waves_b, pegs_b, thick_b), second, h, w)]


def _visible_u(band: _Band, h: int, w: int) -> tuple[float, float]:
    """Range of u over which the band's mid-line crosses the image."""
    lo, hi = band.u_range(h, w)
    u = np.linspace(lo, hi, 512)
    x, y = band.to_image(u, band.membrane(u) - 0.5 * _thickness(band, u))
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    return (float(u[inside].min()), float(u[inside].max())) if inside.any() else (lo, hi)


def _segmented(rng: np.random.Generator, band: _Band, grades: tuple[int, ...], h: int, w: int) -> _Band:
    """The band with its visible length cut into segments of the given grades."""
    lo, hi = _visible_u(band, h, w)
    cuts = lo + (hi - lo) * np.cumsum(rng.dirichlet([4.0] * len(grades)))[:-1]
    extents = np.array([_segment_extent(rng, g) for g in grades])
    wobble = np.array([0.05, 2 * math.pi / rng.uniform(80, 200), rng.uniform(0, 6.3)])
    return replace(band, cuts=cuts, grades=grades, extents=extents, wobble=wobble, slant=float(rng.uniform(-0.4, 0.4)))


def _segment_extent(rng: np.random.Generator, grade: int) -> float:
    """Atypia extent of a segment: none (normal), about 1/3 or 2/3, or the full thickness. Always
    draws once, so that the rest of the region does not depend on which grades were asked for."""
    jitter = float(rng.uniform(-0.02, 0.04))
    if grade == 1:
        return -1.0
    if grade == 4:
        return 2.0
    return ATYPIA_EXTENT[grade] + jitter


@dataclass(frozen=True)
class _Fields:
    """Per-pixel geometry: band coordinates of the first band, height above the nearest membrane
    ``t`` (negative in the stroma), relative epithelial depth, tissue masks and labels."""

    u: np.ndarray
    v: np.ndarray
    t: np.ndarray
    depth: np.ndarray
    membrane: np.ndarray
    epithelium: np.ndarray
    stroma: np.ndarray
    label: np.ndarray


def _fields(bands: list[_Band], h: int, w: int) -> _Fields:
    x = np.arange(w, dtype=np.float32)[None, :]
    y = np.arange(h, dtype=np.float32)[:, None]
    label = np.zeros((h, w), np.uint8)
    depth = np.zeros((h, w), np.float32)
    membrane = np.zeros((h, w), np.float32)
    epithelium = np.zeros((h, w), bool)
    t_max = np.full((h, w), -np.inf, np.float32)
    for band in bands:
        u, v = band.to_band(x, y)
        membrane_v, thickness = _profiles(band, u)
        t = membrane_v - v
        d = t / thickness
        epi = (t >= 0) & (d < 1) & ~epithelium
        label[epi] = np.asarray(band.grades, np.uint8)[band.segment(u, t)][epi]
        depth[epi] = d[epi]
        epithelium |= epi
        np.maximum(t_max, t, out=t_max)
        membrane += np.exp(-np.abs(t) / 1.5) * (t > -6)
    u, v = bands[0].to_band(x, y)
    return _Fields(u, v, t_max, depth, membrane, epithelium, t_max < 0, label)


def _profiles(band: _Band, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Membrane position and epithelial thickness at every u, looked up at 1/8 px steps (fast)."""
    lo = float(u.min()) - 1.0
    grid = np.arange(lo, float(u.max()) + 1.0, 0.125)
    index = np.rint((u - lo) * 8.0).astype(np.intp)
    return band.membrane(grid).astype(np.float32)[index], _thickness(band, grid).astype(np.float32)[index]


def _thickness(band: _Band, u: np.ndarray) -> np.ndarray:
    return np.maximum(band.membrane(u) - band.surface(u), 1.0)


def _tangent_angle(band: _Band, u: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Direction (degrees, image frame) of the layer at relative depth ``depth``: membrane to surface."""
    slope_m = (band.membrane(u + 1.0) - band.membrane(u - 1.0)) / 2.0
    slope_s = (band.surface(u + 1.0) - band.surface(u - 1.0)) / 2.0
    slope = (1.0 - depth) * slope_m + depth * slope_s
    return np.degrees(band.theta + np.arctan(slope))


# --- nuclei -----------------------------------------------------------------------------------


def _mature_rows(thick_mean: float) -> list[tuple[float, ...]]:
    """Rows of mature nuclei: relative depth, row gap, spacing, radius along, radius across, hematoxylin."""
    rows = []
    depth = 3.0 / thick_mean
    while depth < _LAYERS[-1][0]:
        layer = next(layer for layer in _LAYERS if depth < layer[0])
        rows.append((depth, *layer[1:]))
        depth += layer[1] / thick_mean
    return rows


def _mature_row(rng: np.random.Generator, lo: float, hi: float, thick_mean: float,
                row: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """One jittered row: u, relative depth, radius along, radius across, hematoxylin."""
    depth, gap, spacing, along, across, value = row
    u = np.arange(lo + rng.uniform(0, spacing), hi, spacing)
    n = len(u)
    u = u + rng.uniform(-0.2, 0.2, n) * spacing
    d = np.clip(depth + rng.uniform(-0.25, 0.25, n) * gap / thick_mean, 0.005, 0.99)
    jitter = rng.uniform(0.88, 1.12, (2, n))
    return u, d, along * jitter[0], across * jitter[1], value * rng.uniform(0.92, 1.08, n)


def _mature_nuclei(rng: np.random.Generator, band: _Band, h: int, w: int) -> _Nuclei:
    """Regularly spaced, maturing nuclei in rows parallel to the membrane, outside the atypical zone."""
    lo, hi = band.u_range(h, w)
    thick_mean = float(band.thick[0])
    rows = [_mature_row(rng, lo, hi, thick_mean, row) for row in _mature_rows(thick_mean)]
    u, d, along, across, value = (np.concatenate(column) for column in zip(*rows, strict=True))
    t = d * _thickness(band, u)
    x, y = band.to_image(u, band.membrane(u) - t)
    keep = _inside(x, y, h, w) & (d >= band.atypia(u, t))
    angle = _tangent_angle(band, u, d)
    return _Nuclei(x[keep], y[keep], along[keep], across[keep], angle[keep], value[keep])


def _atypical_nuclei(rng: np.random.Generator, band: _Band, h: int, w: int) -> _Nuclei:
    """Crowded, enlarged, hyperchromatic, pleomorphic nuclei without polarity in the atypical zone."""
    lo, hi = band.u_range(h, w)
    s = _ATYPIA_SPACING
    uu, tt = np.meshgrid(np.arange(lo, hi, s), np.arange(0, band.thick[0] * 1.2 + band.pegs[0] + 20, s))
    u = uu.ravel() + rng.uniform(-0.5, 0.5, uu.size) * s
    t = tt.ravel() + rng.uniform(0, 1, uu.size) * s
    d = t / _thickness(band, u)
    x, y = band.to_image(u, band.membrane(u) - t)
    keep = _inside(x, y, h, w) & (d < 0.985) & (d < band.atypia(u, t))
    n = int(keep.sum())
    a = np.clip(4.1 * rng.lognormal(0.0, 0.25, n), 3.0, 7.5)
    nuclei = _Nuclei(x[keep], y[keep], a, a * rng.uniform(0.6, 0.95, n), rng.uniform(0, 180, n),
                     rng.uniform(1.45, 1.85, n))
    return _Nuclei.concat([nuclei, _lobes(rng, nuclei)])


def _lobes(rng: np.random.Generator, nuclei: _Nuclei) -> _Nuclei:
    """Second, offset ellipses on a third of the atypical nuclei: irregular, notched outlines."""
    pick = rng.random(len(nuclei.x)) < 0.3
    n = int(pick.sum())
    direction = rng.uniform(0, 2 * math.pi, n)
    reach = 0.55 * nuclei.a[pick]
    size = rng.uniform(0.45, 0.7, n)
    return _Nuclei(nuclei.x[pick] + reach * np.cos(direction), nuclei.y[pick] + reach * np.sin(direction),
                   nuclei.a[pick] * size, nuclei.b[pick] * size, rng.uniform(0, 180, n), nuclei.value[pick])


def _stroma_nuclei(rng: np.random.Generator, bands: list[_Band], h: int, w: int) -> _Nuclei:
    """Spindle fibroblasts parallel to the membrane and round lymphocytes, denser under it."""
    n = int(h * w / 700)
    x, y = rng.uniform(0, w, n), rng.uniform(0, h, n)
    heights = []
    for band in bands:
        u, v = band.to_band(x, y)
        heights.append(band.membrane(u) - v)
    t = np.max(heights, axis=0)
    lymph = rng.random(n) < 0.35
    near = rng.random(n) < 0.15 + 0.85 * np.exp(np.minimum(t, 0) / 60.0)
    keep = (t < -4) & (~lymph | near)
    u, _ = bands[0].to_band(x, y)
    angle = _tangent_angle(bands[0], u, np.zeros(n)) + rng.normal(0, 12, n)
    a = np.where(lymph, rng.uniform(2.2, 2.8, n), rng.uniform(4.5, 7.5, n))
    b = np.where(lymph, a * rng.uniform(0.85, 1.0, n), rng.uniform(1.1, 1.6, n))
    value = np.where(lymph, rng.uniform(1.7, 2.0, n), rng.uniform(1.0, 1.3, n))
    return _Nuclei(x[keep], y[keep], a[keep], b[keep], angle[keep], value[keep])


def _inside(x: np.ndarray, y: np.ndarray, h: int, w: int, margin: float = 8.0) -> np.ndarray:
    return (x > -margin) & (x < w + margin) & (y > -margin) & (y < h + margin)


def _draw_nuclei(rng: np.random.Generator, shape: tuple[int, int], nuclei: _Nuclei) -> np.ndarray:
    """Hematoxylin map of filled anti-aliased ellipses with granular chromatin."""
    canvas = np.zeros(shape, np.uint8)
    shift = 16.0  # cv2 sub-pixel precision: 4 fractional bits
    scale = 255.0 / _H_MAX
    columns = (np.rint(nuclei.x * shift), np.rint(nuclei.y * shift), np.rint(nuclei.a * shift),
               np.rint(nuclei.b * shift), nuclei.angle, np.minimum(nuclei.value * scale, 255))
    for x, y, a, b, angle, value in zip(*(c.astype(np.float64).tolist() for c in columns), strict=True):
        cv2.ellipse(canvas, (int(x), int(y)), (int(a), int(b)), angle, 0, 360, int(value), -1, cv2.LINE_AA, 4)
    hema = canvas.astype(np.float32) / scale
    hema *= 1.0 + 0.22 * _smooth_noise(rng, shape, 1.3)
    return cv2.GaussianBlur(hema, (0, 0), 0.55)


# --- tissue -----------------------------------------------------------------------------------


def _band_noise(rng: np.random.Generator, f: _Fields, warp: np.ndarray, along: float, across: float) -> np.ndarray:
    """Noise streaked along the band: smooth over ``along`` px parallel to the membrane, ``across`` px across it."""
    u, v = f.u, f.v + warp
    u0, v0 = float(u.min()), float(v.min())
    rows = math.ceil((float(v.max()) - v0) / across) + 3
    cols = math.ceil((float(u.max()) - u0) / along) + 3
    grid = rng.standard_normal((rows, cols), dtype=np.float32)
    map_x = ((u - u0) / along + 1).astype(np.float32)
    map_y = ((v - v0) / across + 1).astype(np.float32)
    return cv2.remap(grid, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def _stroma_eosin(rng: np.random.Generator, f: _Fields) -> np.ndarray:
    """Wavy collagen fibres and bundles parallel to the membrane, with pale clefts between bundles."""
    shape = f.t.shape
    warp = 10.0 * _smooth_noise(rng, shape, 45.0)
    fibres = _band_noise(rng, f, warp, 30.0, 2.5)
    bundles = _band_noise(rng, f, warp, 70.0, 10.0)
    clefts = np.clip(1.5 * (bundles + 1.4), 0.0, 1.0)
    return 0.7 * (0.85 + 0.12 * fibres) * (0.35 + 0.65 * clefts) * (1 + 0.08 * _smooth_noise(rng, shape, 60.0))


def _epithelium_eosin(f: _Fields) -> np.ndarray:
    """Cytoplasm by depth only (the same for every grade): pale glycogenated middle, pinker surface."""
    d = f.depth
    pale = np.clip((d - 0.3) / 0.2, 0, 1) * np.clip((0.92 - d) / 0.12, 0, 1)
    return 0.46 - 0.13 * pale + 0.12 * np.clip((d - 0.9) / 0.1, 0, 1)


def _cell_borders(shape: tuple[int, int], nuclei: _Nuclei) -> np.ndarray:
    """Faint membranes between neighbouring epithelial cells: edges of the nuclei's Voronoi cells."""
    h, w = shape
    xi, yi = np.rint(nuclei.x).astype(int), np.rint(nuclei.y).astype(int)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    seeds = np.ones(shape, np.uint8)
    seeds[yi[ok], xi[ok]] = 0
    if not ok.any():
        return np.zeros(shape, np.float32)
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    border = np.zeros(shape, np.float32)
    border[:, 1:] += labels[:, 1:] != labels[:, :-1]
    border[1:, :] += labels[1:, :] != labels[:-1, :]
    return cv2.GaussianBlur(np.minimum(border, 1.0), (0, 0), 0.6)


def _vessels(rng: np.random.Generator, f: _Fields, eosin: np.ndarray, hema: np.ndarray) -> None:
    """A few capillaries in the stroma: empty or red-cell-filled lumens with a flat endothelium."""
    h, w = f.t.shape
    for _ in range(int(rng.integers(0, 4))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        a, b = int(rng.integers(6, 22)), int(rng.integers(4, 12))
        if f.t[y, x] > -(a + 20):
            continue
        lumen = np.zeros((h, w), np.uint8)
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(lumen, (x, y), (a, b), angle, 0, 360, 1, -1, cv2.LINE_8)
        inside = lumen.astype(bool)
        full = rng.random() < 0.5  # red cells, else an empty lumen
        eosin[inside] = 1.25 * (1 + 0.2 * rng.standard_normal(int(inside.sum()))) if full else 0.04
        hema[inside] = 0.0
        rim = np.zeros((h, w), np.uint8)
        cv2.ellipse(rim, (x, y), (a + 1, b + 1), angle, 0, 360, 1, 2, cv2.LINE_8)
        hema[rim.astype(bool) & ~inside] += 0.55


def tissue(rng: np.random.Generator, h: int, w: int, grades: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Hematoxylin and eosin concentration maps and the label mask of one region."""
    bands = _random_bands(rng, h, w, grades)
    f = _fields(bands, h, w)
    epithelial = _Nuclei.concat([part for band in bands for part in (_mature_nuclei(rng, band, h, w),
                                                                     _atypical_nuclei(rng, band, h, w))])
    hema = _draw_nuclei(rng, (h, w), _Nuclei.concat([epithelial, _stroma_nuclei(rng, bands, h, w)]))
    borders = _cell_borders((h, w), epithelial) * f.epithelium
    eosin = np.where(f.epithelium, _epithelium_eosin(f) + 0.2 * borders, 0.0)
    eosin = np.where(f.stroma, _stroma_eosin(rng, f), eosin) + 0.22 * f.membrane
    inside = f.epithelium | f.stroma
    texture = (1.0 + 0.07 * _smooth_noise(rng, (h, w), 2.5)) * inside
    eosin = (eosin * texture).astype(np.float32)
    hema = ((hema + 0.07 + 0.04 * borders) * texture).astype(np.float32)
    _vessels(rng, f, eosin, hema)
    return hema, eosin, f.label


def random_grades(rng: np.random.Generator) -> tuple[int, ...]:
    """1-3 segment grades (1..4), neighbours always different."""
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
    grades: list[int] = []
    for _ in range(count):
        choices = [g for g in (1, 2, 3, 4) if not grades or g != grades[-1]]
        grades.append(int(rng.choice(choices)))
    return tuple(grades)

"""The embedded synthetic multi-view dataset: textured 3D "landmarks" rendered from known cameras.

``generate_synthetic(out_dir)`` writes a small collection in which every image's true camera is
known, so that what Structure-from-Motion recovers (docs/definitions.md §4: the 3D points P(i) an image
observes, their depths, the camera centre and focal) can be checked against the truth, and so
that training and evaluation have data without any download::

    out_dir/
      images/<scene>/<view>.jpg     one folder per scene (= one 3D model, one retrieval class)
      ground_truth.json             cameras (K, R, t, centre), scene geometry, parameters, version
      README.md                     what the files are

Each scene is a "building": a chain of 2-4 textured vertical walls at angles to each other, a
free-standing textured panel in front of them (parallax and occlusion) and a textured ground
patch, under a sky gradient. Every surface carries its own procedural texture (multi-scale
noise, windows, rectangles, discs, text-like marks) in a colour palette of its own scene, so
SIFT finds many repeatable keypoints and images of different scenes do not match. Cameras stand
on an arc in front of the building, look at it from varied distances (apparent scale changes up
to ``max_scale_change``, default 2x), heights and small rolls.

Rendering is exact perspective ray casting: for each (supersampled) pixel the ray
``d = R^T K^-1 [x, y, 1]^T`` is intersected with every planar rectangle, the nearest hit wins (a
z-buffer across planes), and the surface texture is sampled bilinearly
(``scipy.ndimage.map_coordinates``). Each view gets a mild exposure / white-balance change and
sensor noise, and is saved as JPEG.

Conventions (the same as COLMAP's, so reconstructions compare directly): world frame with z up;
camera frame x right, y down, z forward; ``x_cam = R X + t``; pixel ``(u, v) = (f x / z + c_x,
f y / z + c_y)`` with the centre of the top-left pixel at ``(0.5, 0.5)`` and the principal point
at the image centre; ``f = focal_factor * max(width, height)`` (1.2, COLMAP's default prior for
images without EXIF, so SfM starts from the true focal).

``synthetic_ground_truth(out_dir)`` turns the true cameras into a
:class:`~retrievalkit.trainingdb.TrainingDatabase`: a fixed, seeded, jittered grid of 3D points
on every surface, each standing for a texture detail of some size; P(i) = the points inside
image i, in front of the camera, not hidden by another surface, on a surface seen at most 60
degrees from its normal, and whose detail appears at least one pixel large (a detectability
model that makes the true co-visibility comparable with what SIFT + SfM recover; see
docs/synthetic-data.md); depth = z in the camera frame. The images are ``<scene>/<view>.jpg``
relative to ``root = out_dir/images``; the cluster of an image is its scene index.

Everything is seeded: the same parameters give byte-identical images (with the same Pillow /
libjpeg build) and identical arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .atomic import write_bytes_atomic, write_text_atomic
from .errors import RkitError
from .outputs import check_replaceable, output_marker, write_output_marker
from .trainingdb import TrainingDatabase

#: Bumped whenever the images or ground truth a given set of parameters produces change.
SYNTH_VERSION = 1
GROUND_TRUTH_FILE = "ground_truth.json"
FORMAT_NAME = "retrievalkit-synthetic"


# --------------------------------------------------------------------------------------------
# Parameters and presets
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SynthParams:
    """Everything that determines the generated images (recorded in ground_truth.json)."""

    num_scenes: int = 5
    views_per_scene: int = 12
    image_size: tuple[int, int] = (480, 360)  # (width, height)
    seed: int = 0
    azimuth_span_deg: float = 80.0  # the arc of camera directions around the building front
    max_scale_change: float = 2.0  # farthest / nearest camera distance
    max_roll_deg: float = 6.0
    focal_factor: float = 1.2  # f = focal_factor * max(width, height)
    texels_per_unit: float = 0.0  # texture resolution; 0 = width / 10 (48 at 480 px)
    supersample: int = 2  # rays per pixel along each axis (anti-aliasing)
    jpeg_quality: int = 92
    noise_sigma: float = 1.5  # sensor noise, in 8-bit grey levels

    def __post_init__(self) -> None:
        problems = []
        if self.num_scenes < 1:
            problems.append(f"num_scenes must be >= 1 (got {self.num_scenes})")
        if self.views_per_scene < 2:
            problems.append(f"views_per_scene must be >= 2 (got {self.views_per_scene})")
        width, height = self.image_size
        if width < 32 or height < 32:
            problems.append(f"image_size must be at least 32x32 pixels (got {width}x{height})")
        if self.max_scale_change < 1.0:
            problems.append(f"max_scale_change must be >= 1 (got {self.max_scale_change})")
        if self.supersample < 1:
            problems.append(f"supersample must be >= 1 (got {self.supersample})")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality must be in 1..100 (got {self.jpeg_quality})")
        if problems:
            raise RkitError("Invalid synthetic dataset parameters: " + "; ".join(problems)
                            + ". Fix the value(s) or use a preset (default, tiny).")

    @property
    def density(self) -> float:
        """Texture texels per world unit."""
        return self.texels_per_unit or self.image_size[0] / 10.0

    @property
    def focal(self) -> float:
        return self.focal_factor * max(self.image_size)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["image_size"] = list(self.image_size)
        return out


#: Named parameter sets. "tiny" is the test fixture: small enough to render and reconstruct
#: (pycolmap) in seconds, still reconstructed reliably (see docs/synthetic-data.md).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"num_scenes": 5, "views_per_scene": 12, "image_size": (480, 360)},
    "tiny": {"num_scenes": 3, "views_per_scene": 8, "image_size": (320, 240),
             "azimuth_span_deg": 60.0},
}


def resolve_params(preset: str = "default", **overrides: Any) -> SynthParams:
    """The parameters of ``preset`` with ``overrides`` (those not None) applied."""
    if preset not in PRESETS:
        raise RkitError(f"Unknown synthetic preset {preset!r}. Choose one of: {', '.join(PRESETS)}.")
    values = dict(PRESETS[preset])
    known = {f.name for f in dataclasses.fields(SynthParams)}
    for key, value in overrides.items():
        if key not in known:
            raise RkitError(f"Unknown synthetic dataset parameter {key!r}. "
                            f"Known parameters: {', '.join(sorted(known))}.")
        if value is not None:
            values[key] = value
    if "image_size" in values:
        values["image_size"] = tuple(int(v) for v in values["image_size"])
    return SynthParams(**values)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Plane:
    """A textured rectangle: points ``origin + a u + b v`` with ``0 <= a <= width``, ``0 <= b <= height``.

    The front face is on the side of ``normal = u x v``; the back face is drawn untextured.
    """

    name: str
    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    width: float
    height: float
    kind: str  # wall | panel | ground: which texture style

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.u, self.v)
        return n / np.linalg.norm(n)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "origin": self.origin.tolist(),
                "u": self.u.tolist(), "v": self.v.tolist(), "width": self.width,
                "height": self.height, "normal": self.normal.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plane":
        return cls(data["name"], np.asarray(data["origin"], float), np.asarray(data["u"], float),
                   np.asarray(data["v"], float), float(data["width"]), float(data["height"]),
                   data["kind"])


@dataclasses.dataclass
class Camera:
    """A pinhole camera: ``x_cam = R X + t``, pixels ``K x_cam / z`` (COLMAP conventions)."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    @property
    def centre(self) -> np.ndarray:
        return -self.R.T @ self.t

    @property
    def focal(self) -> float:
        return float(self.K[0, 0])

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates ``(N, 2)`` and depths ``(N,)`` (z in the camera frame) of world points."""
        cam = np.asarray(points, float) @ self.R.T + self.t
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = cam[:, :2] / z[:, None] * np.diag(self.K)[:2] + self.K[:2, 2]
        return uv, z


def look_at(centre: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """World-to-camera rotation of a camera at ``centre`` looking at ``target`` (z up), rolled."""
    forward = target - centre
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    c, s = math.cos(roll), math.sin(roll)
    roll_matrix = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return roll_matrix @ R


def _scene_planes(rng: np.random.Generator) -> list[Plane]:
    """A building: 2-4 walls chained at angles, a panel in front, a ground patch."""
    num_walls = int(rng.integers(2, 5))
    walls: list[Plane] = []
    point = np.zeros(3)
    heading = float(rng.uniform(-0.6, -0.2)) * (1 if rng.random() < 0.5 else -1)
    for k in range(num_walls):
        if k:
            # turn by 25..55 degrees, alternating in sign more often than not (a facade that
            # folds in and out) and keeping every wall within 60 degrees of facing the front
            turn = math.radians(rng.uniform(25, 55)) * (-np.sign(heading) if abs(heading) > 0.3
                                                       else (1 if rng.random() < 0.5 else -1))
            heading = float(np.clip(heading + turn, -math.radians(60), math.radians(60)))
        width = float(rng.uniform(3.5, 6.0))
        height = float(rng.uniform(3.5, 6.5))
        direction = np.array([math.cos(heading), math.sin(heading), 0.0])
        walls.append(Plane(f"wall{k}", point.copy(), direction, np.array([0.0, 0.0, 1.0]),
                           width, height, "wall"))
        point = point + width * direction
    # centre the facade on the origin
    shift = np.array([point[0] / 2, np.mean([w.origin[1] for w in walls] + [point[1]]), 0.0])
    for wall in walls:
        wall.origin = wall.origin - shift
    half_width = abs(point[0]) / 2
    front_y = min(min(w.origin[1], (w.origin + w.width * w.u)[1]) for w in walls)
    # a free-standing panel ("sign") in front of the facade, roughly facing the cameras
    panel_heading = float(rng.uniform(-0.5, 0.5))
    panel_u = np.array([math.cos(panel_heading), math.sin(panel_heading), 0.0])
    panel_width, panel_height = float(rng.uniform(1.5, 2.5)), float(rng.uniform(1.2, 2.0))
    panel_origin = np.array([rng.uniform(-0.6, 0.6) * half_width - panel_width / 2 * panel_u[0],
                             front_y - rng.uniform(2.5, 4.0), rng.uniform(0.0, 0.6)])
    panel = Plane("panel", panel_origin, panel_u, np.array([0.0, 0.0, 1.0]), panel_width,
                  panel_height, "panel")
    # the ground patch in front of and beside the building
    x0, x1 = -half_width - 4.0, half_width + 4.0
    y0, y1 = front_y - 9.0, front_y + 8.0
    ground = Plane("ground", np.array([x0, y0, 0.0]), np.array([1.0, 0.0, 0.0]),
                   np.array([0.0, 1.0, 0.0]), x1 - x0, y1 - y0, "ground")
    return walls + [panel, ground]


def _scene_cameras(rng: np.random.Generator, planes: list[Plane], params: SynthParams) -> list[Camera]:
    """Cameras on an arc in front of the building, ordered by azimuth (neighbours overlap)."""
    width, height = params.image_size
    focal = params.focal
    K = np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    walls = [p for p in planes if p.kind == "wall"]
    corners = np.array([w.origin for w in walls] + [w.origin + w.width * w.u for w in walls])
    half_extent = 0.5 * (corners[:, 0].max() - corners[:, 0].min())
    mean_height = float(np.mean([w.height for w in walls]))
    half_fov = math.atan(width / 2 / focal)
    # farthest camera: the whole facade fills the frame; nearest: max_scale_change closer
    far = (half_extent + 1.0) / math.tan(half_fov)
    near = far / params.max_scale_change
    n = params.views_per_scene
    span = math.radians(params.azimuth_span_deg)
    azimuths = np.linspace(-span / 2, span / 2, n) + rng.uniform(-0.3, 0.3, n) * span / max(n - 1, 1)
    # log-spaced distances, shuffled over the views; both extremes are present, so the scale
    # range is exactly the one asked for
    fractions = rng.permutation(np.linspace(0.0, 1.0, n))
    distances = near * params.max_scale_change ** fractions
    cameras = []
    for azimuth, distance in zip(azimuths, distances):
        # nearer cameras see part of the facade: let them aim left or right of its centre
        aim = rng.uniform(-0.3, 0.3) * half_extent * (far / distance - 1.0)
        target = np.array([aim, 0.0, mean_height * rng.uniform(0.35, 0.6)])
        centre = np.array([target[0] + distance * math.sin(azimuth),
                           target[1] - distance * math.cos(azimuth),
                           rng.uniform(1.4, 1.4 + 0.5 * mean_height)])
        roll = math.radians(rng.uniform(-params.max_roll_deg, params.max_roll_deg))
        R = look_at(centre, target, roll)
        cameras.append(Camera(K.copy(), R, -R @ centre, width, height))
    return cameras


# --------------------------------------------------------------------------------------------
# Procedural textures
# --------------------------------------------------------------------------------------------
def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _palette(rng: np.random.Generator, hue: float) -> np.ndarray:
    """Six colours around a scene hue, of varied saturation and value."""
    colours = [_hsv_to_rgb((hue + rng.uniform(-0.07, 0.07)) % 1.0, rng.uniform(0.25, 0.85),
                           rng.uniform(0.3, 0.95)) for _ in range(5)]
    colours.append(_hsv_to_rgb((hue + 0.5) % 1.0, rng.uniform(0.4, 0.8), rng.uniform(0.5, 0.9)))
    return np.array(colours)


def _noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, ...]) -> np.ndarray:
    """Smooth value noise summed over several cell sizes (texels), roughly unit variance."""
    total = np.zeros(shape, np.float32)
    for cell in cells:
        coarse = rng.standard_normal((shape[0] // cell + 3, shape[1] // cell + 3)).astype(np.float32)
        fine = ndimage.zoom(coarse, cell, order=1, prefilter=False)
        total += fine[: shape[0], : shape[1]]
    return total / math.sqrt(len(cells))


def _fill_rect(tex: np.ndarray, y0: float, x0: float, y1: float, x1: float, colour: np.ndarray) -> None:
    h, w = tex.shape[:2]
    a, b = max(int(y0), 0), min(int(y1), h)
    c, d = max(int(x0), 0), min(int(x1), w)
    if a < b and c < d:
        tex[a:b, c:d] = colour


def _fill_disc(tex: np.ndarray, cy: float, cx: float, radius: float, colour: np.ndarray,
               inner: float = 0.0) -> None:
    h, w = tex.shape[:2]
    a, b = max(int(cy - radius), 0), min(int(cy + radius) + 1, h)
    c, d = max(int(cx - radius), 0), min(int(cx + radius) + 1, w)
    if a >= b or c >= d:
        return
    yy, xx = np.mgrid[a:b, c:d]
    r2 = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2
    mask = (r2 <= radius * radius) & (r2 >= inner * inner)
    tex[a:b, c:d][mask] = colour


def _pick(rng: np.random.Generator, palette: np.ndarray) -> np.ndarray:
    """A palette colour with jittered brightness, or now and then a near-black/near-white accent."""
    r = rng.random()
    if r < 0.08:
        return np.full(3, rng.uniform(0.02, 0.12))
    if r < 0.16:
        return np.full(3, rng.uniform(0.88, 0.98))
    return np.clip(palette[rng.integers(len(palette))] * rng.uniform(0.6, 1.25), 0, 1)


def _texture(rng: np.random.Generator, plane: Plane, palette: np.ndarray, density: float) -> np.ndarray:
    """A (rows, cols, 3) float32 texture for ``plane``: rows along v, columns along u."""
    rows = max(int(math.ceil(plane.height * density)), 4)
    cols = max(int(math.ceil(plane.width * density)), 4)
    unit = density  # texels per world unit
    mix = 1.0 / (1.0 + np.exp(-1.5 * _noise(rng, (rows, cols), (max(int(2 * unit), 2), max(int(unit / 2), 2)))))
    light = 1.0 + 0.18 * _noise(rng, (rows, cols), (max(int(unit), 2), max(int(unit / 8), 2), 2))
    first, second = palette[rng.integers(len(palette))], palette[rng.integers(len(palette))]
    tex = (first[None, None] * (1 - mix[..., None]) + second[None, None] * mix[..., None])
    tex = (tex * light[..., None]).astype(np.float32)
    area_units = plane.width * plane.height

    if plane.kind == "wall":  # a jittered grid of windows, each one different
        spacing_x, spacing_y = rng.uniform(1.1, 1.6), rng.uniform(1.2, 1.7)
        win_w, win_h = spacing_x * rng.uniform(0.45, 0.65), spacing_y * rng.uniform(0.45, 0.65)
        frame = _pick(rng, palette)
        for gy in np.arange(0.6, plane.height - win_h - 0.2, spacing_y):
            for gx in np.arange(0.4, plane.width - win_w - 0.2, spacing_x):
                if rng.random() < 0.2:
                    continue
                x0 = (gx + rng.uniform(-0.08, 0.08)) * unit
                y0 = (gy + rng.uniform(-0.08, 0.08)) * unit
                ww = win_w * rng.uniform(0.8, 1.2) * unit
                hh = win_h * rng.uniform(0.8, 1.2) * unit
                border = max(2.0, 0.08 * unit)
                _fill_rect(tex, y0 - border, x0 - border, y0 + hh + border, x0 + ww + border, frame)
                glass = np.clip(np.array([0.1, 0.14, 0.2]) * rng.uniform(0.5, 2.5) + 0.15 * _pick(rng, palette), 0, 1)
                _fill_rect(tex, y0, x0, y0 + hh, x0 + ww, glass)
                if rng.random() < 0.5:  # mullions
                    _fill_rect(tex, y0 + hh * rng.uniform(0.3, 0.7) - 1, x0, y0 + hh * 0.5 + 1, x0 + ww, frame)
                if rng.random() < 0.4:  # a lit curtain or an object behind the glass
                    _fill_disc(tex, y0 + hh * rng.uniform(0.2, 0.8), x0 + ww * rng.uniform(0.2, 0.8),
                               min(ww, hh) * rng.uniform(0.15, 0.35), _pick(rng, palette))
    if plane.kind == "panel":  # poster: lines of "text"
        for _ in range(int(rng.integers(4, 9))):
            y = rng.uniform(0.05, 0.9) * rows
            x = rng.uniform(0.02, 0.3) * cols
            glyph_h = rng.uniform(0.04, 0.1) * unit * 2
            colour = _pick(rng, palette)
            while x < cols * 0.95:
                gw = glyph_h * rng.uniform(0.4, 1.0)
                if rng.random() < 0.85:
                    _fill_rect(tex, y, x, y + glyph_h * rng.uniform(0.6, 1.0), x + gw, colour)
                x += gw + glyph_h * rng.uniform(0.2, 0.6) + (glyph_h * 1.5 if rng.random() < 0.15 else 0.0)

    # blobs and corners at many scales: rectangles, outlined rectangles, discs, rings
    count = int(area_units * rng.uniform(8, 12) * (0.6 if plane.kind == "wall" else 1.0))
    for _ in range(count):
        size = unit * math.exp(rng.uniform(math.log(0.06), math.log(0.55)))
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        colour = _pick(rng, palette)
        shape = rng.random()
        if shape < 0.35:
            aspect = math.exp(rng.uniform(-0.8, 0.8))
            _fill_rect(tex, cy - size * aspect / 2, cx - size / aspect / 2, cy + size * aspect / 2,
                       cx + size / aspect / 2, colour)
        elif shape < 0.5:
            _fill_rect(tex, cy - size / 2, cx - size / 2, cy + size / 2, cx + size / 2, colour)
            inset = max(1.5, size * 0.2)
            _fill_rect(tex, cy - size / 2 + inset, cx - size / 2 + inset, cy + size / 2 - inset,
                       cx + size / 2 - inset, _pick(rng, palette))
        elif shape < 0.85:
            _fill_disc(tex, cy, cx, size / 2, colour)
        else:
            _fill_disc(tex, cy, cx, size / 2, colour, inner=size / 2 * rng.uniform(0.4, 0.7))
    # fine grain (plaster, asphalt)
    tex *= (1.0 + 0.05 * rng.standard_normal((rows, cols, 1))).astype(np.float32)
    return np.clip(tex, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Scenes and rendering
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Scene:
    """One synthetic landmark: its surfaces, their textures, lighting and cameras."""

    name: str
    index: int
    planes: list[Plane]
    textures: list[np.ndarray]
    shading: list[float]  # brightness of each plane's front face under the scene's sun
    sky: tuple[np.ndarray, np.ndarray]  # horizon colour, zenith colour
    far_ground: np.ndarray
    cameras: list[Camera]
    palette: np.ndarray
    sun: np.ndarray


def scene_name(index: int) -> str:
    return f"scene{index:02d}"


def view_name(index: int) -> str:
    return f"view{index:02d}.jpg"


def build_scene(params: SynthParams, index: int) -> Scene:
    """Geometry, textures and cameras of scene ``index`` (seeded by ``(params.seed, index)``)."""
    rng = np.random.default_rng([params.seed, index, 0])
    hue = (index / max(params.num_scenes, 1) + rng.uniform(-0.04, 0.04) + params.seed * 0.377) % 1.0
    palette = _palette(rng, hue)
    planes = _scene_planes(rng)
    cameras = _scene_cameras(rng, planes, params)
    elevation, azimuth = rng.uniform(0.5, 1.1), rng.uniform(-2.5, -0.6)
    sun = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                    math.sin(elevation)])
    shading = [0.55 + 0.45 * max(0.0, float(p.normal @ sun)) for p in planes]
    textures = [_texture(np.random.default_rng([params.seed, index, 1, k]), p, palette, params.density)
                for k, p in enumerate(planes)]
    horizon = np.clip(np.array([0.80, 0.85, 0.92]) + rng.uniform(-0.06, 0.06, 3), 0, 1)
    zenith = np.clip(np.array([0.30, 0.50, 0.85]) + rng.uniform(-0.1, 0.1, 3), 0, 1)
    far_ground = np.clip(np.array([0.42, 0.42, 0.40]) + rng.uniform(-0.05, 0.05, 3), 0, 1)
    return Scene(scene_name(index), index, planes, textures, shading, (horizon, zenith), far_ground,
                 cameras, palette, sun)


def render_view(scene: Scene, view: int, params: SynthParams) -> np.ndarray:
    """Render view ``view`` of ``scene`` as an (H, W, 3) uint8 image."""
    camera = scene.cameras[view]
    width, height = params.image_size
    ss = params.supersample
    xs = (np.arange(width * ss, dtype=np.float64) + 0.5) / ss
    ys = (np.arange(height * ss, dtype=np.float64) + 0.5) / ss
    to_world = camera.R.T @ np.linalg.inv(camera.K)  # ray d = to_world @ [x, y, 1], camera z = 1

    def along(vector: np.ndarray) -> np.ndarray:
        """vector . d for every pixel (linear in x, y)."""
        coef = vector @ to_world
        return coef[0] * xs[None, :] + coef[1] * ys[:, None] + coef[2]

    centre = camera.centre
    shape = (height * ss, width * ss)
    depth = np.full(shape, np.inf)
    label = np.full(shape, -1, np.int16)
    coord_a = np.zeros(shape)
    coord_b = np.zeros(shape)
    front = np.zeros(shape, bool)
    for k, plane in enumerate(scene.planes):
        normal = plane.normal
        d_n = along(normal)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((plane.origin - centre) @ normal) / d_n
        a = (centre - plane.origin) @ plane.u + t * along(plane.u)
        b = (centre - plane.origin) @ plane.v + t * along(plane.v)
        hit = (t > 1e-6) & (t < depth) & (a >= 0) & (a <= plane.width) & (b >= 0) & (b <= plane.height)
        depth[hit] = t[hit]
        label[hit] = k
        coord_a[hit] = a[hit]
        coord_b[hit] = b[hit]
        front[hit] = d_n[hit] < 0

    image = np.empty(shape + (3,), np.float32)
    # background: sky above the horizon, plain distant ground below it
    d_z = along(np.array([0.0, 0.0, 1.0]))
    norm = np.sqrt(along(np.array([1.0, 0.0, 0.0])) ** 2 + along(np.array([0.0, 1.0, 0.0])) ** 2 + d_z ** 2)
    elevation = np.clip(d_z / norm, -1, 1)
    horizon, zenith = scene.sky
    blend = np.clip(elevation * 2.5, 0, 1)[..., None]
    image[:] = horizon * (1 - blend) + zenith * blend
    below = elevation < 0
    image[below] = scene.far_ground * (0.85 + 0.15 * np.clip(-elevation[below] * 8, 0, 1))[:, None]
    for k, (plane, texture) in enumerate(zip(scene.planes, scene.textures)):
        mask = (label == k) & front
        if mask.any():
            rows = coord_b[mask] * params.density - 0.5
            cols = coord_a[mask] * params.density - 0.5
            samples = np.stack([ndimage.map_coordinates(texture[..., c], [rows, cols], order=1,
                                                        mode="nearest") for c in range(3)], axis=-1)
            image[mask] = samples * scene.shading[k]
        back = (label == k) & ~front
        image[back] = 0.22
    # back to the output resolution: the mean of each ss x ss block
    image = image.reshape(height, ss, width, ss, 3).mean(axis=(1, 3))
    # per-view exposure, white balance and sensor noise
    rng = np.random.default_rng([params.seed, scene.index, 2, view])
    gain = rng.uniform(0.85, 1.15) * (1.0 + rng.uniform(-0.04, 0.04, 3))
    image = image * gain + rng.uniform(-0.03, 0.03)
    image = image * 255.0 + rng.normal(0.0, params.noise_sigma, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------------
def _ground_truth_json(params: SynthParams, scenes: list[Scene]) -> dict[str, Any]:
    images = []
    for scene in scenes:
        for v, camera in enumerate(scene.cameras):
            images.append({
                "path": f"{scene.name}/{view_name(v)}", "scene": scene.index, "view": v,
                "width": camera.width, "height": camera.height, "K": camera.K.tolist(),
                "R": camera.R.tolist(), "t": camera.t.tolist(), "centre": camera.centre.tolist(),
            })
    return {
        "format": FORMAT_NAME,
        "version": SYNTH_VERSION,
        "parameters": params.to_json(),
        "conventions": ("world z up; camera x right, y down, z forward; x_cam = R X + t; "
                        "pixel = K x_cam / z with the top-left pixel's centre at (0.5, 0.5) "
                        "(COLMAP); units arbitrary (walls are 3.5-6.5 units high)"),
        "scenes": [{"name": s.name, "index": s.index, "palette": s.palette.tolist(),
                    "sun": s.sun.tolist(), "texels_per_unit": params.density,
                    "planes": [p.to_json() for p in s.planes]} for s in scenes],
        "images": images,
    }


_README = """# Synthetic multi-view dataset (retrievalkit)

Generated by `rkit data synth` / `retrievalkit.synth.generate_synthetic` (format version {version}).
Parameters: {params}

- `images/<scene>/<view>.jpg`: {num_scenes} scenes x {views} views, {w}x{h} px. Each scene is one
  procedurally textured "building" (one 3D model, one retrieval class).
- `ground_truth.json`: the true camera of every image (K, R, t, centre; COLMAP conventions:
  x_cam = R X + t, pixel = K x_cam / z) and every scene's planar surfaces.
- `retrievalkit.synth.synthetic_ground_truth(this_folder)` gives the co-visibility (3D points
  seen by each image, their depths) computed from the true cameras as a TrainingDatabase.

Everything here is synthetic and generated from a seed; delete the folder and re-run to rebuild.
"""


def _params_digest(params: SynthParams) -> str:
    text = json.dumps({"version": SYNTH_VERSION, **params.to_json()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def load_ground_truth(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``ground_truth.json`` of a generated set (raises RkitError if there is none)."""
    path = Path(out_dir) / GROUND_TRUTH_FILE
    if not path.is_file():
        raise RkitError(f"{out_dir} is not a synthetic dataset (no {GROUND_TRUTH_FILE}). "
                        f"Generate one with `rkit data synth --out {out_dir}`.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RkitError(f"Cannot read {path}: {exc}. Delete the folder and generate it again "
                        f"with `rkit data synth --out {out_dir}`.") from exc
    if data.get("format") != FORMAT_NAME:
        raise RkitError(f"{path} is not a retrievalkit synthetic ground-truth file. "
                        "Point to a folder made by `rkit data synth`.")
    return data


def is_complete_set(out_dir: Path, params: SynthParams) -> bool:
    """Whether ``out_dir`` holds a complete set made with ``params`` and this format version."""
    try:
        data = load_ground_truth(out_dir)
    except RkitError:
        return False
    same = data.get("version") == SYNTH_VERSION and data.get("parameters") == params.to_json()
    return same and all((out_dir / "images" / image["path"]).is_file() for image in data["images"])


def _is_stale_version(out_dir: Path, params: SynthParams) -> bool:
    """A set made with the same parameters by another format version: safe to regenerate."""
    try:
        data = load_ground_truth(out_dir)
    except RkitError:
        return False
    return data.get("version") != SYNTH_VERSION and data.get("parameters") == params.to_json()


#: the command recorded in the output marker of a synthetic set (retrievalkit.outputs)
OUTPUT_COMMAND = "data synth"


def _check_target(out_dir: Path, params: SynthParams, overwrite: bool) -> bool:
    """Whether an existing ``out_dir`` is to be replaced; raise if it must not be touched.

    Only a previous synthetic set (it carries the ``data synth`` output marker) is replaced,
    and only with ``overwrite`` or when it is the same set from an older format version;
    never the current folder or one of its parents (retrievalkit.outputs.check_replaceable).
    """
    stale = _is_stale_version(out_dir, params)
    if stale and output_marker(out_dir) is None:  # a set written before markers existed
        write_output_marker(out_dir, OUTPUT_COMMAND)
    if out_dir.exists() and not overwrite and not stale:
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            what = "a synthetic set with other parameters" if (out_dir / GROUND_TRUTH_FILE).exists() else "other files"
            raise RkitError(f"{out_dir} already exists and holds {what}. Choose another output "
                            "folder, delete it, or pass overwrite=True (--overwrite).")
    return check_replaceable(out_dir, OUTPUT_COMMAND, overwrite=overwrite or stale)


def generate_synthetic(
    out_dir: str | os.PathLike[str],
    *,
    num_scenes: int | None = None,
    views_per_scene: int | None = None,
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
    preset: str = "default",
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> Path:
    """Generate the synthetic multi-view collection in ``out_dir`` and return ``out_dir``.

    ``preset`` ("default": 5 scenes x 12 views at 480x360; "tiny": 3 x 8 at 320x240) gives the
    parameters; ``num_scenes``, ``views_per_scene``, ``image_size`` ((width, height)) and any
    other :class:`SynthParams` field passed in ``options`` override it.

    If ``out_dir`` already holds a complete set made with the same parameters and format
    version, nothing is done. Otherwise the set is rendered into a hidden sibling folder
    (``.<name>.partial-<digest>``; each image written atomically, so an interrupted run resumes
    where it stopped) which is renamed to ``out_dir`` when complete (an existing empty
    ``out_dir`` is filled in place). An existing ``out_dir`` with other content is an error
    unless ``overwrite`` and it is an earlier set (it carries the ``data synth`` output marker,
    :mod:`retrievalkit.outputs`); the current folder and its parents are never replaced. A set
    made with the same parameters by an older format version is regenerated.
    """
    params = resolve_params(preset, num_scenes=num_scenes, views_per_scene=views_per_scene,
                            image_size=image_size, seed=seed, **options)
    given, out_dir = Path(out_dir), Path(out_dir).resolve()  # `--out .` has no name to stage beside
    if is_complete_set(out_dir, params):
        return given
    replace = _check_target(out_dir, params, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{_params_digest(params)}"
    (staging / "images").mkdir(parents=True, exist_ok=True)

    scenes = _render_views(staging, params, progress)
    write_text_atomic(staging / "README.md", _README.format(
        version=SYNTH_VERSION, params=json.dumps(params.to_json()), num_scenes=params.num_scenes,
        views=params.views_per_scene, w=params.image_size[0], h=params.image_size[1]))
    # the ground truth is written last: its presence marks a complete set
    write_text_atomic(staging / GROUND_TRUTH_FILE, json.dumps(_ground_truth_json(params, scenes), indent=1))
    write_output_marker(staging, OUTPUT_COMMAND)
    _publish(staging, out_dir, replace)
    return given


def _render_views(staging: Path, params: SynthParams, progress: bool) -> list[Scene]:
    """Render every view not yet in ``staging/images`` (each written atomically); the scenes."""
    from tqdm import tqdm

    scenes = []
    with tqdm(total=params.num_scenes * params.views_per_scene, desc="rendering synthetic views",
              unit="img", disable=not progress) as bar:
        for s in range(params.num_scenes):
            scene = build_scene(params, s)
            scenes.append(scene)
            folder = staging / "images" / scene.name
            folder.mkdir(parents=True, exist_ok=True)
            for v in range(params.views_per_scene):
                target = folder / view_name(v)
                if not target.exists():  # written atomically: an existing file is complete
                    write_bytes_atomic(target, encode_jpeg(render_view(scene, v, params), params.jpeg_quality))
                bar.update(1)
    return scenes


def _publish(staging: Path, out_dir: Path, replace: bool) -> None:
    """Move the finished set from ``staging`` to ``out_dir`` (replacing it if ``replace``).

    An existing empty ``out_dir`` (perhaps the current folder) is filled in place rather than
    removed, ground truth last, so its presence still marks a complete set.
    """
    if replace:
        shutil.rmtree(out_dir)
    if not out_dir.is_dir():
        os.replace(staging, out_dir)
        return
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == GROUND_TRUTH_FILE):
        os.replace(entry, out_dir / entry.name)
    staging.rmdir()


def default_synthetic_dir(preset: str = "default", seed: int = 0) -> Path:
    """Where the default synthetic set lives when a command needs data and the user gave none.

    ``$RKIT_DATA_DIR/synthetic-<preset>-seed<seed>`` (default: the cache folder,
    :func:`retrievalkit.cache.cache_dir`).
    """
    from .cache import cache_dir

    base = Path(os.environ.get("RKIT_DATA_DIR") or cache_dir())
    return base / f"synthetic-{preset}-seed{seed}"


# --------------------------------------------------------------------------------------------
# Ground-truth co-visibility
# --------------------------------------------------------------------------------------------
#: Defaults of :func:`synthetic_ground_truth`'s detectability model (see docs/synthetic-data.md).
MIN_VIEW_COSINE = 0.5  # 60 degrees from the surface normal: SIFT rarely matches beyond
MIN_PIXELS = 1.0

def surface_points(planes: list[Plane], spacing: float, rng: np.random.Generator,
                   min_size: float = 0.01, size_exponent: float = 2.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A jittered grid of points on every plane (one per ``spacing`` x ``spacing`` cell).

    Each point also gets the size of the texture detail it stands for, drawn so that the
    number of details larger than s falls as s^-size_exponent above ``min_size`` (a Pareto law;
    exponent 2 is a scale-invariant texture: an image then resolves about the same number of
    details per pixel whatever its distance, like a feature detector).
    Returns the points ``(N, 3)``, the index of the plane each lies on ``(N,)``, their sizes ``(N,)``.
    """
    points, owners = [], []
    for k, plane in enumerate(planes):
        na = max(int(round(plane.width / spacing)), 1)
        nb = max(int(round(plane.height / spacing)), 1)
        a = (np.arange(na)[None, :] + rng.uniform(0.1, 0.9, (nb, na))) * plane.width / na
        b = (np.arange(nb)[:, None] + rng.uniform(0.1, 0.9, (nb, na))) * plane.height / nb
        points.append(plane.origin + a.reshape(-1, 1) * plane.u + b.reshape(-1, 1) * plane.v)
        owners.append(np.full(na * nb, k))
    owner = np.concatenate(owners)
    sizes = min_size * (1.0 - rng.random(len(owner))) ** (-1.0 / size_exponent)
    return np.concatenate(points), owner, sizes


def visible_points(points: np.ndarray, owners: np.ndarray, planes: list[Plane], camera: Camera,
                   min_view_cosine: float = 0.1, sizes: np.ndarray | None = None,
                   min_pixels: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``points`` visible in ``camera`` and their depths (camera-frame z).

    Visible: projects inside the image, in front of the camera, on a surface facing it with
    cos(viewing angle) >= ``min_view_cosine``, no other plane crosses the segment from the
    camera centre to the point, and (if ``sizes`` are given) the point's detail appears at least
    ``min_pixels`` large (``focal * size / depth``): a far view does not resolve fine details.
    """
    uv, z = camera.project(points)
    centre = camera.centre
    to_camera = centre - points
    distance = np.linalg.norm(to_camera, axis=1)
    normals = np.stack([p.normal for p in planes])[owners]
    cosine = np.einsum("ij,ij->i", normals, to_camera) / distance
    ok = ((z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0)
          & (uv[:, 1] < camera.height) & (cosine >= min_view_cosine))
    if sizes is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ok &= camera.focal * sizes / z >= min_pixels
    candidates = np.flatnonzero(ok)
    ray = points[candidates] - centre  # the point at s = 1
    for k, plane in enumerate(planes):
        normal = plane.normal
        with np.errstate(divide="ignore", invalid="ignore"):
            s = ((plane.origin - centre) @ normal) / (ray @ normal)
        hit_point = centre + s[:, None] * ray
        a = (hit_point - plane.origin) @ plane.u
        b = (hit_point - plane.origin) @ plane.v
        blocked = ((owners[candidates] != k) & (s > 1e-6) & (s < 1 - 1e-4) & (a >= 0)
                   & (a <= plane.width) & (b >= 0) & (b <= plane.height))
        candidates, ray = candidates[~blocked], ray[~blocked]
    return candidates, z[candidates]


@dataclasses.dataclass
class SyntheticPoints:
    """The true 3D points of a generated set; the point with id k is row k of every array."""

    xyz: np.ndarray  # (N, 3) world coordinates
    plane: np.ndarray  # (N,) index into plane_names
    size: np.ndarray  # (N,) size of the texture detail it stands for, world units
    scene: np.ndarray  # (N,) scene index
    plane_names: list[str]  # "<scene>/<plane>"


def _scene_surface_points(data: dict[str, Any], point_spacing: float):
    """Per scene: its planes, points, owning plane and sizes, and the id of its first point."""
    seed = int(data["parameters"]["seed"])
    per_scene, offset = {}, 0
    for scene in data["scenes"]:
        planes = [Plane.from_json(p) for p in scene["planes"]]
        points, owners, sizes = surface_points(planes, point_spacing,
                                               np.random.default_rng([seed, int(scene["index"]), 3]))
        per_scene[int(scene["index"])] = (scene["name"], planes, points, owners, sizes, offset)
        offset += len(points)
    return per_scene


def synthetic_points(out_dir: str | os.PathLike[str], *, point_spacing: float = 0.1) -> SyntheticPoints:
    """The true 3D points :func:`synthetic_ground_truth` uses (same ``point_spacing``, same ids)."""
    per_scene = _scene_surface_points(load_ground_truth(out_dir), point_spacing)
    xyz, plane, size, scene_of, names = [], [], [], [], []
    for index, (name, planes, points, owners, sizes, _) in per_scene.items():
        xyz.append(points)
        plane.append(owners + len(names))
        size.append(sizes)
        scene_of.append(np.full(len(points), index))
        names += [f"{name}/{p.name}" for p in planes]
    return SyntheticPoints(np.concatenate(xyz), np.concatenate(plane), np.concatenate(size),
                           np.concatenate(scene_of), names)


def synthetic_ground_truth(out_dir: str | os.PathLike[str], *, point_spacing: float = 0.1,
                           min_view_cosine: float = MIN_VIEW_COSINE,
                           min_pixels: float = MIN_PIXELS) -> TrainingDatabase:
    """The training database of a generated set, computed from its true cameras.

    3D points: a jittered grid with one point per ``point_spacing`` x ``point_spacing`` world
    units on every surface, each with a detail size (see :func:`surface_points`; seeded by the
    dataset seed, so always the same; ids unique across scenes; coordinates from
    :func:`synthetic_points`). P(i) and the depths: the points :func:`visible_points` finds in
    image i with ``min_view_cosine`` and ``min_pixels`` (defaults chosen so that the pair
    quantities agree best with what COLMAP reconstructs, see docs/synthetic-data.md;
    ``min_view_cosine=0, min_pixels=0`` gives pure geometric visibility). ``focals`` from K,
    ``centres`` = -R^T t, ``clusters`` = scene index, ``images`` = ``<scene>/<view>.jpg`` under
    ``root = out_dir/images``. ``meta`` records the source and the parameters.
    """
    out_dir = Path(out_dir)
    data = load_ground_truth(out_dir)
    per_scene = _scene_surface_points(data, point_spacing)
    images, clusters, point_ids, depths, centres, focals = [], [], [], [], [], []
    for image in data["images"]:
        _, planes, points, owners, sizes, offset = per_scene[int(image["scene"])]
        camera = Camera(np.asarray(image["K"], float), np.asarray(image["R"], float),
                        np.asarray(image["t"], float), int(image["width"]), int(image["height"]))
        index, depth = visible_points(points, owners, planes, camera, min_view_cosine, sizes, min_pixels)
        images.append(image["path"])
        clusters.append(int(image["scene"]))
        point_ids.append(index + offset)
        depths.append(depth)
        centres.append(camera.centre)
        focals.append(camera.focal)
    meta = {"source": "synthetic ground truth", "dataset": str(out_dir),
            "parameters": data["parameters"], "version": data["version"],
            "point_spacing": point_spacing, "min_view_cosine": min_view_cosine,
            "min_pixels": min_pixels}
    return TrainingDatabase(images=images, clusters=np.asarray(clusters), point_ids=point_ids,
                            point_depths=depths, centres=np.asarray(centres), focals=np.asarray(focals),
                            root=out_dir / "images", meta=meta)

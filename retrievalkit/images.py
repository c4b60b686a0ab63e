"""Image loading for extraction: any common file -> an RGB picture of a known size, or a clear reason.

Every image the toolkit reads goes through :func:`load_rgb`, which

* applies the EXIF orientation (photos from phones are stored sideways with a rotation tag);
* converts every colour mode to 8-bit RGB: grayscale (``L``, ``1``), palette (``P``), CMYK,
  YCbCr, 16-bit and float grayscale (``I;16``, ``I``, ``F``: scaled to 0..255) and images with an
  alpha channel (``RGBA``, ``LA``, ``PA``, palette with transparency), which are composited onto a
  white background (what an image viewer shows; black would darken transparent logos);
* refuses images smaller than :data:`MIN_IMAGE_SIDE` pixels on a side, and files PIL cannot
  decode (missing, truncated, not an image, decompression bombs), by raising
  :class:`ImageLoadError` whose message is the reason the extraction report lists.

:func:`resized_shape` fixes how an image is scaled: the longest side becomes the requested size,
the other keeps the aspect ratio (rounded), and neither side falls below
:data:`MIN_INPUT_SIDE` (so even an extreme panorama gives the backbones a usable input).
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import RkitError

#: File extensions treated as images when a folder is scanned (compared lower-case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
#: Images with a side shorter than this (in original pixels) are refused as too small.
MIN_IMAGE_SIDE = 16
#: The shorter side of a resized image is never smaller than this (pixels).
MIN_INPUT_SIDE = 64

_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112

Box = tuple[float, float, float, float]


class ImageLoadError(RkitError):
    """An image that cannot be used; the message is the reason (listed, then skipped)."""


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has one of the :data:`IMAGE_EXTENSIONS`."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_image_files(folder: str | Path) -> list[str]:
    """Image files under ``folder``, recursively: sorted paths relative to it, '/'-separated.

    The one folder walk of the toolkit (``rkit extract``, ``eval``, ``sfm``, ``ablate`` ...).
    Files with one of :data:`IMAGE_EXTENSIONS` count; hidden files and folders (name starting
    with ``.``) are skipped. Symbolic links to files and to folders are followed (a collection
    assembled from links to other disks is common), with loop protection: a folder already
    visited (same device and inode, e.g. a link to a parent) is not entered again, so each real
    folder is listed once, under the first path that reaches it in sorted order.
    """
    folder = Path(folder)
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [(folder, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            stat = directory.stat()
            entries = sorted(os.scandir(directory), key=lambda e: e.name, reverse=True)
        except OSError:  # unreadable folder or a dangling link: nothing to list there
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = f"{prefix}{entry.name}"
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = not is_dir and entry.is_file(follow_symlinks=True)
            except OSError:
                continue
            if is_dir:
                stack.append((Path(entry.path), relative + "/"))
            elif is_file and is_image_file(entry.name):
                found.append(relative)
    return sorted(found)


def list_images(source: str | Path) -> tuple[Path, list[str]]:
    """The images named by ``source`` as ``(root, paths relative to root)``.

    ``source`` is a folder (searched by :func:`list_image_files`: recursive, symbolic links
    followed, hidden entries skipped, sorted), a single image file, or a text file with one path
    per line (relative to the list file's folder or absolute; blank lines and lines starting with
    ``#`` ignored; order kept).
    """
    source = Path(source)
    if source.is_dir():
        paths = list_image_files(source)
        if not paths:
            raise RkitError(
                f"no images under {source} (looked for files ending in .jpg, .png, .tif, .bmp, .webp "
                f"..., following symbolic links): point to a folder of images or to a text file listing "
                f"image paths"
            )
        return source, paths
    if not source.exists():
        raise RkitError(f"{source} does not exist: give a folder of images or a text file with one image path per line")
    if is_image_file(source):
        return source.parent, [source.name]
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise RkitError(
            f"cannot read {source} as a list of image paths ({exc}): give a folder of images or a "
            f"UTF-8 text file with one path per line"
        ) from None
    paths = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not paths:
        raise RkitError(f"the list file {source} names no images: write one image path per line")
    return source.parent, paths


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise ImageLoadError("file not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise ImageLoadError(f"not a readable image ({type(exc).__name__}: {exc})") from None


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block does not make the pixels unusable
        orientation = 1
    return (height, width) if orientation in _ROTATING_ORIENTATIONS else (width, height)


def _crop_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Round a box in original pixels (as PIL's ``crop`` does) and clip it to the image."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(width, x2), min(height, y2)
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise ImageLoadError(f"crop box {tuple(box)} is empty inside the {width}x{height} image")
    return x1, y1, x2, y2


def image_size(path: str | Path, crop: Box | None = None) -> tuple[int, int]:
    """(width, height) of the picture :func:`load_rgb` returns, from the file header only.

    Raises :class:`ImageLoadError` for a file that is missing, not an image, or too small.
    """
    with _open(Path(path)) as image:
        width, height = _oriented_size(image)
    if crop is not None:
        x1, y1, x2, y2 = _crop_box(crop, width, height)
        width, height = x2 - x1, y2 - y1
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageLoadError(f"too small ({width}x{height} px; at least {MIN_IMAGE_SIDE} px a side is needed)")
    return width, height


def resized_shape(width: int, height: int, longest: int) -> tuple[int, int]:
    """(height, width) after scaling the longest side to ``longest`` pixels, aspect kept.

    The shorter side is rounded to the nearest pixel and raised to :data:`MIN_INPUT_SIDE` if
    it would be smaller (both sides are, if ``longest`` itself is smaller).
    """
    longest = max(int(longest), MIN_INPUT_SIDE)
    scale = longest / max(width, height)
    new_w = max(MIN_INPUT_SIDE, int(round(width * scale)))
    new_h = max(MIN_INPUT_SIDE, int(round(height * scale)))
    return new_h, new_w


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(values * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path, *, crop: Box | None = None, size_hint: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` into an upright 8-bit RGB picture, optionally cropped.

    Args:
        path: the image file.
        crop: a box ``(x1, y1, x2, y2)`` in pixels of the upright original (rounded like PIL's
            ``crop``, clipped to the image); used for the query crops of revisited Oxford/Paris.
        size_hint: ``(width, height)`` the caller will resize to. For JPEG files without a crop
            this lets the decoder skip detail it would throw away (DCT scaling to the smallest
            power-of-two reduction that is still at least this size), which is much faster
            for large photos and changes the result only by resampling differences.

    Raises:
        ImageLoadError: with the reason, for anything that cannot be decoded or is too small.
    """
    image = _open(Path(path))
    try:
        if size_hint is not None and crop is None and image.format == "JPEG":
            stored_w, stored_h = image.size
            oriented_w, _ = _oriented_size(image)
            hint_w, hint_h = size_hint if oriented_w == stored_w else size_hint[::-1]
            image.draft("RGB", (max(1, hint_w), max(1, hint_h)))
        image.load()
        image = ImageOps.exif_transpose(image) or image
        rgb = _to_rgb(image)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise ImageLoadError(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    if crop is not None:
        rgb = rgb.crop(_crop_box(crop, *rgb.size))
    if min(rgb.size) < MIN_IMAGE_SIDE:
        raise ImageLoadError(
            f"too small ({rgb.size[0]}x{rgb.size[1]} px; at least {MIN_IMAGE_SIDE} px a side is needed)"
        )
    return rgb


def resize_rgb(image: Image.Image, shape: tuple[int, int]) -> Image.Image:
    """Resize to ``shape`` = (height, width) with an antialiased bicubic filter."""
    height, width = shape
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=None)


def to_uint8_array(image: Image.Image) -> np.ndarray:
    """The picture as a contiguous ``(3, H, W)`` uint8 array (channels first)."""
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def scaled_longest(image_size: int, scale: float) -> int:
    """Longest side in pixels for ``image_size`` at ``scale`` (rounded to the nearest pixel)."""
    if image_size <= 0 or not math.isfinite(scale) or scale <= 0:
        raise RkitError(f"image size {image_size} and scale {scale} must be positive: use e.g. --image-size 1024 --scales 1")
    return int(round(image_size * scale))

"""``synthetic``: procedurally drawn pedestrians, rendered on the fly, no files, no downloads.

A stand-in for Market-1501 that runs anywhere (tests, CI, smoke runs). Each identity is a person
figure (head, hair, torso, arms, legs, shoes) defined only by what it wears and carries: clothing
colours, a top pattern (plain, horizontal or vertical stripes, checks, a chest logo), sleeve and
trouser length or a skirt, hair colour and length, body proportions, and optional hat, shoulder
bag and backpack. The front and the back of a person differ (a logo is only on the front; a
backpack is a big patch from behind and two straps from the front; from behind the head is hair).

Each camera has its own illumination (gain, gamma), colour cast, blur, resolution, person scale,
background and a preference for front or back views; each image adds pose jitter (limb angles),
a random view and horizontal flip, small shifts, brightness jitter, sensor noise and, sometimes,
an occluding object. ``difficulty`` scales all camera and image nuisances and the share of
"near-duplicate" identities, which copy the previous identity and change one attribute.

Everything is a pure function of integers: identity attributes of ``(seed, pid)``, camera
properties of ``(seed, camid)``, an image of ``(seed, pid, camid, index)`` through
``numpy.random.default_rng([seed, pid, camid, index])``. ``img_path`` keys read
``"synthetic://<seed>/<pid>/<camid>/<index>"``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .. import register_dataset
from ..base import DatasetError, ImageReadError, ReIDDataset, Sample

_KEY = re.compile(r"^synthetic://(\d+)/(\d+)/(\d+)/(\d+)$")
_SS = 2  # supersampling factor: figures are drawn at 2x and box-filtered down (anti-aliasing)
# Tags ending the seed lists of the non-image random streams (the image stream has 4 entries).
_IDENTITY, _CAMERA, _TWIN, _DISTRACTOR, _QUERY, _MUTATION = 1, 2, 3, 4, 5, 6
RGB = tuple[int, int, int]  # 0-255 colour

_CLOTHES = np.array([  # RGB; dark and neutral colours first and most frequent, as in street scenes
    (28, 28, 32), (70, 70, 76), (40, 44, 92), (132, 132, 138), (222, 222, 215), (110, 76, 48),
    (185, 165, 120), (40, 92, 178), (128, 168, 218), (176, 34, 38), (108, 32, 44), (42, 118, 62),
    (96, 100, 50), (222, 192, 52), (224, 140, 168), (108, 60, 140), (228, 118, 40), (32, 128, 128),
])
_CLOTHES_P = np.array([8, 6, 6, 5, 5, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2], dtype=float)
_CLOTHES_P /= _CLOTHES_P.sum()
_HAIR = np.array([(20, 18, 18), (58, 40, 28), (104, 70, 40), (200, 170, 100), (150, 150, 150),
                  (140, 60, 30)])
_SKIN = np.array([(240, 200, 170), (222, 180, 140), (190, 140, 100), (140, 96, 64), (96, 64, 44)])
_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo")
_BOTTOMS = {"long": 1.0, "capri": 0.7, "shorts": 0.38, "skirt": 0.0}  # trouser length / leg


@dataclasses.dataclass(frozen=True)
class Identity:
    """What a person wears and carries; colours are RGB ``int`` triples, sizes fractions."""

    skin: RGB
    hair: RGB
    long_hair: bool
    height: float  # fraction of the camera's person height
    build: float  # width multiplier
    head: float  # head size multiplier
    legs: float  # leg length, fraction of body height
    top: RGB
    pattern: str
    top2: RGB  # second colour of the pattern
    period: int  # stripes / checks per torso height
    sleeves: float  # sleeve length, fraction of the arm
    bottom: RGB
    bottom_kind: str
    shoes: RGB
    hat: RGB | None
    bag: RGB | None
    backpack: RGB | None


def _colour(rng: np.random.Generator, table: np.ndarray, p=None, jitter: float = 10) -> RGB:
    c = table[rng.choice(len(table), p=p)] + rng.normal(0, jitter, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _maybe(rng: np.random.Generator, prob: float) -> RGB | None:
    return _colour(rng, _CLOTHES, _CLOTHES_P) if rng.random() < prob else None


_FIELDS = {  # one sampler per attribute; a near-duplicate re-samples exactly one of them
    "skin": lambda r: _colour(r, _SKIN, jitter=6),
    "hair": lambda r: _colour(r, _HAIR, jitter=6),
    "long_hair": lambda r: bool(r.random() < 0.35),
    "height": lambda r: float(r.uniform(0.9, 1.0)),
    "build": lambda r: float(r.uniform(0.85, 1.2)),
    "head": lambda r: float(r.uniform(0.9, 1.12)),
    "legs": lambda r: float(r.uniform(0.45, 0.53)),
    "top": lambda r: _colour(r, _CLOTHES, _CLOTHES_P),
    "pattern": lambda r: _PATTERNS[r.choice(5, p=[0.4, 0.17, 0.13, 0.12, 0.18])],
    "top2": lambda r: _colour(r, _CLOTHES, _CLOTHES_P),
    "period": lambda r: int(r.integers(3, 8)),
    "sleeves": lambda r: float(r.choice([0.35, 1.0])),
    "bottom": lambda r: _colour(r, _CLOTHES, _CLOTHES_P),
    "bottom_kind": lambda r: str(r.choice(list(_BOTTOMS), p=[0.55, 0.1, 0.2, 0.15])),
    "shoes": lambda r: _colour(r, _CLOTHES[:6], jitter=8),
    "hat": lambda r: _maybe(r, 0.15),
    "bag": lambda r: _maybe(r, 0.25),
    "backpack": lambda r: _maybe(r, 0.25),
}
_VISIBLE = ("top", "pattern", "top2", "sleeves", "bottom", "bottom_kind", "hair", "hat", "bag",
            "backpack")


def _random_identity(rng: np.random.Generator) -> Identity:
    return Identity(**{name: sample(rng) for name, sample in _FIELDS.items()})


def _differs(a, b) -> bool:
    """Whether two attribute values look different (colours: L1 distance over 90 grey levels)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return sum(abs(x - y) for x, y in zip(a, b)) > 90
    return a != b


def _mutate(ident: Identity, rng: np.random.Generator) -> Identity:
    """``ident`` with one visible attribute re-sampled to a clearly different value."""
    names = [n for n in _VISIBLE if n != "top2" or ident.pattern != "plain"]
    name = names[rng.integers(len(names))]
    for _ in range(50):
        value = _FIELDS[name](rng)
        if _differs(value, getattr(ident, name)):
            break
    return dataclasses.replace(ident, **{name: value})


@functools.lru_cache(maxsize=8192)
def _chain(seed: int, pid: int, difficulty: float) -> int:
    """Near-duplicate steps from ``pid`` back to an independent identity (0: independent)."""
    coin = np.random.default_rng([seed, pid, 0, 0, _TWIN]).random()
    if pid <= 1 or coin >= 0.6 * difficulty:
        return 0
    steps = _chain(seed, pid - 1, difficulty) + 1
    return steps if steps <= 3 else 0


@functools.lru_cache(maxsize=8192)
def identity(seed: int, pid: int, difficulty: float = 0.5) -> Identity:
    """The appearance of identity ``pid`` (``pid >= 1``; distractors draw theirs per image).

    With probability ``0.6 * difficulty`` identity ``pid`` is a near-duplicate of ``pid - 1``
    (chains stop after 3): the same person with one visible attribute changed (a colour, the
    pattern, sleeve or trouser length, hair, hat, bag or backpack). An identity that is not a
    near-duplicate looks the same at every difficulty.
    """
    if _chain(seed, pid, difficulty):
        parent = identity(seed, pid - 1, difficulty)
        return _mutate(parent, np.random.default_rng([seed, pid, 0, 0, _MUTATION]))
    return _random_identity(np.random.default_rng([seed, pid, 0, 0, _IDENTITY]))


# ---------------------------------------------------------------------------------- cameras
@dataclasses.dataclass(frozen=True)
class _Camera:
    curve: np.ndarray  # (3, 256) per-channel tone curve: gain, gamma and colour cast
    blur: float  # Gaussian blur radius, output pixels
    lowres: float  # down-sampling factor before up-sampling back (1 = full resolution)
    scale: float  # person height / image height
    noise: float  # sensor noise std, 0-255 grey levels
    front: float  # probability of a front view
    shift: float  # mean horizontal offset of the person, fraction of the width
    background: np.ndarray  # (2H + 16, 6W, 3) uint8 at supersampled size; images crop 2H x 2W


def _tone_curve(gain: np.ndarray, gamma: float) -> np.ndarray:
    """``(3, 256)`` float: ``255 * gain_c * (v / 255) ** gamma`` for each channel ``c``."""
    return 255 * gain[:, None] * (np.arange(256) / 255.0)[None, :] ** gamma


def _lut(curves: np.ndarray) -> list[int]:
    """``(3, 256)`` float curves as the 768-entry table of ``PIL.Image.point`` (RGB)."""
    return np.clip(curves, 0, 255).astype(np.uint8).ravel().tolist()


def _background(rng: np.random.Generator, h: int, w: int, v: float) -> np.ndarray:
    """A camera's scene, ``(h, w, 3)`` uint8: muted colours, one of four layouts.

    ``v`` in ``[0, 1]`` scales how far colours stray from mid-grey and how strong contrasts are.
    """
    wall = (125 + rng.uniform(-60, 60) * v) * (1 + rng.uniform(-0.18, 0.18, 3) * v)
    floor, third = (wall * (1 + rng.uniform(-0.35, 0.35, 1) * v) * (1 + rng.uniform(-0.1, 0.1, 3))
                    for _ in range(2))
    y = np.linspace(0, 1, h)[:, None, None]
    kind = rng.integers(4)
    if kind == 0:  # smooth vertical gradient
        img = (wall + (floor - wall) * y) * np.ones((1, w, 1))
    elif kind == 1:  # wall above, floor with tile lines below a horizon
        img = np.where(y < rng.uniform(0.55, 0.8), wall, floor) * np.ones((1, w, 1))
        img[:: max(h // 10, 2)] *= 0.9
    elif kind == 2:  # low-frequency blotches (foliage, clutter)
        small = rng.uniform(0, 1, (6, 8, 1)) * (floor - wall) + wall
        img = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.BILINEAR))
    else:  # vertical bands (facades, shop windows)
        bands = rng.integers(0, 3, max(w // 12, 2))
        cols = np.stack([wall, floor, third])[bands]
        img = np.repeat(cols, -(-w // len(bands)), axis=0)[:w][None] * np.ones((h, 1, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=256)
def _camera(seed: int, camid: int, size: tuple[int, int], difficulty: float) -> _Camera:
    """Camera ``camid``'s properties, drawn from ``(seed, camid)``; ``size`` is ``(H, W)``."""
    rng = np.random.default_rng([seed, 0, camid, 0, _CAMERA])
    s, v = difficulty, 0.3 + 0.7 * difficulty  # v: nuisances that never vanish
    gain = math.exp(rng.uniform(-0.5, 0.5) * s) * np.exp(rng.uniform(-0.25, 0.25, 3) * s)
    h, w = size
    return _Camera(
        curve=_tone_curve(gain, math.exp(rng.uniform(-0.45, 0.45) * s)),
        blur=float(rng.uniform(0, 1.3 * s)),
        lowres=float(1 + rng.uniform(0, 1.6 * s)),
        scale=float(0.87 + rng.uniform(-0.08, 0.08) * v),
        noise=float(rng.uniform(1, 1 + 10 * s)),
        front=float(rng.uniform(0.5 - 0.4 * s, 0.5 + 0.4 * s)),
        shift=float(rng.uniform(-0.08, 0.08) * s),
        background=_background(rng, _SS * h + 16, 3 * _SS * w, v),
    )


# ---------------------------------------------------------------------------------- drawing
def _contrast(c: RGB, c2: RGB) -> RGB:
    """``c2``, or a clearly lighter / darker shade of ``c`` if ``c2`` is too close to it."""
    if sum(abs(a - b) for a, b in zip(c, c2)) > 120:
        return c2
    return tuple(min(v + 110, 255) for v in c) if sum(c) < 380 else tuple(v // 3 for v in c)


def _pattern(ident: Identity, front: bool, w: int, h: int) -> np.ndarray:
    """The torso fabric, ``(h, w, 3)`` uint8; the logo only shows on the front."""
    out = np.empty((h, w, 3), np.uint8)
    out[:] = ident.top
    c2 = _contrast(ident.top, ident.top2)
    step = max(h // (2 * ident.period), 1)
    yy, xx = np.arange(h)[:, None] // step % 2, np.arange(w)[None, :] // step % 2
    if ident.pattern in ("hstripes", "vstripes", "checks"):
        mask = {"hstripes": yy, "vstripes": xx, "checks": yy ^ xx}[ident.pattern]
        out[np.broadcast_to(mask, (h, w)).astype(bool)] = c2
    elif ident.pattern == "logo" and front:
        out[int(0.2 * h): int(0.5 * h), int(0.33 * w): int(0.67 * w)] = c2
    return out


def _limb(draw, start, angle, length, width, parts, end_colour, end_size) -> None:
    """Draw a limb from ``start`` (pixels) at ``angle`` (radians from straight down).

    ``parts`` lists ``(fraction_of_length, colour)`` bands, each drawn from the root to its
    fraction, later ones on top (skin, then a sleeve over its upper part).
    """
    dx, dy = math.sin(angle) * length, math.cos(angle) * length
    x0, y0 = start
    for frac, colour in parts:
        draw.line([(x0, y0), (x0 + frac * dx, y0 + frac * dy)], colour, max(int(width), 1))
    x1, y1 = x0 + dx, y0 + dy
    draw.ellipse([x1 - end_size, y1 - end_size * 0.7, x1 + end_size, y1 + end_size * 0.7],
                 end_colour)


def _draw_legs(draw, ident: Identity, at, P: float, pose) -> None:
    width = 0.075 * ident.build * P
    trousers = _BOTTOMS[ident.bottom_kind]
    for side, angle in ((-1, pose[2]), (1, pose[3])):
        start = at(side * 0.045 * ident.build, 1 - ident.legs)
        parts = [(1.0, ident.skin), (trousers, ident.bottom)] if trousers else [(1.0, ident.skin)]
        _limb(draw, start, side * angle, (ident.legs - 0.02) * P, width, parts, ident.shoes,
              0.045 * P)
    if ident.bottom_kind == "skirt":
        y0, y1, hw = 1 - ident.legs - 0.02, 1 - ident.legs + 0.2, 0.1 * ident.build
        draw.polygon([at(-hw, y0), at(hw, y0), at(1.6 * hw, y1), at(-1.6 * hw, y1)], ident.bottom)


def _draw_torso(img, draw, ident: Identity, at, P: float, front: bool) -> float:
    """Torso with its fabric; returns the shoulder height (fraction of body height)."""
    y_sh, y_hip = 0.14 * ident.head + 0.02, 1 - ident.legs + 0.02
    sw, hw = 0.125 * ident.build, 0.1 * ident.build
    corners = [at(-sw, y_sh), at(sw, y_sh), at(hw, y_hip), at(-hw, y_hip)]
    x0, y0 = int(corners[0][0]), int(corners[0][1])
    w, h = int(corners[1][0]) - x0 + 1, int(corners[2][1]) - y0 + 1
    mask = Image.new("L", (w, h))
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in corners], 255)
    img.paste(Image.fromarray(_pattern(ident, front, w, h)), (x0, y0), mask)
    for side in (-1, 1):  # rounded shoulders
        cx, cy = at(side * (sw - 0.03), y_sh + 0.03)
        r = 0.035 * P
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], ident.top)
    return y_sh


def _draw_head(draw, ident: Identity, at, P: float, front: bool, y_sh: float) -> None:
    r = 0.065 * ident.head * P
    cx, cy = at(0, 0.07 * ident.head)
    draw.rectangle([cx - 0.3 * r, cy + 0.8 * r, cx + 0.3 * r, at(0, y_sh + 0.01)[1]], ident.skin)
    if ident.long_hair and front:  # strands beside the face, falling to the shoulders
        for x in (cx - 1.05 * r, cx + 0.45 * r):
            draw.rectangle([x, cy, x + 0.6 * r, cy + 2.2 * r], ident.hair)
    elif ident.long_hair:  # covering the upper back
        draw.rectangle([cx - 1.05 * r, cy, cx + 1.05 * r, cy + 2.3 * r], ident.hair)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], ident.skin if front else ident.hair)
    if front:
        draw.pieslice([cx - r, cy - 1.05 * r, cx + r, cy + 0.6 * r], 180, 360, ident.hair)
    if ident.hat is not None:
        draw.pieslice([cx - 1.05 * r, cy - 1.15 * r, cx + 1.05 * r, cy + 0.5 * r], 180, 360,
                      ident.hat)
        brim = cy - 0.25 * r
        draw.rectangle([cx - 1.3 * r, brim - 0.2 * r, cx + 1.3 * r, brim + 0.1 * r], ident.hat)


def _draw_carried(draw, ident: Identity, at, P: float, front: bool, y_sh: float) -> None:
    """Backpack (patch from behind, straps from the front) and shoulder bag."""
    if ident.backpack is not None:
        if front:
            for side in (-1, 1):
                draw.line([at(side * 0.075, y_sh), at(side * 0.07, y_sh + 0.17)], ident.backpack,
                          max(int(0.025 * P), 1))
        else:
            draw.rounded_rectangle([at(-0.09, y_sh + 0.02), at(0.09, y_sh + 0.22)],
                                   0.02 * P, ident.backpack)
    if ident.bag is not None:
        side = 1 if front else -1  # carried on the person's left: image right from the front
        draw.line([at(-side * 0.1, y_sh + 0.005), at(side * 0.12, 1 - ident.legs - 0.03)],
                  ident.bag, max(int(0.018 * P), 1))
        x, y = at(side * 0.15, 1 - ident.legs - 0.04)
        draw.rectangle([x - 0.05 * P, y, x + 0.05 * P, y + 0.09 * P], ident.bag)


def _draw_person(img: Image.Image, ident: Identity, box, pose, front: bool) -> None:
    """Draw ``ident`` on ``img``; ``box = (cx, top, P)`` in pixels, ``pose`` four limb angles."""
    cx, top, P = box
    at = lambda fx, fy: (cx + fx * P, top + fy * P)  # noqa: E731  body fractions -> pixels
    draw = ImageDraw.Draw(img)
    _draw_legs(draw, ident, at, P, pose)
    y_sh = _draw_torso(img, draw, ident, at, P, front)
    _draw_head(draw, ident, at, P, front, y_sh)
    arm_parts = [(1.0, ident.skin), (ident.sleeves, ident.top)]
    for side, angle in ((-1, pose[0]), (1, pose[1])):
        _limb(draw, at(side * 0.11 * ident.build, y_sh + 0.03), side * angle, 0.36 * P,
              0.05 * ident.build * P, arm_parts, ident.skin, 0.028 * P)
    _draw_carried(draw, ident, at, P, front, y_sh)


def _scene(background: np.ndarray, rng: np.random.Generator, h: int, w: int, s: float):
    """A random ``h x w`` window of a camera's background, re-tinted per image."""
    oy = rng.integers(0, background.shape[0] - h + 1)
    ox = rng.integers(0, background.shape[1] - w + 1)
    tint = np.exp(rng.normal(0, 0.05 + 0.05 * s, 3))[:, None] * np.arange(256)  # (3, 256)
    return Image.fromarray(background[oy: oy + h, ox: ox + w]).point(_lut(tint))


def _occlude(draw, rng: np.random.Generator, w: int, h: int) -> None:
    """A pole or passer-by entering from one side, in a random colour."""
    width = rng.uniform(0.12, 0.3) * w
    x0 = 0 if rng.random() < 0.5 else w - width
    y0 = rng.uniform(0, 0.5) * h if rng.random() < 0.5 else 0
    draw.rectangle([x0, y0, x0 + width, h], _colour(rng, _CLOTHES, jitter=30))


# ---------------------------------------------------------------------------------- rendering
def render_image(
    seed: int,
    pid: int,
    camid: int,
    index: int,
    image_size: tuple[int, int] = (128, 64),
    difficulty: float = 0.5,
) -> Image.Image:
    """Render one image of the synthetic dataset.

    Args:
        seed: dataset seed, ``>= 0``.
        pid: identity, ``>= 1``; ``0`` renders a distractor (a random person per image).
        camid: camera, ``>= 0``.
        index: image number within ``(pid, camid)``, ``>= 0``.
        image_size: ``(H, W)`` in pixels.
        difficulty: nuisance strength in ``[0, 1]``.

    Returns:
        An RGB ``PIL.Image.Image`` of ``W x H`` pixels, a pure function of the arguments.

    Raises:
        DatasetError: an argument is negative, ``image_size`` is below ``(32, 16)`` or
            ``difficulty`` is outside ``[0, 1]``.
    """
    for name, value in (("seed", seed), ("pid", pid), ("camid", camid), ("index", index)):
        _check_int(name, value, 0)
    h, w = _check_size(image_size)
    difficulty = _check_difficulty(difficulty)
    rng = np.random.default_rng([seed, pid, camid, index])
    if pid == 0:
        ident = _random_identity(np.random.default_rng([seed, 0, camid, index, _DISTRACTOR]))
    else:
        ident = identity(seed, pid, difficulty)
    cam, s = _camera(seed, camid, (h, w), difficulty), difficulty
    img = _scene(cam.background, rng, _SS * h, _SS * w, s)  # drawn at 2x, reduced at the end
    box, pose = _placement(rng, cam, ident, _SS * h, _SS * w, s)
    _draw_person(img, ident, box, pose, front=rng.random() < cam.front)
    if rng.random() < 0.35 * s:
        _occlude(ImageDraw.Draw(img), rng, _SS * w, _SS * h)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return _camera_effects(img.reduce(_SS), cam, rng, s)


def _placement(rng: np.random.Generator, cam: _Camera, ident: Identity, h: int, w: int, s: float):
    """Per-image framing ``(cx, top, P)`` in pixels and pose (arm and leg angles, radians)."""
    P = h * cam.scale * ident.height * math.exp(rng.normal(0, 0.04))  # person height
    cx = w * (0.5 + cam.shift + rng.normal(0, 0.03 + 0.04 * s))
    top = (h - P) / 2 + rng.normal(0, 0.02) * h
    stride = rng.uniform(0, 0.1 + 0.15 * s)
    arms = 0.1 + rng.normal(0, 0.05 + 0.1 * s, 2)
    return (cx, top, P), (arms[0], arms[1], 0.03 + stride, 0.03 - stride * rng.uniform(-1, 1))


def _camera_effects(img: Image.Image, cam: _Camera, rng: np.random.Generator, s: float):
    """Resolution loss, blur, tone curve, brightness jitter and sensor noise."""
    w, h = img.size
    if cam.lowres > 1.15:
        small = (max(int(w / cam.lowres), 4), max(int(h / cam.lowres), 4))
        img = img.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
    if cam.blur > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(cam.blur))
    img = img.point(_lut(cam.curve * math.exp(rng.normal(0, 0.12 * s))))  # tone + brightness
    arr = np.asarray(img, dtype=np.float32)  # (H, W, 3)
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * cam.noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def parse_key(key: str) -> tuple[int, int, int, int]:
    """Split ``"synthetic://<seed>/<pid>/<camid>/<index>"`` into four ``int``.

    Raises:
        ImageReadError: ``key`` does not have that form.
    """
    match = _KEY.match(key) if isinstance(key, str) else None
    if match is None:
        raise ImageReadError(str(key), "expected a key 'synthetic://<seed>/<pid>/<camid>/<index>'")
    return tuple(int(g) for g in match.groups())


def make_key(seed: int, pid: int, camid: int, index: int) -> str:
    """The ``img_path`` key of one image (inverse of :func:`parse_key`)."""
    return f"synthetic://{seed}/{pid}/{camid}/{index}"


# ---------------------------------------------------------------------------------- dataset
def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DatasetError(f"synthetic: {name}={value!r}; expected an int >= {minimum}")
    return int(value)


def _check_size(image_size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        h = w = -1
    if h < 32 or w < 16:
        raise DatasetError(
            f"synthetic: image_size={image_size!r}; expected (H, W) pixels with H >= 32, W >= 16"
        )
    return h, w


def _check_difficulty(difficulty) -> float:
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float)) or not (
        0.0 <= difficulty <= 1.0
    ):
        raise DatasetError(f"synthetic: difficulty={difficulty!r}; expected a float in [0, 1]")
    return float(difficulty)


class SyntheticReID(ReIDDataset):
    """Procedurally drawn pedestrians in a Market-1501-like protocol, rendered on the fly.

    Splits: training identities are pids ``1..num_train_ids``, test identities
    ``num_train_ids + 1..num_train_ids + num_test_ids``; every identity has
    ``images_per_id_per_camera`` images in every camera. For each test identity, image 0 of
    ``ceil(num_cameras / 2)`` cameras (chosen per identity from the seed) is a query and all its
    other images are gallery items, so the gallery holds same-pid same-camera images (which the
    Market protocol discards) and at least one other camera to match. ``num_distractors`` gallery
    images of random unrelated people have pid 0 (kept by the protocol), camera ``index %
    num_cameras``.

    Args:
        num_train_ids: training identities, ``>= 0``.
        num_test_ids: test identities, ``>= 1``.
        num_cameras: cameras, ``>= 2``.
        images_per_id_per_camera: images of each identity in each camera, ``>= 1``.
        seed: ``>= 0``; fixes identities, cameras and images.
        image_size: ``(H, W)`` in pixels, at least ``(32, 16)``.
        difficulty: in ``[0, 1]``; scales camera nuisances (illumination, colour cast, blur,
            resolution, framing, noise, occlusion, view bias; backgrounds and person scale
            differ between cameras even at 0) and the share (``0.6 * difficulty``) of
            near-duplicate identities. With the defaults, raw 16x8 pixels reach a rank-1 of
            0.15-0.4 depending on the seed (about 0.9 at difficulty 0, under 0.12 at 1), while a
            grey-world colour descriptor of the figure reaches 0.6-0.8: clothing carries the
            identity, cameras hide it from plain pixel matching.
        num_distractors: pid-0 gallery images, ``>= 0``.

    Raises:
        DatasetError: an option is out of range (the message names it).
    """

    def __init__(
        self,
        *,
        num_train_ids: int = 100,
        num_test_ids: int = 50,
        num_cameras: int = 4,
        images_per_id_per_camera: int = 2,
        seed: int = 0,
        image_size: tuple[int, int] = (128, 64),
        difficulty: float = 0.5,
        num_distractors: int = 50,
    ):
        self.seed = _check_int("seed", seed, 0)
        self.num_cameras = _check_int("num_cameras", num_cameras, 2)
        self.image_size = _check_size(image_size)
        self.difficulty = _check_difficulty(difficulty)
        n_train = _check_int("num_train_ids", num_train_ids, 0)
        n_test = _check_int("num_test_ids", num_test_ids, 1)
        k = _check_int("images_per_id_per_camera", images_per_id_per_camera, 1)
        n_dis = _check_int("num_distractors", num_distractors, 0)
        train = [s for pid in range(1, n_train + 1) for s in self._images(pid, k)]
        query, gallery = self._test_split(range(n_train + 1, n_train + n_test + 1), k)
        gallery += [Sample(make_key(self.seed, 0, i % self.num_cameras, i), 0, i % self.num_cameras)
                    for i in range(n_dis)]
        super().__init__(train, query, gallery, name="synthetic")

    def _images(self, pid: int, k: int) -> list[Sample]:
        return [Sample(make_key(self.seed, pid, c, i), pid, c)
                for c in range(self.num_cameras) for i in range(k)]

    def _test_split(self, pids, k: int) -> tuple[list[Sample], list[Sample]]:
        query, gallery = [], []
        num_query_cams = -(-self.num_cameras // 2)
        for pid in pids:
            rng = np.random.default_rng([self.seed, pid, 0, 0, _QUERY])
            cams = set(rng.permutation(self.num_cameras)[:num_query_cams].tolist())
            for c in range(self.num_cameras):
                for i in range(k):
                    sample = Sample(make_key(self.seed, pid, c, i), pid, c)
                    (query if c in cams and i == 0 else gallery).append(sample)
        return query, gallery

    def load_image(self, img_path: str) -> Image.Image:
        """Render the image of key ``img_path`` (``"synthetic://<seed>/<pid>/<camid>/<index>"``).

        Returns:
            An RGB ``PIL.Image.Image`` of ``image_size``; the same key always gives the same
            pixels.

        Raises:
            ImageReadError: the key is malformed or its camera is not one of this dataset's.
        """
        seed, pid, camid, index = parse_key(img_path)
        if camid >= self.num_cameras:
            raise ImageReadError(img_path, f"camid {camid} >= num_cameras={self.num_cameras}")
        return render_image(seed, pid, camid, index, self.image_size, self.difficulty)


@register_dataset("synthetic")
def synthetic(root=None, **options) -> SyntheticReID:
    """Build :class:`SyntheticReID`; ``root`` is accepted and ignored (nothing is read).

    Raises:
        DatasetError: an option :class:`SyntheticReID` does not take (the valid ones are listed).
    """
    import inspect

    valid = [p for p in inspect.signature(SyntheticReID).parameters if p != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DatasetError(f"synthetic: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}")
    return SyntheticReID(**options)

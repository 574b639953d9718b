"""The procedural face renderer of the embedded faces data (`imcf.data.faces`): one deterministic drawing per
(attributes, style), drawn at twice the size with PIL and box-downsampled, then lit. Each visible attribute has
its own drawing step, so a counterfactual face differs from the factual only where the attribute says."""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

#: the continuous style factors in u_image (each Uniform(0, 1)), in order
STYLE_FACTORS = (
    "skin_tone",
    "face_width",
    "face_height",
    "jaw",
    "eye_spacing",
    "eye_size",
    "eye_colour",
    "hair_colour",
    "hair_length",
    "mouth_width",
    "background_hue",
    "background_hue2",
    "background_angle",
    "offset_x",
    "offset_y",
    "yaw",
    "light_angle",
    "light_strength",
    "brightness",
    "shirt_hue",
    "frame_colour",
)
_SKIN = np.array([(250, 222, 200), (238, 194, 160), (205, 155, 115), (160, 108, 75), (112, 74, 52)], float)
_HAIR = np.array([(28, 22, 20), (72, 46, 30), (122, 80, 46), (160, 78, 38), (218, 184, 112)], float)
_IRIS = np.array([(60, 40, 25), (90, 120, 60), (60, 100, 160), (110, 80, 50)], float)
_FRAME = np.array([(15, 15, 18), (70, 35, 20), (20, 30, 90), (100, 15, 25)], float)


def _lerp_palette(palette: np.ndarray, t: float) -> np.ndarray:
    x = t * (len(palette) - 1)
    i = min(int(x), len(palette) - 2)
    return palette[i] * (1 - (x - i)) + palette[i + 1] * (x - i)


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, round(float(v)))) for v in c)
    return r, g, b


def _contrast(c: np.ndarray, ref: np.ndarray, gap: float) -> np.ndarray:
    """Scale colour `c` so its luminance differs from `ref`'s by at least `gap` (keeps the hue)."""
    lum = np.array([0.299, 0.587, 0.114])
    lc, lr = float(c @ lum), float(ref @ lum)
    if abs(lc - lr) >= gap:
        return c
    up_ok, down_ok = lr + gap <= 235, lr - gap >= 20
    target = lr + gap if (up_ok and (lc >= lr or not down_ok)) else lr - gap
    if target < lc:
        return c * (target / max(lc, 1.0))
    return c + (255 - c) * (target - lc) / max(255 - lc, 1.0)


@functools.cache
def _grid(n: int) -> np.ndarray:
    """Pixel centres in [-1, 1] (float32)."""
    return (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255


class _Painter:
    """Draws one face's parts on a 128-unit canvas scaled by `s`; the geometry follows the style factors."""

    def __init__(self, d: ImageDraw.ImageDraw, s: float, st: Mapping[str, float], young: bool, male: bool) -> None:
        self.d, self.s, self.st, self.young, self.male = d, s, st, young, male
        skin = _lerp_palette(_SKIN, st["skin_tone"])
        if young:
            hair = _lerp_palette(_HAIR, st["hair_colour"])
        else:  # grey to white hair
            hair = np.full(3, 150 + 80 * st["hair_colour"]) + np.array([4, 2, 0])
        hair = _contrast(hair, skin, 45)  # hair, bald crown and beard stay visible on every skin tone
        self.skin = skin
        self.skin_c, self.shade_c, self.dark_c = _rgb(skin), _rgb(skin * 0.86), _rgb(skin * 0.62)
        self.hair_c = _rgb(hair)
        self.brow_c = _rgb(hair * 0.7 if young else hair * 0.8)
        self.beard_c = _rgb(_contrast(hair * 0.82, skin, 65))
        self.cx = 64 + 8 * (2 * st["offset_x"] - 1)
        self.cy = 60 + 6 * (2 * st["offset_y"] - 1)
        self.a = 27 + 7 * st["face_width"]
        self.b = 36 + 7 * st["face_height"]
        self.fx = self.cx + 4 * (2 * st["yaw"] - 1)  # inner features shift with a small head turn
        self.sp = 11 + 6 * st["eye_spacing"]  # eyes
        self.ey = self.cy - self.b * 0.12
        self.re = 3.5 + 1.5 * st["eye_size"]
        self.ny = self.cy + self.b * 0.28  # nose
        self.my = self.cy + self.b * 0.56  # mouth
        self.mw = 9 + 5 * st["mouth_width"]

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        s = self.s
        return (x0 * s, y0 * s, x1 * s, y1 * s)

    def w(self, px: float) -> int:
        return max(1, round(px * self.s))

    def head(self, bald: bool) -> None:
        """Long hair (women), shoulders, neck, hair volume, ears, the face, the crown or fringe."""
        d, box, st, male = self.d, self.box, self.st, self.male
        cx, cy, a, b, fx, hair_c = self.cx, self.cy, self.a, self.b, self.fx, self.hair_c
        if not male:
            length = b * (0.5 + 0.6 * st["hair_length"])
            d.rounded_rectangle(box(cx - a - 8, cy - b * 0.4, cx + a + 8, cy + length + 12), 14 * self.s, fill=hair_c)
        shirt = _rgb(_hsv(st["shirt_hue"], 0.6, 0.7))
        d.ellipse(box(cx - 54, cy + b + 6, cx + 54, cy + b + 80), fill=shirt)
        d.rectangle(box(cx - 12, cy + b - 16, cx + 12, cy + b + 14), fill=self.shade_c)
        if not bald:  # hair volume around the crown
            grow = 4 if male else 7
            d.ellipse(box(cx - a - grow, cy - b - grow - 2, cx + a + grow, cy + b * 0.3), fill=hair_c)
        for side in (-1, 1):  # ears
            d.ellipse(box(cx + side * a - 5, cy - 10, cx + side * a + 5, cy + 8), fill=self.shade_c)
        if male:  # face: oval for women, square jaw for men
            d.ellipse(box(cx - a, cy - b, cx + a, cy + b * 0.8), fill=self.skin_c)
            d.rounded_rectangle(box(cx - a, cy - 4, cx + a, cy + b), (4 + 10 * st["jaw"]) * self.s, fill=self.skin_c)
        else:
            d.ellipse(box(cx - a, cy - b, cx + a, cy + b), fill=self.skin_c)
        if bald:  # shiny crown, hair only at the sides
            d.ellipse(box(fx - a * 0.45, cy - b + 4, fx - a * 0.05, cy - b + 13), fill=_rgb(self.skin * 1.1 + 12))
            for side in (-1, 1):
                d.ellipse(box(cx + side * (a - 1) - 5, cy - b * 0.45, cx + side * (a - 1) + 5, cy + 4), fill=hair_c)
        else:  # fringe over the top of the forehead
            fringe = b * (0.36 if male else 0.42)
            d.chord(box(cx - a - 1, cy - b - 1, cx + a + 1, cy - b + 2 * fringe), 180, 360, fill=hair_c)
            if not male:  # side locks framing the face
                for side in (-1, 1):
                    x0 = cx + side * (a - 3)
                    d.ellipse(box(x0 - 5, cy - b * 0.6, x0 + 5, cy + b * 0.35), fill=hair_c)

    def eyes_and_nose(self) -> None:
        d, box, s, w = self.d, self.box, self.s, self.w
        fx, sp, ey, re = self.fx, self.sp, self.ey, self.re
        iris = _rgb(_lerp_palette(_IRIS, self.st["eye_colour"]))
        for side in (-1, 1):
            ex = fx + side * sp
            d.line(
                [(s * (ex - 7), s * (ey - re - 4 + side * 0)), (s * (ex + 7), s * (ey - re - 5))],
                fill=self.brow_c,
                width=w(4 if self.male else 2),
            )
            d.ellipse(box(ex - re - 2, ey - re, ex + re + 2, ey + re), fill=(245, 245, 242))
            d.ellipse(box(ex - re * 0.75, ey - re * 0.75, ex + re * 0.75, ey + re * 0.75), fill=iris)
            d.ellipse(box(ex - re * 0.35, ey - re * 0.35, ex + re * 0.35, ey + re * 0.35), fill=(10, 10, 10))
        ny = self.ny
        d.line([(s * fx, s * (ey + 3)), (s * (fx - 3), s * ny), (s * (fx + 3), s * ny)], fill=self.dark_c, width=w(2))

    def wrinkles(self) -> None:
        """Old age: forehead lines, eye bags, nasolabial folds."""
        d, box, s, w, dark_c = self.d, self.box, self.s, self.w, self.dark_c
        fx, cy, b, sp, ey, re, ny, my, mw = (
            self.fx,
            self.cy,
            self.b,
            self.sp,
            self.ey,
            self.re,
            self.ny,
            self.my,
            self.mw,
        )
        for k in (0, 1):
            yk = cy - b * 0.45 + 4 * k
            d.arc(box(fx - 12, yk - 3, fx + 12, yk + 5), 200, 340, fill=dark_c, width=w(2))
        for side in (-1, 1):
            ex = fx + side * sp
            d.arc(box(ex - re - 1, ey, ex + re + 1, ey + re + 5), 20, 160, fill=dark_c, width=w(2))
            d.line(
                [(s * (fx + side * 6), s * (ny - 1)), (s * (fx + side * (mw + 3)), s * (my + 3))],
                fill=dark_c,
                width=w(2),
            )

    def beard(self) -> None:
        """A full beard over the jaw, sideburns and a moustache."""
        d, box, beard_c = self.d, self.box, self.beard_c
        cx, cy, a, b, fx, my, mw = self.cx, self.cy, self.a, self.b, self.fx, self.my, self.mw
        d.chord(box(cx - a - 1, cy - b * 0.55, cx + a + 1, cy + b + 4), 8, 172, fill=beard_c)
        for side in (-1, 1):
            d.rectangle(
                box(cx + side * a - 5 * (side > 0) - 1, cy - 6, cx + side * a + 5 * (side < 0) + 1, cy + b * 0.5),
                fill=beard_c,
            )
        d.ellipse(box(fx - mw - 4, my - 9, fx + mw + 4, my + 1), fill=beard_c)

    def mouth(self, smiling: bool) -> None:
        d, box, s, w, fx, my, mw = self.d, self.box, self.s, self.w, self.fx, self.my, self.mw
        lips = _rgb(np.array([190, 60, 70]) if not self.male else self.skin * 0.55)
        if smiling:  # open smile with teeth
            d.chord(box(fx - mw, my - 10, fx + mw, my + 10), 0, 180, fill=(110, 25, 35))
            d.chord(box(fx - mw + 2, my - 6, fx + mw - 2, my + 5), 0, 180, fill=(250, 250, 250))
            d.arc(box(fx - mw, my - 10, fx + mw, my + 10), 0, 180, fill=lips, width=w(2))
            d.line([(s * (fx - mw), s * my), (s * (fx + mw), s * my)], fill=lips, width=w(2))
        else:  # closed, straight mouth
            d.line([(s * (fx - mw * 0.65), s * (my + 2)), (s * (fx + mw * 0.65), s * (my + 2))], fill=lips, width=w(3))

    def glasses(self) -> None:
        """Thick frames, bridge, arms, and a glare on each lens."""
        d, box, s, w, fx, sp, ey, cx, a = self.d, self.box, self.s, self.w, self.fx, self.sp, self.ey, self.cx, self.a
        frame = _rgb(_lerp_palette(_FRAME, self.st["frame_colour"]))
        r = self.re + 6
        for side in (-1, 1):
            ex = fx + side * sp
            d.rounded_rectangle(box(ex - r, ey - r * 0.8, ex + r, ey + r * 0.8), 4 * s, outline=frame, width=w(3))
            d.line(
                [(s * (ex - r * 0.5), s * (ey + 2)), (s * (ex - 1), s * (ey - r * 0.5))],
                fill=(235, 240, 250),
                width=w(2),
            )
            d.line([(s * (ex + side * r), s * (ey - 2)), (s * (cx + side * a), s * (ey - 3))], fill=frame, width=w(3))
        d.line([(s * (fx - sp + r), s * (ey - 1)), (s * (fx + sp - r), s * (ey - 1))], fill=frame, width=w(3))


def _background(st: Mapping[str, float], canvas: int) -> Image.Image:
    """A linear gradient between two colours."""
    ang = st["background_angle"] * 2 * np.pi
    c1 = _hsv(st["background_hue"], 0.45, 0.85)
    c2 = _hsv(st["background_hue2"], 0.55, 0.45 + 0.4 * st["background_hue"])
    grid = _grid(canvas)
    t = np.add.outer(np.float32(0.5 * np.sin(ang)) * grid, np.float32(0.5 * np.cos(ang)) * grid) + np.float32(0.5)
    bg = c1.astype(np.float32) + t[..., None] * (c2 - c1).astype(np.float32)
    return Image.fromarray(bg.astype(np.uint8), "RGB")


def _lit(im: Image.Image, st: Mapping[str, float], size: int) -> np.ndarray:
    """Downsample, then directional lighting and overall brightness."""
    out = np.asarray(im.reduce(2), dtype=np.float32)
    la = st["light_angle"] * 2 * np.pi
    g = _grid(size)
    k = 0.3 * st["light_strength"] * (0.85 + 0.25 * st["brightness"])
    light = np.add.outer(np.float32(k * np.sin(la)) * g, np.float32(k * np.cos(la)) * g)
    light += np.float32(0.85 + 0.25 * st["brightness"])
    out *= light[..., None]
    np.clip(out, 0, 255, out=out)
    return np.rint(out, out=out).astype(np.uint8)


def render_face(attributes: Mapping[str, int], style: np.ndarray, size: int = 64) -> np.ndarray:
    """Draw one face: (size, size, 3) uint8. Deterministic in (attributes, style)."""
    st = dict(zip(STYLE_FACTORS, (float(v) for v in style)))
    young, male, beard, bald, smiling, glasses = (
        int(attributes[a]) for a in ("young", "male", "beard", "bald", "smiling", "eyeglasses")
    )
    canvas = 2 * size  # drawn at twice the size, then box-downsampled (anti-aliasing)
    im = _background(st, canvas)
    painter = _Painter(ImageDraw.Draw(im), canvas / 128.0, st, bool(young), bool(male))
    painter.head(bool(bald))
    painter.eyes_and_nose()
    if not young:
        painter.wrinkles()
    if beard:
        painter.beard()
    painter.mouth(bool(smiling))
    if glasses:
        painter.glasses()
    return _lit(im, st, size)

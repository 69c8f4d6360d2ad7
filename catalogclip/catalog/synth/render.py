"""Product pictures: a clean merchant shot (view 0) and busy customer shots (views 1+)."""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance

from catalogclip.catalog.synth.draw import (
    Frame,
    draw_logo,
    draw_motif,
    draw_shape,
    outline_colour,
    pattern_fill,
    shade,
)
from catalogclip.catalog.synth.spec import ProductSpec
from catalogclip.catalog.synth.world import BRAND_BY_NAME, COLOURS, GENDER_WIDTH, LEAVES, PATTERNS, Brand, Leaf

SUPERSAMPLE = 2  # polygons are drawn at twice the size and averaged down, for smooth edges
MERCHANT_BACKGROUNDS = ((246, 246, 246), (236, 236, 240), (242, 238, 230))
MERCHANT_FRACTION = (0.78, 0.9)  # product side / image side
CUSTOMER_FRACTION = (0.25, 0.5)
CUSTOMER_MAX_ROTATION = 15.0  # degrees


@dataclass
class RenderedView:
    image: Image.Image  # RGB
    bbox: tuple[int, int, int, int]  # tight box of the product, x1/y1 exclusive
    mask: Image.Image  # "L": where the product is (its alpha) in image coordinates


def _sprite(leaf: Leaf, colour: str, pattern: str, gender: str, px: int, brand: Brand | None = None,
            print_word: str | None = None) -> Image.Image:
    """The product alone on a transparent `px`-pixel square."""
    size = px * SUPERSAMPLE
    frame = Frame(size, GENDER_WIDTH[gender])
    rgb = COLOURS[colour]
    edge, stroke = outline_colour(rgb), max(1, size // 80)

    mask = Image.new("L", (size, size), 0)
    mask_draw = ImageDraw.Draw(mask)
    for shape in leaf.body:
        draw_shape(mask_draw, shape, frame, fill=255)
    sprite = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    sprite.paste(pattern_fill(size, rgb, pattern, max(4, size // 9)), (0, 0), mask)

    draw = ImageDraw.Draw(sprite)
    for shape in leaf.body:
        if shape[0] != "arc":  # arcs are strokes already
            draw_shape(draw, shape, frame, outline=edge, width=stroke)
    detail_fills = {"dark": (35, 35, 35), "light": (235, 235, 235), "shade": shade(rgb, 0.7)}
    for detail in leaf.details:
        if detail.style == "line":
            draw_shape(draw, detail.shape, frame, outline=edge, width=stroke)
        else:
            draw_shape(draw, detail.shape, frame, fill=detail_fills[detail.style], outline=edge, width=stroke)
    if print_word is not None and leaf.print_at is not None:
        cx, cy = frame.point(leaf.print_at[:2])
        draw_motif(draw, print_word, cx, cy, leaf.print_at[2] * size)
    if brand is not None:
        cx, cy = frame.point(leaf.logo_at)
        draw_logo(draw, brand.logo_shape, brand.logo_colour, cx, cy, 0.08 * size)
    return sprite.reduce(SUPERSAMPLE)


def render_product(spec: ProductSpec, px: int) -> Image.Image:
    """The product of `spec` with its brand mark and print, on a transparent square (RGBA)."""
    return _sprite(spec.category, spec.colour, spec.pattern, spec.gender, px, BRAND_BY_NAME[spec.brand], spec.print)


def _random_colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _clutter(rng: random.Random, size: int) -> Image.Image:
    """A busy scene: a colour gradient, grain, random shapes and a few other objects."""
    corners = Image.new("RGB", (2, 2))
    corners.putdata([_random_colour(rng) for _ in range(4)])
    scene = corners.resize((size, size), Image.Resampling.BILINEAR)
    # Grain from our own generator (Image.effect_noise draws from C rand(), unseeded).
    grain = Image.frombytes("L", (size, size), rng.randbytes(size * size)).convert("RGB")
    scene = Image.blend(scene, grain, 0.12)
    draw = ImageDraw.Draw(scene)
    for _ in range(rng.randint(10, 24)):
        x, y = rng.uniform(-0.1, 1.0) * size, rng.uniform(-0.1, 1.0) * size
        w, h = rng.uniform(0.05, 0.4) * size, rng.uniform(0.05, 0.4) * size
        kind, colour = rng.choice(("rect", "ellipse", "line", "triangle")), _random_colour(rng)
        if kind == "rect":
            draw.rectangle([x, y, x + w, y + h], fill=colour)
        elif kind == "ellipse":
            draw.ellipse([x, y, x + w, y + h], fill=colour)
        elif kind == "line":
            draw.line([x, y, x + w, y + h], fill=colour, width=max(1, size // 60))
        else:
            draw.polygon([(x, y + h), (x + w / 2, y), (x + w, y + h)], fill=colour)
    for _ in range(rng.randint(1, 3)):
        other = _sprite(rng.choice(LEAVES), rng.choice(list(COLOURS)), rng.choice(PATTERNS), "Unisex",
                        max(4, round(rng.uniform(0.15, 0.35) * size)))
        other = other.rotate(rng.uniform(0, 360), resample=Image.Resampling.BICUBIC, expand=True)
        scene.paste(other, (rng.randrange(-other.width // 2, size), rng.randrange(-other.height // 2, size)), other)
    return scene


def _trim(product: Image.Image) -> Image.Image:
    """Crop a sprite to what is drawn on it, so its box is the product's tight box."""
    box = product.getchannel("A").getbbox()
    if box is None:
        raise ValueError("the product drawing is empty")
    return product.crop(box)


def _place(scene: Image.Image, product: Image.Image, x: int, y: int) -> RenderedView:
    alpha = product.getchannel("A")
    scene.paste(product, (x, y), alpha)
    mask = Image.new("L", scene.size, 0)
    mask.paste(alpha, (x, y))
    return RenderedView(scene, (x, y, x + product.width, y + product.height), mask)


def render_view(spec: ProductSpec, view: int, image_size: int, seed: int = 0) -> RenderedView:
    """View 0: merchant shot (product large, centred, plain background); views 1+: customer
    shots (cluttered scene, product 25-50% of the side, off-centre, slightly rotated)."""
    rng = random.Random(f"catalogclip-synth:{seed}:{spec.id}:view{view}")
    if view == 0:
        scene = Image.new("RGB", (image_size, image_size), rng.choice(MERCHANT_BACKGROUNDS))
        product = _trim(render_product(spec, round(rng.uniform(*MERCHANT_FRACTION) * image_size)))
        return _place(scene, product, (image_size - product.width) // 2, (image_size - product.height) // 2)
    scene = _clutter(rng, image_size)
    angle = rng.uniform(-CUSTOMER_MAX_ROTATION, CUSTOMER_MAX_ROTATION)
    product = render_product(spec, round(rng.uniform(*CUSTOMER_FRACTION) * image_size))
    product = _trim(product.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True))
    placed = _place(scene, product, rng.randint(0, image_size - product.width),
                    rng.randint(0, image_size - product.height))
    # Phone photos: exposure varies.
    placed.image = ImageEnhance.Brightness(placed.image).enhance(rng.uniform(0.8, 1.1))
    return placed

"""Small catalogs written by the tests themselves (no ../shared, no network)."""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from catalogclip.catalog.schema import Catalog, ImageRef, Product, write_jsonl

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
BRANDS = ["Puma", "Diesel", "Apple", "Dove"]
BRAND_CORNERS = {"Puma": (0, 0), "Diesel": (1, 0), "Apple": (0, 1), "Dove": (1, 1)}


def draw_product(colour: str, brand: str, size: int = 32) -> Image.Image:
    """Background colour = the product colour; a black mark in the brand's corner = the brand."""
    image = Image.new("RGB", (size, size), COLOURS[colour])
    cx, cy = BRAND_CORNERS[brand]
    half = size // 2
    draw = ImageDraw.Draw(image)
    draw.rectangle([cx * half + 2, cy * half + 2, cx * half + half - 3, cy * half + half - 3], fill=(0, 0, 0))
    return image


def write_brand_catalog(folder: Path, copies: int = 2, seed: int = 0) -> Path:
    """16 (colour, brand) kinds x `copies`: the title names the colour only, the brand is visible
    in the image and present only as an entity; `season` is random and useless."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    products = []
    for colour in COLOURS:
        for brand in BRANDS:
            for k in range(copies):
                pid = f"{colour}-{brand}-{k}".lower()
                path = folder / f"{pid}.png"
                draw_product(colour, brand).save(path)
                products.append(
                    Product(
                        id=pid,
                        title=f"{colour} shirt",
                        images=[ImageRef(path.name)],
                        attributes={"brand": brand, "colour": colour, "season": rng.choice(["summer", "winter", "fall"])},
                        category_path=["Apparel", "Topwear", "Shirts"],
                    )
                )
    return write_jsonl(Catalog(products, folder), folder / "catalog.jsonl")

"""The synthetic shop as data: category tree, silhouettes, colours, patterns and brands.

Shapes live in a unit square (x right, y down) and are scaled when drawn. A shape is one of
``("poly", points)``, ``("ellipse", box)``, ``("rrect", box, radius)`` or
``("arc", box, start_deg, end_deg, width)``.
"""
from __future__ import annotations

from dataclasses import dataclass

Shape = tuple
RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "Black": (30, 30, 30),
    "White": (240, 240, 240),
    "Red": (200, 30, 40),
    "Blue": (40, 80, 200),
    "Green": (40, 140, 60),
    "Yellow": (240, 200, 40),
    "Pink": (240, 130, 170),
    "Grey": (128, 128, 128),
    "Brown": (120, 75, 40),
    "Purple": (120, 50, 150),
}

PATTERNS = ("solid", "stripes", "checks", "dots")
PATTERN_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
PATTERN_ADJECTIVES = {"solid": "Solid", "stripes": "Striped", "checks": "Checked", "dots": "Polka Dot"}
PATTERN_PHRASES = {
    "solid": "", "stripes": " with stripes", "checks": " with a checked pattern", "dots": " with polka dots",
}

# Season is deliberately random and never drawn: a useless attribute group.
SEASONS = ("Summer", "Winter", "Spring", "Fall")

APPAREL_GENDERS = ("Men", "Women", "Unisex")
GENDER_WEIGHTS = {"Men": 0.45, "Women": 0.45, "Unisex": 0.1}
# Gender is faintly visible: men's cuts are drawn wider than women's.
GENDER_WIDTH = {"Men": 1.0, "Women": 0.84, "Unisex": 0.92}


@dataclass(frozen=True)
class Detail:
    """A part drawn over the body: ``style`` is "line" (outline in a darker shade of the
    product colour), "dark" or "light" (filled), or "shade" (filled in the darker shade)."""

    shape: Shape
    style: str


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]
    noun: str  # how titles name one product of the leaf
    body: tuple[Shape, ...]  # filled with the colour and pattern
    details: tuple[Detail, ...]
    logo_at: tuple[float, float]
    materials: tuple[str, ...]
    genders: tuple[str, ...] = APPAREL_GENDERS
    patterns: tuple[str, ...] = PATTERNS
    print_at: tuple[float, float, float] | None = None  # centre x, y and size of a print motif
    pair: bool = False  # the noun is plural ("Jeans"): text says "a pair of"

    @property
    def name(self) -> str:
        return self.path[-1]


def _line(*points: tuple[float, float]) -> Detail:
    return Detail(("line", points), "line")


LEAVES: tuple[Leaf, ...] = (
    Leaf(
        ("Apparel", "Topwear", "Tshirts"), "T-shirt",
        body=(("poly", ((0.36, 0.08), (0.5, 0.16), (0.64, 0.08), (0.9, 0.2), (0.98, 0.42), (0.8, 0.47),
                        (0.78, 0.95), (0.22, 0.95), (0.2, 0.47), (0.02, 0.42), (0.1, 0.2))),),
        details=(_line((0.2, 0.47), (0.16, 0.26)), _line((0.8, 0.47), (0.84, 0.26))),
        logo_at=(0.66, 0.3), materials=("Cotton", "Polyester"), print_at=(0.5, 0.6, 0.42),
    ),
    Leaf(
        ("Apparel", "Topwear", "Shirts"), "Shirt",
        body=(("poly", ((0.38, 0.06), (0.5, 0.12), (0.62, 0.06), (0.86, 0.16), (0.99, 0.86), (0.88, 0.88),
                        (0.78, 0.42), (0.78, 0.96), (0.22, 0.96), (0.22, 0.42), (0.12, 0.88), (0.01, 0.86),
                        (0.14, 0.16))),),
        details=(Detail(("poly", ((0.38, 0.06), (0.5, 0.14), (0.44, 0.24))), "light"),
                 Detail(("poly", ((0.62, 0.06), (0.5, 0.14), (0.56, 0.24))), "light"),
                 _line((0.5, 0.14), (0.5, 0.96))),
        logo_at=(0.66, 0.34), materials=("Cotton", "Linen"),
    ),
    Leaf(
        ("Apparel", "Topwear", "Hoodies"), "Hoodie",
        body=(("ellipse", (0.32, 0.0, 0.68, 0.3)),
              ("poly", ((0.34, 0.14), (0.66, 0.14), (0.88, 0.24), (0.99, 0.9), (0.86, 0.92), (0.78, 0.46),
                        (0.78, 0.97), (0.22, 0.97), (0.22, 0.46), (0.14, 0.92), (0.01, 0.9), (0.12, 0.24)))),
        details=(Detail(("ellipse", (0.4, 0.06, 0.6, 0.24)), "shade"),
                 Detail(("rrect", (0.32, 0.68, 0.68, 0.86), 0.04), "line"),
                 _line((0.46, 0.24), (0.45, 0.4)), _line((0.54, 0.24), (0.55, 0.4))),
        logo_at=(0.66, 0.36), materials=("Cotton", "Fleece"), print_at=(0.5, 0.52, 0.3),
    ),
    Leaf(
        ("Apparel", "Bottomwear", "Jeans"), "Jeans",
        body=(("poly", ((0.22, 0.03), (0.78, 0.03), (0.85, 0.97), (0.57, 0.97), (0.5, 0.34), (0.43, 0.97),
                        (0.15, 0.97))),),
        details=(_line((0.22, 0.1), (0.78, 0.1)), _line((0.5, 0.1), (0.5, 0.3))),
        logo_at=(0.32, 0.18), materials=("Denim",),
        pair=True,
    ),
    Leaf(
        ("Apparel", "Bottomwear", "Shorts"), "Shorts",
        body=(("poly", ((0.16, 0.2), (0.84, 0.2), (0.93, 0.78), (0.56, 0.8), (0.5, 0.48), (0.44, 0.8),
                        (0.07, 0.78))),),
        details=(_line((0.16, 0.28), (0.84, 0.28)),),
        logo_at=(0.28, 0.62), materials=("Denim", "Cotton"),
        pair=True,
    ),
    Leaf(
        ("Apparel", "Dresses"), "Dress",
        body=(("poly", ((0.38, 0.04), (0.44, 0.04), (0.46, 0.16), (0.54, 0.16), (0.56, 0.04), (0.62, 0.04),
                        (0.64, 0.32), (0.58, 0.42), (0.9, 0.96), (0.1, 0.96), (0.42, 0.42), (0.36, 0.32))),),
        details=(_line((0.42, 0.42), (0.58, 0.42)),),
        logo_at=(0.5, 0.3), materials=("Cotton", "Silk", "Polyester"), genders=("Women",),
    ),
    Leaf(
        ("Footwear", "Shoes", "Sneakers"), "Sneakers",
        body=(("poly", ((0.04, 0.56), (0.08, 0.4), (0.3, 0.36), (0.44, 0.24), (0.6, 0.28), (0.72, 0.44),
                        (0.95, 0.56), (0.97, 0.72), (0.04, 0.72))),),
        details=(Detail(("rrect", (0.02, 0.7, 0.98, 0.8), 0.03), "light"),
                 _line((0.5, 0.3), (0.58, 0.44)), _line((0.44, 0.33), (0.52, 0.46))),
        logo_at=(0.3, 0.56), materials=("Mesh", "Leather", "Canvas"),
        pair=True,
    ),
    Leaf(
        ("Footwear", "Shoes", "Boots"), "Boots",
        body=(("poly", ((0.24, 0.08), (0.56, 0.08), (0.58, 0.54), (0.9, 0.68), (0.93, 0.84), (0.22, 0.84))),),
        details=(Detail(("rrect", (0.2, 0.84, 0.95, 0.93), 0.02), "dark"), _line((0.24, 0.16), (0.56, 0.16))),
        logo_at=(0.4, 0.4), materials=("Leather", "Suede"),
        pair=True,
    ),
    Leaf(
        ("Accessories", "Bags", "Backpacks"), "Backpack",
        body=(("rrect", (0.2, 0.14, 0.8, 0.96), 0.14), ("arc", (0.36, 0.02, 0.64, 0.26), 180, 360, 0.04)),
        details=(Detail(("rrect", (0.3, 0.56, 0.7, 0.86), 0.05), "line"),),
        logo_at=(0.5, 0.34), materials=("Polyester", "Canvas", "Leather"), genders=("Men", "Women", "Unisex"),
        print_at=(0.5, 0.7, 0.26),
    ),
    Leaf(
        ("Accessories", "Bags", "Totes"), "Tote Bag",
        body=(("poly", ((0.14, 0.34), (0.86, 0.34), (0.93, 0.96), (0.07, 0.96))),
              ("arc", (0.28, 0.06, 0.72, 0.6), 180, 360, 0.035)),
        details=(_line((0.14, 0.42), (0.86, 0.42)),),
        logo_at=(0.8, 0.86), materials=("Canvas", "Leather"), genders=("Women", "Unisex"),
        print_at=(0.5, 0.66, 0.42),
    ),
    Leaf(
        ("Accessories", "Watches"), "Watch",
        body=(("rrect", (0.38, 0.02, 0.62, 0.98), 0.04), ("ellipse", (0.2, 0.22, 0.8, 0.78))),
        details=(Detail(("ellipse", (0.27, 0.29, 0.73, 0.71)), "light"),
                 Detail(("line", ((0.5, 0.5), (0.5, 0.36))), "dark"),
                 Detail(("line", ((0.5, 0.5), (0.62, 0.56))), "dark")),
        logo_at=(0.5, 0.62), materials=("Metal", "Leather", "Silicone"), patterns=("solid",),
    ),
    Leaf(
        ("Electronics", "Phones"), "Smartphone",
        body=(("rrect", (0.28, 0.03, 0.72, 0.97), 0.07),),
        details=(Detail(("rrect", (0.33, 0.08, 0.47, 0.26), 0.04), "dark"),
                 Detail(("ellipse", (0.355, 0.1, 0.445, 0.16)), "light")),
        logo_at=(0.5, 0.55), materials=("Aluminium", "Glass", "Plastic"), genders=("Unisex",), patterns=("solid",),
    ),
    Leaf(
        ("Electronics", "Audio", "Headphones"), "Headphones",
        body=(("arc", (0.14, 0.08, 0.86, 0.9), 180, 360, 0.07),
              ("rrect", (0.08, 0.46, 0.3, 0.86), 0.08), ("rrect", (0.7, 0.46, 0.92, 0.86), 0.08)),
        details=(Detail(("rrect", (0.12, 0.52, 0.26, 0.8), 0.05), "dark"),),
        logo_at=(0.81, 0.66), materials=("Plastic", "Aluminium"), genders=("Unisex",), patterns=("solid",),
        pair=True,
    ),
)
LEAF_BY_NAME: dict[str, Leaf] = {leaf.name: leaf for leaf in LEAVES}


@dataclass(frozen=True)
class Brand:
    name: str
    logo_shape: str  # one of LOGO_SHAPES
    logo_colour: RGB
    leaves: tuple[str, ...]
    #: the brand name's everyday sense, drawn as a print on other brands' products
    word: str | None = None


LOGO_SHAPES = ("circle", "ring", "square", "triangle", "diamond", "star", "hexagon", "cross", "chevron")

_RED, _BLUE, _GREEN, _ORANGE = (215, 25, 35), (25, 75, 210), (20, 150, 60), (245, 130, 20)
_PURPLE, _BLACK, _GOLD, _TEAL = (130, 40, 170), (15, 15, 15), (212, 165, 25), (0, 150, 150)

BRANDS: tuple[Brand, ...] = (
    # Brand names that are ordinary words: the confounders EI-CLIP is about.
    Brand("Golden Goose", "star", _GOLD, ("Sneakers", "Boots", "Tshirts", "Hoodies"), "goose"),
    Brand("Puma", "chevron", _RED, ("Sneakers", "Tshirts", "Hoodies", "Shorts", "Backpacks"), "puma"),
    Brand("Jaguar", "diamond", _GREEN, ("Watches", "Backpacks"), "jaguar"),
    Brand("Apple", "ring", _BLACK, ("Phones", "Watches", "Headphones"), "apple"),
    Brand("Mango", "square", _ORANGE, ("Dresses", "Shirts", "Tshirts", "Totes"), "mango"),
    Brand("Shell", "hexagon", _GOLD, ("Shorts", "Tshirts", "Totes"), "shell"),
    Brand("Dove", "triangle", _BLUE, ("Dresses", "Shirts", "Totes"), "dove"),
    Brand("Fossil", "cross", _PURPLE, ("Watches", "Backpacks", "Totes"), "fossil"),
    # Plain brands.
    Brand("Roadster", "triangle", _RED, ("Tshirts", "Shirts", "Hoodies", "Jeans", "Shorts", "Backpacks")),
    Brand("HRX", "chevron", _BLUE, ("Tshirts", "Hoodies", "Shorts", "Sneakers", "Backpacks")),
    Brand("Nimbus", "circle", _TEAL, ("Phones", "Headphones", "Watches")),
    Brand("Kestrel", "star", _GREEN, ("Sneakers", "Boots", "Backpacks")),
    Brand("Urbano", "diamond", _RED, ("Jeans", "Shirts", "Tshirts", "Boots")),
    Brand("Lumen", "hexagon", _PURPLE, ("Dresses", "Totes", "Tshirts", "Watches")),
    Brand("Voltix", "cross", _ORANGE, ("Phones", "Headphones")),
    Brand("Northpeak", "square", _BLUE, ("Hoodies", "Boots", "Backpacks", "Jeans")),
)
BRAND_BY_NAME: dict[str, Brand] = {brand.name: brand for brand in BRANDS}

#: brands whose names are everyday words, and those words (a distractor's `print` attribute)
CONFOUNDER_WORDS: dict[str, str] = {b.name: b.word for b in BRANDS if b.word is not None}
CONFOUNDER_BRANDS: tuple[str, ...] = tuple(CONFOUNDER_WORDS)
PRINT_LEAVES: tuple[str, ...] = tuple(leaf.name for leaf in LEAVES if leaf.print_at is not None)

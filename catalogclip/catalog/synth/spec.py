"""What a synthetic product is (attributes, category, text) before it is drawn."""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

from catalogclip.catalog.schema import ImageRef, Product
from catalogclip.catalog.synth.world import (
    BRAND_BY_NAME,
    BRANDS,
    COLOURS,
    CONFOUNDER_BRANDS,
    GENDER_WEIGHTS,
    LEAF_BY_NAME,
    PATTERN_ADJECTIVES,
    PATTERN_PHRASES,
    PATTERN_WEIGHTS,
    PATTERNS,
    PRINT_LEAVES,
    SEASONS,
    Leaf,
)

#: every DISTRACTOR_EVERY-th product is an everyday-sense distractor (a print of a confounder word)
DISTRACTOR_EVERY = 6


@dataclass(frozen=True)
class ProductSpec:
    id: str
    leaf: str
    brand: str
    colour: str
    pattern: str
    material: str
    season: str
    gender: str
    print: str | None = None  # a confounder word drawn on the product in its everyday sense
    title: str = ""
    description: str = ""

    @property
    def category(self) -> Leaf:
        return LEAF_BY_NAME[self.leaf]

    def attributes(self) -> dict[str, str]:
        attrs = {"brand": self.brand, "colour": self.colour, "pattern": self.pattern, "material": self.material,
                 "season": self.season, "gender": self.gender}
        if self.print:
            attrs["print"] = self.print
        return attrs

    def to_product(self, images: list[ImageRef]) -> Product:
        return Product(self.id, self.title, self.description, list(images), self.attributes(),
                       list(self.category.path))


def product_id(index: int) -> str:
    return f"syn-{index:06d}"


def _rng(seed: int, index: int, what: str) -> random.Random:
    # String seeds hash with SHA-512, so streams are the same in every process and run.
    return random.Random(f"catalogclip-synth:{seed}:{index}:{what}")


def sample_spec(index: int, seed: int = 0) -> ProductSpec:
    """The `index`-th product of the catalog for `seed`; independent of the catalog size, so a
    small catalog is a prefix of a large one."""
    rng = _rng(seed, index, "spec")
    word = None
    if index % DISTRACTOR_EVERY == DISTRACTOR_EVERY - 1:
        # Round-robin over the words so even a small catalog has every kind of distractor.
        word_brand = CONFOUNDER_BRANDS[(index // DISTRACTOR_EVERY + seed) % len(CONFOUNDER_BRANDS)]
        word = BRAND_BY_NAME[word_brand].word
        leaf = LEAF_BY_NAME[rng.choice(PRINT_LEAVES)]
        brand = rng.choice([b for b in BRANDS if leaf.name in b.leaves and b.name != word_brand])
    else:
        brand = rng.choice(BRANDS)
        leaf = LEAF_BY_NAME[rng.choice(brand.leaves)]
    genders = leaf.genders
    spec = ProductSpec(
        id=product_id(index),
        leaf=leaf.name,
        brand=brand.name,
        colour=rng.choice(list(COLOURS)),
        pattern=rng.choices(leaf.patterns, [PATTERN_WEIGHTS[PATTERNS.index(p)] for p in leaf.patterns])[0],
        material=rng.choice(leaf.materials),
        season=rng.choice(SEASONS),
        gender=rng.choices(genders, [GENDER_WEIGHTS[g] for g in genders])[0],
        print=word,
    )
    return replace(spec, title=compose_title(spec, rng), description=compose_description(spec, rng))


def compose_title(spec: ProductSpec, rng: random.Random) -> str:
    """Shop-style titles from a few templates, e.g. "Puma Men Black Striped Sneakers"."""
    leaf = spec.category
    gender = spec.gender if len(leaf.genders) > 1 else ""
    if spec.print:
        word = spec.print.capitalize()
        parts = rng.choice([
            [spec.brand, gender, spec.colour, word, "Print", leaf.noun],
            [spec.brand, spec.colour, word, "Graphic", leaf.noun],
            [spec.brand, gender, word, "Print", spec.material, leaf.noun],
        ])
    else:
        adjective = PATTERN_ADJECTIVES[spec.pattern] if len(leaf.patterns) > 1 else ""
        parts = rng.choice([
            [spec.brand, gender, spec.colour, adjective, leaf.noun],
            [spec.brand, gender, spec.colour, leaf.noun],
            [spec.brand, spec.colour, adjective, spec.material, leaf.noun],
        ])
    return " ".join(p for p in parts if p)


def compose_description(spec: ProductSpec, rng: random.Random) -> str:
    leaf = spec.category
    article = "A pair of" if leaf.pair else "A"
    sentences = [f"{article} {spec.material.lower()} {leaf.noun.lower()} in {spec.colour.lower()}"
                 f"{PATTERN_PHRASES[spec.pattern]}."]
    if spec.print:
        sentences.append(rng.choice(["Printed with a {w} on the front.", "Features a {w} graphic.",
                                     "A playful {w} print."]).format(w=spec.print))
    sentences.append(rng.choice(["From the {s} collection by {b}.", "{b} {s} range.",
                                 "Part of the {s} line from {b}."]).format(s=spec.season, b=spec.brand))
    return " ".join(sentences)

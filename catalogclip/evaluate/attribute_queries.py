"""The `attribute-queries` protocol: shopper-style queries made from a catalog's own labels.

For catalogs without judged queries. Each query family combines labels the products carry:

- ``category``: a category name (any level of the tree), e.g. "watches";
- ``brand+type``: brand + product type (the leaf category), e.g. "puma tshirts";
- ``colour+type``: e.g. "black tshirt", "tshirts in black";
- ``gender+colour+type``: e.g. "women's black tshirts", "black tshirts for women".

Phrasing follows seeded templates (several per family), lower-case, with the type in its plural or
singular form. A product is relevant when it carries every label of the query (case-insensitive);
its grade is the number of labels, so pooled over families a 3-label match weighs more than a
1-label one. Label combinations carried by fewer than `min_relevant` products are not asked. The
result is a `JudgedQueries` (saved and reused like any judged query set); each query's info holds
its family and labels, and reports show the families separately.
"""
from __future__ import annotations

import itertools
import random
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from catalogclip.catalog.schema import Product, category_nodes, split_values
from catalogclip.evaluate.qrels import JudgedQueries

ATTRIBUTE_QUERIES = "attribute-queries"
#: family -> (label roles, query templates); "{type}" / "{category}" come in plural or singular form,
#: "{possessive}" is the gender's possessive ("women's")
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "category": (("category",), ("{category}", "{category} online", "shop {category}")),
    "brand+type": (("brand", "type"), ("{brand} {type}", "{type} by {brand}", "{brand} {type} online")),
    "colour+type": (("colour", "type"), ("{colour} {type}", "{type} in {colour}", "{colour} colour {type}")),
    "gender+colour+type": (("gender", "colour", "type"),
                           ("{gender} {colour} {type}", "{colour} {type} for {gender}", "{possessive} {colour} {type}")),
}
#: role -> attribute names it goes by in catalogs (the first one a product has is used)
ROLE_ATTRIBUTES = {"brand": ("brand",), "colour": ("colour", "color", "baseColour", "base_colour"), "gender": ("gender",)}
#: nouns with no singular form worth asking for
_PLURAL_ONLY = {"jeans", "trousers", "shorts", "sunglasses", "leggings", "jeggings", "pants", "tights", "capris",
                "pyjamas", "boxers", "trunks", "glasses", "scissors", "clothing", "accessories", "cosmetics"}


@dataclass
class AttributeQueryOptions:
    seed: int = 0
    #: queries per family (fewer where the catalog has fewer label combinations)
    per_family: int = 50
    #: a label combination is asked only when at least this many products carry it
    min_relevant: int = 2
    families: Sequence[str] = tuple(FAMILIES)
    role_attributes: dict[str, Sequence[str]] = field(default_factory=lambda: dict(ROLE_ATTRIBUTES))


def product_labels(product: Product, role_attributes: dict[str, Sequence[str]]) -> dict[str, set[str]]:
    """The lower-cased labels of a product per role (a product has several category names)."""
    attributes = {k.lower(): v for k, v in product.attributes.items()}
    labels: dict[str, set[str]] = {"category": {node.rsplit(" > ", 1)[-1].lower() for node in category_nodes(product.category_path)}}
    if product.category_path:
        labels["type"] = {product.category_path[-1].lower()}
    for role, names in role_attributes.items():
        value = next((attributes[n.lower()] for n in names if attributes.get(n.lower())), None)
        if value is not None:  # a multi-value ("Men | Women") carries each of its values
            labels[role] = {v.lower() for v in split_values(value)}
    return labels


def attribute_queries(products: Iterable[Product], options: AttributeQueryOptions | None = None) -> JudgedQueries:
    """Queries of every family the catalog has labels for, with their relevant products."""
    options = options or AttributeQueryOptions()
    products = list(products)
    labels = [product_labels(p, options.role_attributes) for p in products]
    queries, qrels, info = {}, {}, {}
    for family in options.families:
        if family not in FAMILIES:
            raise ValueError(f"unknown query family '{family}' (known: {', '.join(FAMILIES)})")
        roles, templates = FAMILIES[family]
        rng = random.Random(zlib.crc32(f"{options.seed}|{family}".encode()))
        combos = _combinations(labels, roles, options.min_relevant)
        for combo, members in rng.sample(combos, min(options.per_family, len(combos))):
            text = _phrase(rng.choice(templates), dict(zip(roles, combo)), rng)
            if text in queries.values():
                continue  # the same words from another family or level: asked once
            qid = f"{family}-{len(info):04d}"
            queries[qid] = text
            qrels[qid] = {products[i].id: len(roles) for i in members}
            info[qid] = {"family": family, "labels": dict(zip(roles, combo))}
    return JudgedQueries(queries, qrels, info)


def _combinations(labels: list[dict[str, set[str]]], roles: tuple[str, ...], min_relevant: int) -> list[tuple[tuple[str, ...], list[int]]]:
    """Every label combination products carry for `roles`, with the products carrying it (sorted, so seeded draws repeat)."""
    members: dict[tuple[str, ...], list[int]] = {}
    for i, own in enumerate(labels):
        if all(own.get(role) for role in roles):
            for combo in itertools.product(*[sorted(own[role]) for role in roles]):
                members.setdefault(combo, []).append(i)
    return sorted((combo, rows) for combo, rows in members.items() if len(rows) >= min_relevant)


def _phrase(template: str, labels: dict[str, str], rng: random.Random) -> str:
    words = dict(labels)
    for role in ("type", "category"):
        if role in words:
            words[role] = rng.choice(number_forms(words[role]))
    if "gender" in words:
        words["possessive"] = possessive(words["gender"])
    return " ".join(template.format(**words).split())


def number_forms(name: str) -> tuple[str, ...]:
    """The plural and singular forms of a category name (its last word changes): "casual shoes" ->
    ("casual shoes", "casual shoe"); "watch" -> ("watches", "watch")."""
    head, _, last = name.rpartition(" ")
    if last in _PLURAL_ONLY or last.endswith("wear") or not last.isalpha():
        return (name,)
    if last.endswith("s") and not last.endswith("ss"):
        singular = last[:-3] + "y" if last.endswith("ies") else last[:-2] if last.endswith(("ches", "shes", "sses", "xes")) else last[:-1]
        plural = last
    else:
        singular = last
        plural = last[:-1] + "ies" if last.endswith("y") and last[-2:-1] not in "aeiou" else last + ("es" if last.endswith(("ch", "sh", "ss", "x")) else "s")
    prefix = f"{head} " if head else ""
    return (prefix + plural, prefix + singular)


def possessive(word: str) -> str:
    """"women" -> "women's", "boys" -> "boys'"; a word that names no people ("unisex") stays."""
    if word in ("unisex",):
        return word
    return word + ("'" if word.endswith("s") else "'s")

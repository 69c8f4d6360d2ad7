"""Entity vocabularies: attribute values (brand, colour, ...) as integer ids, one vocabulary per group.

Built on the train split only, so a test value never seen in training maps to ``<unk>``.
Id 0 is ``<none>`` (the product has no value for the group), id 1 is ``<unk>``, then the values
by descending frequency (ties by name). Lookups ignore case and surrounding spaces; a value is
shown in its most frequent spelling.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from catalogclip.catalog.schema import Catalog, Product
from catalogclip.io import atomic_write_json, read_json

NONE, UNK = "<none>", "<unk>"
NONE_ID, UNK_ID = 0, 1
SPECIALS = (NONE, UNK)


def entity_value(product: Product, group: str) -> str | None:
    """A product's value for an entity group: an attribute, or a level of its category path.

    ``category:N`` is level N of the path (0 = root), ``category:leaf`` its last node, so the
    category tree can feed entity encoders (EI-CLIP's articleType) without copying it into the
    attributes, where it would leak into attribute text.
    """
    if not group.startswith("category:"):
        return product.attributes.get(group)
    level, path = group.split(":", 1)[1], product.category_path
    if level == "leaf":
        return path[-1] if path else None
    if not level.isdigit():
        raise ValueError(f"entity group '{group}': use category:<level number> or category:leaf")
    return path[int(level)] if int(level) < len(path) else None


def normalise(value: str) -> str:
    """The lookup key of a value: case-insensitive, surrounding spaces ignored."""
    return value.strip().casefold()


@dataclass
class EntityVocab:
    """One attribute group's values; `values[i]` has id ``i + 2``."""

    group: str
    values: list[str]
    counts: list[int]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.counts):
            raise ValueError(f"vocabulary '{self.group}': {len(self.values)} values but {len(self.counts)} counts")
        self._ids = {normalise(v): i + len(SPECIALS) for i, v in enumerate(self.values)}
        if len(self._ids) != len(self.values):
            raise ValueError(f"vocabulary '{self.group}': values repeat (ignoring case)")

    @classmethod
    def build(cls, group: str, values: Iterable[str | None], min_count: int = 1) -> "EntityVocab":
        """Count `values` (None or blank: no value) and keep those seen at least `min_count` times."""
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        counts: Counter[str] = Counter()
        spellings: dict[str, Counter[str]] = {}
        for value in values:
            if value is None or not value.strip():
                continue
            key = normalise(value)
            counts[key] += 1
            spellings.setdefault(key, Counter())[value.strip()] += 1
        kept = sorted((key for key, n in counts.items() if n >= min_count), key=lambda k: (-counts[k], k))
        # Most frequent spelling, ties by name, so "Black" and "black" show one way.
        shown = [min(spellings[k].items(), key=lambda item: (-item[1], item[0]))[0] for k in kept]
        return cls(group, shown, [counts[k] for k in kept])

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.values)

    def id(self, value: str | None) -> int:
        if value is None or not value.strip():
            return NONE_ID
        return self._ids.get(normalise(value), UNK_ID)

    def decode(self, entity_id: int) -> str:
        if not 0 <= entity_id < len(self):
            raise ValueError(f"id {entity_id} is out of range for vocabulary '{self.group}' (size {len(self)})")
        return SPECIALS[entity_id] if entity_id < len(SPECIALS) else self.values[entity_id - len(SPECIALS)]

    def to_json(self) -> dict:
        return {"group": self.group, "values": list(self.values), "counts": list(self.counts)}

    @classmethod
    def from_json(cls, obj: Mapping) -> "EntityVocab":
        try:
            group, values, counts = obj["group"], obj["values"], obj["counts"]
        except (KeyError, TypeError):
            raise ValueError("a vocabulary needs fields 'group', 'values' and 'counts'") from None
        if not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
            raise ValueError(f"vocabulary '{group}': field 'values' must be a list of strings")
        if not (isinstance(counts, list) and all(isinstance(n, int) for n in counts)):
            raise ValueError(f"vocabulary '{group}': field 'counts' must be a list of integers")
        return cls(str(group), values, counts)


class EntityVocabs:
    """Vocabularies of several attribute groups, in a fixed group order."""

    def __init__(self, vocabs: Iterable[EntityVocab]) -> None:
        self._vocabs = {v.group: v for v in vocabs}

    @property
    def groups(self) -> list[str]:
        return list(self._vocabs)

    def __getitem__(self, group: str) -> EntityVocab:
        try:
            return self._vocabs[group]
        except KeyError:
            raise KeyError(f"no vocabulary for attribute group '{group}' (groups: {', '.join(self.groups)})") from None

    def __len__(self) -> int:
        return len(self._vocabs)

    def sizes(self) -> list[int]:
        """Vocabulary sizes (specials included), in group order: the embedding table sizes."""
        return [len(v) for v in self._vocabs.values()]

    def values(self, group: str) -> list[str]:
        """The known values of a group, most frequent first (no specials)."""
        return list(self[group].values)

    def encode_values(self, values: Mapping[str, str]) -> list[int]:
        """One id per group, in group order; a group missing from `values` is ``<none>``."""
        return [vocab.id(values.get(group)) for group, vocab in self._vocabs.items()]

    def encode(self, product: Product) -> list[int]:
        return [vocab.id(entity_value(product, group)) for group, vocab in self._vocabs.items()]

    def decode(self, group: str, entity_id: int) -> str:
        return self[group].decode(entity_id)

    def to_json(self) -> dict:
        return {"groups": [v.to_json() for v in self._vocabs.values()]}

    @classmethod
    def from_json(cls, obj: Mapping) -> "EntityVocabs":
        groups = obj.get("groups") if isinstance(obj, Mapping) else None
        if not isinstance(groups, list):
            raise ValueError("entity vocabularies need a field 'groups' (a list)")
        return cls(EntityVocab.from_json(g) for g in groups)

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "EntityVocabs":
        path = Path(path)
        obj = read_json(path)
        try:
            return cls.from_json(obj)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EntityVocabs) and self.to_json() == other.to_json()


def build_vocabs(catalog: Catalog, groups: list[str], min_count: int = 1) -> EntityVocabs:
    """One vocabulary per attribute group, in the given order; build it on the train split only."""
    if len(set(groups)) != len(groups):
        raise ValueError(f"attribute groups repeat: {groups}")
    present = set(catalog.attribute_groups())
    unknown = [g for g in groups if g not in present and not g.startswith("category:")]
    if unknown:
        raise ValueError(f"attribute group '{unknown[0]}' is not in the catalog "
                         f"(groups: {', '.join(sorted(present)) or 'none'})")
    return EntityVocabs(
        EntityVocab.build(group, (entity_value(p, group) for p in catalog), min_count) for group in groups
    )

"""Attribute normalisation at import: one name per attribute group, one spelling per value.

Shops' exports spell the same thing many ways: `Color` beside `colour`, a `brand` column beside a
`Brand` specification, "NO" beside "No", "Men, Women" beside "Men and Women". Left alone, every
spelling is its own entity group or value (its own row in the entity vocabularies, its own facet).
`normalise_catalog` rewrites the products' attributes in place:

1. keys: folded (case, spaces, `_` and `-`), then mapped through the synonyms (`KEY_SYNONYMS` plus a
   shop's alias file); keys that fold together are one group, named by the synonym's canonical
   name or else the most frequent spelling. Two keys of one product that merge keep both values.
2. values: spaces trimmed and collapsed, a shop's value aliases applied, a value that lists values
   the group also has alone ("Men, Women", "Men and Women", "Men & Women") split into a multi-value
   ("Men | Women", see `schema.MULTI_SEP`), "Black and White" stays whole unless "Black" and "White"
   are both values of the group on their own;
3. spellings that differ only by case are merged into the most frequent one (ties: one that is
   not all capitals, then the first by name: "Alisha" over "ALISHA").
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from catalogclip.catalog.schema import Product, join_values, split_values

KEY_SYNONYMS = {
    "color": "colour",
    "colour": "colour",
    "brand": "brand",
    "brand name": "brand",
    "vendor": "brand",
    "manufacturer": "brand",
    "fabric": "material",
    "material": "material",
    "ideal for": "gender",
    "gender": "gender",
}
"""Folded key -> canonical group name; an alias file adds to it (and wins)."""

_LIST_SEPARATORS = re.compile(r"\s*[,;]\s*|\s+(?:and|&)\s+", re.IGNORECASE)
_KEY_SPACES = re.compile(r"[\s_\-]+")
EXAMPLES = 3  # examples per kind of change in the summary


def fold_key(key: str) -> str:
    return _KEY_SPACES.sub(" ", key).strip().casefold()


def fold_value(value: str) -> str:
    return value.casefold()


def clean_value(value: str) -> str:
    return " ".join(value.split())


@dataclass(frozen=True)
class Aliases:
    """A shop's own synonyms: folded key -> group name, and per group folded value -> value."""

    keys: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping, where: str = "aliases") -> "Aliases":
        """From `{keys: {Spelling: group}, values: {group: {Spelling: Value}}}`; ValueError names the bad part."""
        unknown = sorted(set(raw) - {"keys", "values"})
        if unknown:
            raise ValueError(f"{where}: unknown section '{unknown[0]}' (expected keys, values)")
        keys, values = raw.get("keys") or {}, raw.get("values") or {}
        if not isinstance(keys, Mapping) or not all(isinstance(v, str) for v in keys.values()):
            raise ValueError(f"{where}: 'keys' must map spellings to a group name, e.g. {{Fabric: material}}")
        if not isinstance(values, Mapping) or not all(isinstance(v, Mapping) for v in values.values()):
            raise ValueError(f"{where}: 'values' must map a group to {{spelling: value}}, e.g. {{colour: {{Blk: Black}}}}")
        return cls(
            {fold_key(str(k)): v.strip() for k, v in keys.items()},
            {fold_key(str(g)): {fold_value(clean_value(str(k))): str(v) for k, v in m.items()} for g, m in values.items()},
        )


def load_aliases(path: str | Path) -> Aliases:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: an alias file is a YAML mapping with 'keys' and/or 'values'")
    return Aliases.from_dict(raw, str(path))


@dataclass
class NormaliseReport:
    """What normalisation changed, for the import summary."""

    merged_keys: dict[str, Counter] = field(default_factory=dict)  # group -> spellings merged into it (products)
    case_merged: dict[str, dict[str, str]] = field(default_factory=dict)  # group -> {spelling: kept spelling}
    split: Counter = field(default_factory=Counter)  # group -> values split into multi-values
    split_examples: list[str] = field(default_factory=list)
    aliased: Counter = field(default_factory=Counter)  # group -> values an alias replaced

    def lines(self) -> list[str]:
        renamed = {g: c for g, c in self.merged_keys.items() if set(c) != {g}}
        out = []
        if renamed:
            out.append("attribute groups merged: " + "; ".join(
                f"{group} <- " + ", ".join(f"{k} ({n})" for k, n in sorted(spellings.items()))
                for group, spellings in sorted(renamed.items())
            ))
        if self.case_merged:
            n = sum(len(m) for m in self.case_merged.values())
            examples = [f"{g}: {s} -> {kept}" for g, m in sorted(self.case_merged.items()) for s, kept in m.items()]
            out.append(f"value spellings merged: {n} in {len(self.case_merged)} groups (e.g. {'; '.join(examples[:EXAMPLES])})")
        if self.split:
            out.append(f"multi-values split: {sum(self.split.values())} values (e.g. {'; '.join(self.split_examples)})")
        if self.aliased:
            out.append("alias file: " + ", ".join(f"{g} {n} values" for g, n in sorted(self.aliased.items())))
        return out or ["attributes normalised: nothing to merge"]


def _group_names(products: Iterable[Product], aliases: Aliases) -> tuple[dict[str, str], dict[str, Counter]]:
    """Raw key -> group name, and per group the raw spellings merged into it with product counts."""
    spellings: dict[str, Counter] = defaultdict(Counter)
    for product in products:
        for key in product.attributes:
            folded = fold_key(key)
            spellings[aliases.keys.get(folded) or KEY_SYNONYMS.get(folded) or folded][key] += 1
    name_of, merged = {}, {}
    for target, counts in spellings.items():
        canonical = target in aliases.keys.values() or target in KEY_SYNONYMS.values()
        group = target if canonical else min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merged[group] = counts
        name_of.update(dict.fromkeys(counts, group))
    return name_of, merged


def _split_list(value: str, singles: set[str]) -> list[str]:
    """`value` as the values it lists, when every part is a value the group has on its own."""
    parts = [p for p in _LIST_SEPARATORS.split(value) if p]
    return parts if len(parts) > 1 and all(fold_value(p) in singles for p in parts) else [value]


def _most_frequent(spellings: Counter) -> str:
    return min(spellings.items(), key=lambda kv: (-kv[1], kv[0].isupper(), kv[0]))[0]


def normalise_catalog(products: list[Product], aliases: Aliases | None = None) -> NormaliseReport:
    """Normalise the products' attributes in place (see the module doc) and say what changed.

    The work is done once per distinct (group, value) pair, weighted by how often it occurs, so a
    large catalog with few distinct values costs little more than a pass over its attributes."""
    aliases = aliases or Aliases()
    report = NormaliseReport()
    name_of, report.merged_keys = _group_names(products, aliases)
    pairs = [[(name_of[key], value) for key, value in p.attributes.items()] for p in products]
    uses = Counter(pair for product_pairs in pairs for pair in product_pairs)

    parts: dict[tuple[str, str], list[str]] = {}
    for (group, value), n in uses.items():
        alias = aliases.values.get(fold_key(group), {})
        cleaned = [clean_value(v) for v in split_values(value)]
        aliased = [alias.get(fold_value(v), v) for v in cleaned]
        report.aliased[group] += n * sum(a != v for a, v in zip(aliased, cleaned))
        parts[group, value] = [part for v in aliased for part in split_values(v)]
    report.aliased = +report.aliased

    singles: dict[str, set[str]] = defaultdict(set)  # values a group has alone, folded
    for (group, _), values in parts.items():
        singles[group].update(fold_value(v) for v in values if not _LIST_SEPARATORS.search(v))
    spellings: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for (group, value), values in parts.items():
        listed = []
        for v in values:
            split = _split_list(v, singles[group])
            if len(split) > 1:
                report.split[group] += uses[group, value]
                if len(report.split_examples) < EXAMPLES:
                    report.split_examples.append(f'{group}: "{v}" -> {join_values(split)}')
            listed += split
        parts[group, value] = listed
        for v in listed:
            spellings[group][fold_value(v)][v] += uses[group, value]

    kept = {group: {f: _most_frequent(c) for f, c in by_value.items()} for group, by_value in spellings.items()}
    for group, by_value in spellings.items():
        changed = {s: kept[group][f] for f, c in by_value.items() for s in c if s != kept[group][f]}
        if changed:
            report.case_merged[group] = changed
    final = {(group, value): [kept[group][fold_value(v)] for v in values] for (group, value), values in parts.items()}
    for product, product_pairs in zip(products, pairs):
        merged: dict[str, list[str]] = {}
        for pair in product_pairs:
            merged.setdefault(pair[0], []).extend(final[pair])
        product.attributes = {
            group: values[0] if len(values) == 1 else join_values(values) for group, values in merged.items() if values
        }
    return report

"""Query understanding: attribute filters and entity recognition in free text.

Filters are plain data, the same from the CLI, the API and the web page::

    {"brand": "Puma",                      # equality (case-insensitive)
     "colour": ["Black", "Red"],           # any of these values
     "price": {"min": 10, "max": 50},      # numeric range, either bound optional
     "category": "Footwear > Shoes"}       # the category subtree (a path, or a list of paths; case-insensitive)

Entity recognition finds known entity values in a query ("black puma running shoes" ->
brand=Puma, colour=Black) by dictionary lookup over word n-grams, longest match first, on
words normalised as shoppers type them (catalogclip/search/text.py: case, plurals, possessives,
"t shirt" / "t-shirt" / "tshirt"); EI-CLIP runs feed what it finds to their entity encoders, and
the search engine boosts (or, strictly, filters to) the products that carry it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from catalogclip.search.text import key, tokens

#: the filter field that selects a category subtree (not an attribute)
CATEGORY_FIELD = "category"
CATEGORY_SEP = " > "


class QueryError(ValueError):
    """A query or filter the user got wrong; the message says what and where."""


#: bounds on one query's filters (a clause costs an SQL query; a value, an SQL variable)
MAX_FILTER_FIELDS = 32
MAX_FILTER_VALUES = 1000
#: lone surrogates cannot be encoded as UTF-8 (for SQLite, tokenizers, JSON); NULs cut C strings
_UNUSABLE = re.compile("[\ud800-\udfff\x00]")


def check_clean(text: str, what: str) -> str:
    """`text`, refused with a QueryError if it holds a lone surrogate or a NUL character."""
    bad = _UNUSABLE.search(text)
    if bad is not None:
        kind = "a NUL character" if bad.group() == "\x00" else "a lone surrogate (not valid Unicode)"
        raise QueryError(f"the {what} contains {kind} at character {bad.start()}")
    return text


#: the integers a filter may hold: JSON clients, and orjson echoing the filters back, handle no wider ones
_INT64 = range(-(2**63), 2**63)


def _check_int64(value, where: str) -> None:
    """Refuse an integer wider than 64 bits (such a value can still be given as a string)."""
    if isinstance(value, int) and value not in _INT64:
        raise QueryError(f"filter '{where}' has an integer beyond 64 bits; write it as a string")


def _describe(value) -> str:
    """A short, printable account of a bad value (never the repr of a huge or deep structure)."""
    return repr(value)[:40] if isinstance(value, (str, int, float, bool)) or value is None else f"a {type(value).__name__}"


# --- filters ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filter:
    """One clause; clauses of a query are ANDed. Exactly one of `values` / range is used."""

    field: str
    values: tuple[str, ...] = ()  # equality / set membership, as given (matched case-insensitively)
    low: float | None = None
    high: float | None = None

    @property
    def is_range(self) -> bool:
        return not self.values


def normalise_category(path: str | Iterable[str]) -> str:
    """"Footwear>Shoes", " Footwear > Shoes " and ["Footwear", "Shoes"] all become "Footwear > Shoes"."""
    parts = path.split(">") if isinstance(path, str) else list(path)
    return CATEGORY_SEP.join(p.strip() for p in parts if str(p).strip())


def _number(value, where: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise QueryError(f"filter '{where}' must be a number, got {_describe(value)}")
    _check_int64(value, where)
    try:
        number = float(value)
    except ValueError:
        raise QueryError(f"filter '{where}' must be a number, got {_describe(value)}") from None
    if not math.isfinite(number):
        raise QueryError(f"filter '{where}' must be a finite number, got {_describe(value)}")
    return number


def _values(field: str, raw) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise QueryError(f"filter '{field}' has an empty list of values")
    values = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)) or item in (math.inf, -math.inf) or item != item:
            raise QueryError(f"filter '{field}' values must be strings, got {_describe(item)}")
        _check_int64(item, field)
        text = check_clean(str(item), f"filter '{field}' value")
        text = normalise_category(text) if field == CATEGORY_FIELD else text.strip()
        if not text:
            raise QueryError(f"filter '{field}' has an empty value")
        values.append(text)
    return tuple(values)


def filter_mapping(raw) -> dict:
    """`raw` as a filter mapping ({} for None), refused unless it is an object of at most
    MAX_FILTER_FIELDS fields holding at most MAX_FILTER_VALUES values in all."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise QueryError(f"filters must be an object of field -> value(s), got {_describe(raw)}")
    if len(raw) > MAX_FILTER_FIELDS:
        raise QueryError(f"filters have {len(raw)} fields; at most {MAX_FILTER_FIELDS} are allowed")
    n_values = sum(len(spec) if isinstance(spec, (list, Mapping)) else 1 for spec in raw.values())
    if n_values > MAX_FILTER_VALUES:
        raise QueryError(f"filters have {n_values} values; at most {MAX_FILTER_VALUES} are allowed")
    return dict(raw)


def parse_filters(raw: Mapping | None, known_fields: Iterable[str]) -> list[Filter]:
    """Validate a filter mapping against the fields an index knows; raises QueryError."""
    raw = filter_mapping(raw)
    known = set(known_fields) | {CATEGORY_FIELD}
    filters = []
    for field, spec in raw.items():
        check_clean(str(field), "filter field name")
        if field not in known:
            raise QueryError(f"unknown filter field '{field}' (known: {', '.join(sorted(known))})")
        if isinstance(spec, Mapping):
            extra = set(spec) - {"min", "max"}
            if extra or field == CATEGORY_FIELD:
                raise QueryError(f"filter '{field}': a range is {{\"min\": number, \"max\": number}}")
            low, high = _number(spec.get("min"), f"{field}.min"), _number(spec.get("max"), f"{field}.max")
            if low is None and high is None:
                raise QueryError(f"filter '{field}': a range needs 'min' or 'max'")
            if low is not None and high is not None and low > high:
                raise QueryError(f"filter '{field}': min {low:g} is greater than max {high:g}")
            filters.append(Filter(field, low=low, high=high))
        else:
            filters.append(Filter(field, values=_values(field, spec)))
    return filters


def parse_filter_args(args: Iterable[str]) -> dict:
    """Command-line filters -> a filter mapping: ``brand=Puma``, ``colour=Black,Red``,
    ``price=10..50`` (either bound may be left out: ``price=..50``), ``category=Footwear > Shoes``."""
    out: dict = {}
    for arg in args:
        field, sep, value = arg.partition("=")
        field, value = field.strip(), value.strip()
        if not sep or not field or not value:
            raise QueryError(f"filter '{arg}' is not FIELD=VALUE")
        if field in out:
            raise QueryError(f"filter field '{field}' is given twice")
        if ".." in value:
            low, _, high = value.partition("..")
            out[field] = {"min": low.strip() or None, "max": high.strip() or None}
        elif field == CATEGORY_FIELD:
            out[field] = value
        else:
            out[field] = [v.strip() for v in value.split(",")]
    return out


# --- entity recognition -----------------------------------------------------------------------
@dataclass(frozen=True)
class EntityMatch:
    group: str
    value: str  # the vocabulary's own spelling
    text: str  # what the query said
    start: int  # character offsets in the query
    end: int

    def to_json(self) -> dict:
        return {"group": self.group, "value": self.value, "text": self.text, "start": self.start, "end": self.end}


class EntityLinker:
    """Longest-match dictionary lookup of entity values in free text.

    `vocabs` maps an entity group to its known values, e.g. ``{"brand": ["Puma", "Golden Goose"]}``.
    A phrase listed in several groups is recognised in each of them; a group keeps its first match.
    Lookup costs O(words x longest phrase) dictionary probes, independent of the vocabulary size.
    """

    def __init__(self, vocabs: Mapping[str, Iterable[str]]) -> None:
        self._phrases: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        for group, values in vocabs.items():
            for value in values:
                phrase = key(str(value))
                if phrase and (group, str(value)) not in self._phrases.get(phrase, []):
                    self._phrases.setdefault(phrase, []).append((group, str(value)))
        self._longest = max((len(k) for k in self._phrases), default=0)

    def __len__(self) -> int:
        return len(self._phrases)

    def find(self, text: str) -> list[EntityMatch]:
        words = tokens(text)
        normalised = [w.text for w in words]
        matches: list[EntityMatch] = []
        i = 0
        while i < len(normalised):
            for n in range(min(self._longest, len(normalised) - i), 0, -1):
                hits = self._phrases.get(tuple(normalised[i : i + n]))
                if hits:
                    start, end = words[i].start, words[i + n - 1].end
                    matches += [EntityMatch(g, v, text[start:end], start, end) for g, v in hits]
                    i += n
                    break
            else:
                i += 1
        return matches

    def entities(self, text: str) -> tuple[dict[str, str], list[EntityMatch]]:
        """{group: value} (first match of each group) plus every match found."""
        matches = self.find(text)
        entities: dict[str, str] = {}
        for match in matches:
            entities.setdefault(match.group, match.value)
        return entities, matches


def vocab_values(vocabs) -> dict[str, list[str]]:
    """{group: [values]} from a plain mapping or from an object with `groups` and `values(group)`
    (catalogclip.catalog.vocab.EntityVocabs), without relying on anything else it holds."""
    if isinstance(vocabs, Mapping):
        return {str(g): [str(v) for v in vals] for g, vals in vocabs.items()}
    groups = vocabs.groups() if callable(vocabs.groups) else vocabs.groups
    return {str(g): [str(v) for v in vocabs.values(g)] for g in groups}

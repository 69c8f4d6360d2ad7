"""Shopper queries with typos on Myntra: query spelling on and off, in every search mode.

    python benchmarks/typo_myntra.py [--work /work/cache/myntra/subset10880] [--cache DIR]

The catalog, feature cache, `clip` run, test index and attribute-queries are benchmarks/shopper_myntra.py's
(same split, seed and query halves; the run is trained there if missing). Each test query gets one
typo, seeded, in one of its words of 5 or more letters that is not a shopping word ("online"):
a letter left out, doubled, swapped with its neighbour, or replaced by a key next to it on a QWERTY
keyboard (never the first letter: shoppers rarely get that wrong). The relevant products stay those of
the query as intended. The fusion is tuned on the clean validation half, as the index is deployed.
Reported: nDCG@10 and P@1 per family for lexical / vector / hybrid, clean and typo'd queries, with
spelling on (the default) and off (`spell=False`), and what the speller did with each typo
(restored the intended word, changed it to another, or left it: some typos share their stem with
a catalog word, "casuall", and BM25 matches them as typed) and with the clean queries
(corrections there are false ones). It also times what is done while a shopper types: the
speller, and search-as-you-type suggestions for every prefix of the same queries (`SearchEngine.suggest`),
on this index and over an 82,765-word vocabulary. Results: benchmarks/results/typo_myntra.json.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
import zlib
from unittest.mock import patch
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from clipita_myntra import MYNTRA, load_catalog, machine, prepare, readable  # noqa: E402
from shopper_myntra import LEXICAL, MODES, REPORTED, split_queries, test_index, train_runs  # noqa: E402

from catalogclip.catalog.schema import Catalog, write_jsonl  # noqa: E402
from catalogclip.evaluate.attribute_queries import ATTRIBUTE_QUERIES, AttributeQueryOptions, attribute_queries  # noqa: E402
from catalogclip.evaluate.judged import evaluate_judged  # noqa: E402
from catalogclip.evaluate.qrels import JudgedQueries  # noqa: E402
from catalogclip.io import atomic_write_json  # noqa: E402
from catalogclip.search.engine import SearchEngine  # noqa: E402
from catalogclip.search.lexical import SHOPPING_WORDS, STOPWORDS  # noqa: E402
from catalogclip.search.spelling import Speller, english_frequencies  # noqa: E402
from catalogclip.search.suggest import Suggester  # noqa: E402
from catalogclip.search.text import fold, key, stem  # noqa: E402
from catalogclip.search.tune import save_fusion, tune_fusion  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "typo_myntra.json"
KINDS = ("left out", "doubled", "swapped", "next key")
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
#: letter -> the letters next to it on a QWERTY keyboard (same row, and the rows above and below)
NEIGHBOURS = {
    c: "".join(r[j] for dr in (-1, 0, 1) if 0 <= i + dr < 3 for r in [_ROWS[i + dr]] for j in (k - 1, k, k + 1)
               if 0 <= j < len(r) and r[j] != c)
    for i, row in enumerate(_ROWS) for k, c in enumerate(row)
}
MIN_TYPO_LETTERS = 5


def typo(word: str, rng: random.Random) -> tuple[str, str]:
    """(`word` with one typo, its kind); never at the first letter."""
    kind = rng.choice(KINDS)
    i = rng.randrange(1, len(word) - (kind == "swapped"))
    if kind == "left out":
        return word[:i] + word[i + 1 :], kind
    if kind == "doubled":
        return word[:i] + word[i] + word[i:], kind
    if kind == "swapped" and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :], kind
    if word[i] in NEIGHBOURS:
        return word[:i] + rng.choice(NEIGHBOURS[word[i]]) + word[i + 1 :], "next key"
    return word[:i] + word[i + 1 :], "left out"  # a letter with no key neighbours (an accent): leave it out


def with_typos(judged: JudgedQueries, seed: int) -> tuple[JudgedQueries, dict[str, dict]]:
    """The same queries, each with one typo in a word of MIN_TYPO_LETTERS or more (queries without one are dropped)."""
    shopping = set(SHOPPING_WORDS.split())
    texts, typos = {}, {}
    for qid in judged.ids:
        words = judged.queries[qid].split(" ")
        eligible = [i for i, w in enumerate(words) if len(w) >= MIN_TYPO_LETTERS and w.isalpha() and w not in shopping]
        if not eligible:
            continue
        rng = random.Random(zlib.crc32(f"{seed}|{qid}".encode()))
        at = rng.choice(eligible)
        typed, kind = typo(words[at], rng)
        texts[qid] = " ".join(words[:at] + [typed] + words[at + 1 :])
        typos[qid] = {"intended": words[at], "typed": typed, "kind": kind}
    subset = judged.subset(list(texts))
    subset.queries.update(texts)
    return subset, typos


def speller_outcomes(engine: SearchEngine, judged: JudgedQueries, typos: dict[str, dict] | None) -> dict:
    """What the speller made of each query: for typo'd ones, whether the intended word came back
    (as written or in another form of it: "deodorant" for "deodorants")."""
    counts: dict[str, int] = {}
    examples: dict[str, list] = {}
    for qid in judged.ids:
        spelled = engine.speller.correct(judged.queries[qid])
        if typos is None:
            outcome = "changed (a false correction)" if spelled.corrections else "left as typed"
        else:
            outcome = typo_outcome(engine, typos[qid], spelled)
        counts[outcome] = counts.get(outcome, 0) + 1
        if len(examples.setdefault(outcome, [])) < 8:
            examples[outcome].append({"query": judged.queries[qid], "searched": spelled.text})
    return {"queries": len(judged.ids), "counts": counts, "examples": examples}


def typo_outcome(engine: SearchEngine, typo_: dict, spelled) -> str:
    fixed = [c for c in spelled.corrections if fold(c.typed) == typo_["typed"]]
    if fixed:
        return "intended word restored" if key(fixed[0].to) == key(typo_["intended"]) else "changed to another word"
    if key(typo_["typed"])[0] in engine.index.lexical.retriever.vocab_dict:
        return "left: matches as typed (its stem is a catalog word's)"
    return "left as typed"


def timed_ms(call, items) -> list[float]:
    """Milliseconds of `call(item)` for each item."""
    times = []
    for item in items:
        started = time.perf_counter()
        call(item)
        times.append(1000 * (time.perf_counter() - started))
    return times


def percentiles(what: str, times: list[float], digits: int = 2) -> dict[str, float]:
    return {f"{what} ms {q}": round(float(np.percentile(times, p)), digits) for q, p in (("p50", 50), ("p99", 99))}


def speller_cost(engine: SearchEngine, sets: dict[str, JudgedQueries]) -> dict:
    """Milliseconds to build the speller (once per engine, at its first text search) and to correct a query, beside
    a whole hybrid search of it (spelling included), side by side on the same queries. The engine's
    speller has corrected these queries in the evaluation already: its unknown words are remembered
    (`large_vocabulary_cost` times a first ask and a second)."""
    lexical = engine.index.lexical
    started = time.perf_counter()
    Speller(lexical.words, lexical.retriever.vocab_dict)
    out: dict = {"build_ms": round(1000 * (time.perf_counter() - started), 1)}
    for name, queries in sets.items():
        texts = list(queries.queries.values())
        correct, search = [], []
        for text in texts:  # side by side, query by query
            correct += timed_ms(engine.speller.correct, [text])
            search += timed_ms(lambda t: engine.search_text(t, 10), [text])
        out[name] = {**percentiles("correct", correct), **percentiles("hybrid search", search)}
    return out


def large_vocabulary_cost(queries: JudgedQueries) -> dict:
    """The same costs for a speller over a far larger vocabulary than Myntra's titles and labels
    give: the 82,765 words of symspellpy's English list stand in for a catalog with long
    descriptions (nothing is then protected as English: every unknown query word is looked up)."""
    words = {w: c for w, c in english_frequencies().items() if w.isalpha()}
    started = time.perf_counter()
    speller = Speller(words, {stem(w) for w in words})
    build = 1000 * (time.perf_counter() - started)
    out = {"words": len(words), "build_ms": round(build, 1)}
    with patch("catalogclip.search.spelling.english_words", lambda: frozenset()):
        # the second pass asks the same queries again: a shop's repeated queries, their words remembered
        for asked in ("first time", "asked again"):
            out[asked] = percentiles("correct", timed_ms(speller.correct, queries.queries.values()))
    return out


def suggest_cost(engine: SearchEngine, queries: JudgedQueries) -> dict:
    """Milliseconds to build the suggester (once per engine, at its first suggestion) and to suggest
    for every prefix of every query, on this index's values and words and over an 82,765-word list."""
    prefixes = [text[:n] for text in queries.queries.values() for n in range(1, len(text) + 1) if not text[:n].endswith(" ")]
    out = {"prefixes": len(prefixes)}
    large = {w: c for w, c in english_frequencies().items() if w not in STOPWORDS}
    for name, make in {"this index": lambda: Suggester.of_index(engine.index),
                       "82,765 words": lambda: Suggester(engine.index.vocabulary(), large)}.items():
        started = time.perf_counter()
        suggester = make()
        build = 1000 * (time.perf_counter() - started)
        times = timed_ms(lambda prefix: suggester.suggest(prefix, 8), prefixes)
        out[name] = {"values and words": len(suggester), "build_ms": round(build, 1), **percentiles("suggest", times, 3)}
    return out


def table(engine: SearchEngine, judged: JudgedQueries, spell: bool) -> dict:
    """mode -> family -> nDCG@10 / P@1 (fractions)."""
    def search(text, k, mode):
        return [hit.product.id for hit in engine.search_text(text, k, mode=mode, spell=spell).hits]

    result, _ = evaluate_judged(search, judged, list(MODES), engine.index.store.product_ids(), ATTRIBUTE_QUERIES)
    return {mode: {group: {m: round(values[m], 4) for m in REPORTED} for group, values in task["metrics"].items()}
            for mode, task in result["tasks"].items()}


def print_tables(tables: dict) -> None:
    for queries, by_spell in tables.items():
        for spell, modes in by_spell.items():
            print(f"\n{queries} queries, spelling {spell}: nDCG@10 / P@1")
            for group in modes["hybrid"]:
                print(f"  {group:<20} " + "  ".join(f"{m} {100 * modes[m][group]['nDCG@10']:5.1f}/{100 * modes[m][group]['P@1']:5.1f}" for m in MODES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--myntra", type=Path, default=MYNTRA)
    parser.add_argument("--work", type=Path, default=Path("/work/cache/myntra/subset10880"))
    parser.add_argument("--cache", type=Path, default=Path("/work/cache/myntra/featcache"))
    parser.add_argument("--max-products", type=int, default=10880)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-family", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--typo-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    catalog = readable(load_catalog(args.myntra, args.work))
    catalog = Catalog(catalog.products[: args.max_products], catalog.root, catalog.image_roots)
    catalog_path = write_jsonl(catalog, args.work / "catalog.readable.jsonl")
    print(f"feature cache: {prepare(catalog, args.cache)}", flush=True)
    run_dir = train_runs(catalog_path, catalog.image_roots[0], args.work, args.cache, args.epochs, names=("clip",))["clip"]
    engine = test_index(run_dir, catalog, args.cache, args.work / "indexes" / "typo-clip", LEXICAL["all fields"])
    judged = attribute_queries(engine.index.store.iter_products(), AttributeQueryOptions(seed=args.seed, per_family=2 * args.per_family))
    validation, test = split_queries(judged)
    tuning = tune_fusion(engine, validation)
    save_fusion(engine, tuning.best)
    typoed, typos = with_typos(test, args.typo_seed)
    sets = {"clean": (test, None), "typo'd": (typoed, typos)}
    tables = {name: {("on" if spell else "off"): table(engine, queries, spell) for spell in (True, False)} for name, (queries, _) in sets.items()}
    print_tables(tables)
    speller = {name: speller_outcomes(engine, queries, typo_info) for name, (queries, typo_info) in sets.items()}
    print("\nspeller:", {name: s["counts"] for name, s in speller.items()})
    cost = speller_cost(engine, {name: queries for name, (queries, _) in sets.items()})
    cost["82,765 words, typo'd queries"] = large_vocabulary_cost(typoed)
    print("cost:", cost)
    suggestions = suggest_cost(engine, test)
    print("suggestions:", suggestions)
    atomic_write_json(args.out, {
        "benchmark": "typo_myntra",
        "command": "python benchmarks/typo_myntra.py " + " ".join(sys.argv[1:]),
        "settings": {
            "catalog": f"fashion-myntra via the myntra reader ({len(catalog)} products)", "split": "by product, 20% test, seed 0",
            "run": f"clip (twotower, both towers frozen, {args.epochs} epochs), as in benchmarks/shopper_myntra.py",
            "index": f"the run's {len(engine.index)} test products; BM25 over all text fields (default weights)",
            "queries": f"attribute-queries (seed {args.seed}), the test half of benchmarks/shopper_myntra.py's split; "
                       f"typo'd: each with one typo (seed {args.typo_seed}) in one word of >= {MIN_TYPO_LETTERS} letters "
                       f"that is not a shopping word, never the first letter; kinds: {', '.join(KINDS)} (QWERTY neighbours)",
            "fusion": {"tuned on": "the clean validation half", **{k: v for k, v in engine.fusion.to_json().items() if k != "tuned"}},
            "spelling": "on: the default (catalogclip/search/spelling.py); off: spell=False, the text as typed",
            "metrics": "nDCG@10 and P@1, fractions; relevant products are those of the query as intended",
            "speller_vocabulary": len(engine.speller),
        },
        "typo_kinds": {kind: sum(t["kind"] == kind for t in typos.values()) for kind in KINDS},
        "tables": tables,
        "speller": speller,
        "speller_cost": cost,
        "suggest_cost": suggestions,
        "machine": {**machine(), "load_average": os.getloadavg()},
        "total_seconds": round(time.perf_counter() - started, 1),
    })
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()

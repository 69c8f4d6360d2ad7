"""Judged query sets: every file format and its bad lines, metrics of a ranked list against
hand-computed values and ranx, attribute-queries, and an index evaluated end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Catalog
from catalogclip.evaluate.attribute_queries import AttributeQueryOptions, attribute_queries, number_forms, possessive
from catalogclip.evaluate.judged import engine_search, evaluate_index, evaluate_judged, judged_ranks, mode_list
from catalogclip.search.tune import tune_fusion
from catalogclip.evaluate.qrels import JudgedQueries, read_judged
from catalogclip.search.build import BuildOptions, build_index
from catalogclip.search.engine import SearchEngine
from tests._searchkit import PaletteEncoder, product, standard_products, write_images

QUERIES = {"q1": "red shoes", "q2": "blue jeans"}
GRADES = {"q1": {"p00": 2, "p06": 1, "p01": 0}, "q2": {"p02": 1}}


def _same(judged: JudgedQueries) -> None:
    assert sorted(judged.queries.values()) == sorted(QUERIES.values())
    by_text = {judged.queries[q]: judged.qrels[q] for q in judged.ids}
    assert by_text == {QUERIES[q]: GRADES[q] for q in QUERIES}


def _trec_lines() -> str:
    return "".join(f"{q} 0 {p} {g}\n" for q, judged in GRADES.items() for p, g in judged.items())


def test_trec_qrels_with_tsv_or_jsonl_queries(tmp_path):
    (tmp_path / "j.qrels").write_text(_trec_lines())
    (tmp_path / "q.tsv").write_text("qid\ttext\n" + "".join(f"{q}\t{t}\n" for q, t in QUERIES.items()))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"_id": q, "text": t, "family": "f"}) + "\n" for q, t in QUERIES.items()))
    _same(read_judged(tmp_path / "q.tsv", tmp_path / "j.qrels"))
    from_jsonl = read_judged(tmp_path / "q.jsonl", tmp_path / "j.qrels")
    _same(from_jsonl)
    assert from_jsonl.family("q1") == "f"


def test_beir_folder_and_json_object(tmp_path):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t, "metadata": {}}) + "\n" for q, t in QUERIES.items()))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{p}\t{g}\n" for q, judged in GRADES.items() for p, g in judged.items()))
    _same(read_judged(None, beir))
    (tmp_path / "j.json").write_text(json.dumps({QUERIES[q]: GRADES[q] for q in QUERIES}, indent=2))
    _same(read_judged(None, tmp_path / "j.json"))


def test_saved_query_sets_read_back(tmp_path):
    judged = JudgedQueries(dict(QUERIES), GRADES, {"q1": {"family": "colour+type", "labels": {"colour": "red"}}})
    judged.save(tmp_path / "a.qrels", tmp_path / "a.queries.jsonl")
    again = read_judged(tmp_path / "a.queries.jsonl", tmp_path / "a.qrels")
    assert again.queries == judged.queries and again.qrels == judged.qrels and again.info == judged.info


def test_bad_lines_are_named_with_file_and_line(tmp_path):
    (tmp_path / "j.qrels").write_text("q1 0 p00 2\nq1 p06\nq1 0 p07 high\nq1 0 p00 1\nq9 0 p01 1\nq2 0 p02 1\n")
    (tmp_path / "q.tsv").write_text("q1\tred shoes\nno tab here\nq2\tblue jeans\nq3\tnothing judged\n")
    problems = ProblemLog()
    judged = read_judged(tmp_path / "q.tsv", tmp_path / "j.qrels", problems)
    assert judged.qrels == {"q1": {"p00": 2}, "q2": {"p02": 1}}
    lines = [str(p) for p in problems.problems]
    qrels, tsv = tmp_path / "j.qrels", tmp_path / "q.tsv"
    assert f"{qrels}:2: malformed qrels line: 2 fields; expected 'QID 0 PRODUCT_ID GRADE'" in lines
    assert f"{qrels}:3: malformed qrels line: grade 'high' is not an integer" in lines
    assert any(line.startswith(f"{qrels}:4: duplicate judgment") for line in lines)
    assert any(line.startswith(f"{tsv}:2: malformed query line") for line in lines)
    assert any("unknown query" in line and "'q9'" in line for line in lines)
    assert any("query without relevant product" in line and "'q3'" in line for line in lines)

    (tmp_path / "q.jsonl").write_text('{"_id": "q1", "text": "red shoes"}\n{"_id": "q2"\n{"id": "q3"}\n')
    problems = ProblemLog()
    read_judged(tmp_path / "q.jsonl", tmp_path / "j.qrels", problems)
    assert any(str(p).startswith(f"{tmp_path / 'q.jsonl'}:2: malformed query line: invalid JSON") for p in problems.problems)
    assert any(str(p).startswith(f"{tmp_path / 'q.jsonl'}:3: malformed query line: needs an id") for p in problems.problems)

    (tmp_path / "j.json").write_text('{\n  "red shoes": {"p00": 2, "p06": "a lot"},\n  "blue jeans": ["p02"]\n}\n')
    problems = ProblemLog()
    judged = read_judged(None, tmp_path / "j.json", problems)
    assert list(judged.queries.values()) == ["red shoes"]
    lines = [str(p) for p in problems.problems]
    assert f"{tmp_path / 'j.json'}:2: malformed judgment: query 'red shoes', product 'p06': grade 'a lot' is not an integer" in lines
    assert any(line.startswith(f"{tmp_path / 'j.json'}:3: malformed query: query 'blue jeans'") for line in lines)


@pytest.mark.parametrize("content, message", [("q1 0 p1 0\n", "no query with a relevant product"), ("", "no query with a relevant product")])
def test_nothing_usable_fails(tmp_path, content, message):
    (tmp_path / "j.qrels").write_text(content)
    (tmp_path / "q.tsv").write_text("q1\tred\n")
    with pytest.raises(ValueError, match=message):
        read_judged(tmp_path / "q.tsv", tmp_path / "j.qrels")


def test_trec_qrels_without_queries_or_json_with_queries_are_refused(tmp_path):
    (tmp_path / "j.qrels").write_text("q1 0 p1 1\n")
    (tmp_path / "j.json").write_text("{}")
    with pytest.raises(ValueError, match="need the query texts"):
        read_judged(None, tmp_path / "j.qrels")
    with pytest.raises(ValueError, match="holds its query texts"):
        read_judged(tmp_path / "j.qrels", tmp_path / "j.json")
    with pytest.raises(FileNotFoundError, match="no such qrels"):
        read_judged(None, tmp_path / "nowhere.qrels")


def test_ranked_lists_hand_worked():
    # q1 returns p06 (grade 1) at 1, p01 (grade 0) at 2, p00 (grade 2) at 3; q2's only relevant product is not returned
    judged = JudgedQueries(dict(QUERIES), GRADES, {"q1": {"family": "a"}, "q2": {"family": "b"}})
    rankings = {"red shoes": ["p06", "p01", "p00"], "blue jeans": ["p05", "p04"]}
    result, rows = evaluate_judged(lambda text, k, mode: rankings[text][:k], judged, ["vector"], {f"p{i:02d}" for i in range(12)})
    a, b = result["tasks"]["vector"]["metrics"]["a"], result["tasks"]["vector"]["metrics"]["b"]
    assert a["P@1"] == 1.0 and a["P@5"] == pytest.approx(2 / 5) and a["Recall@10"] == 1.0 and a["MRR@10"] == 1.0
    assert a["mAP@100"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert a["nDCG@10"] == pytest.approx((1 + 2 / 2) / (2 + 1 / math.log2(3)))  # graded: ideal puts p00 first
    assert b == {m: 0.0 for m in b}
    assert result["tasks"]["vector"]["metrics"]["all"]["P@1"] == 0.5
    first = next(r for r in rows if r["qid"] == "q1")
    assert first["first_relevant_rank"] == 1 and first["top"][1] == {"id": "p01", "grade": 0} and first["family"] == "a"


def test_judged_products_outside_the_index_are_dropped():
    judged = JudgedQueries(dict(QUERIES), {"q1": {"p00": 1, "gone": 1}, "q2": {"gone": 3}})
    result, _ = evaluate_judged(lambda text, k, mode: ["p00"], judged, ["vector"], {"p00"})
    assert result["settings"]["dropped"] == {"judgments": 2, "queries": 1}
    assert result["n_queries"] == 1 and result["tasks"]["vector"]["metrics"]["all"]["Recall@10"] == 1.0


def test_judged_metrics_match_ranx():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(0)
    products = [f"d{i}" for i in range(150)]
    qrels = {f"q{q}": {p: int(rng.integers(0, 4)) for p in rng.choice(products, size=rng.integers(1, 30), replace=False)} for q in range(30)}
    qrels = {q: j for q, j in qrels.items() if any(g > 0 for g in j.values())}
    rankings = {q: list(rng.permutation(products)[:100]) for q in qrels}
    judged = JudgedQueries({q: q for q in qrels}, qrels)
    result, rows = evaluate_judged(lambda text, k, mode: rankings[text][:k], judged, ["vector"], set(products))
    run = ranx.Run({q: {p: float(100 - r) for r, p in enumerate(ranking)} for q, ranking in rankings.items()})
    theirs = ranx.evaluate(ranx.Qrels(qrels), run, ["precision@1", "precision@5", "precision@10", "recall@10", "recall@100",
                                                      "mrr@10", "ndcg@10", "map@100"], return_mean=True)
    ours = result["tasks"]["vector"]["metrics"]["all"]
    for mine, their in [("P@1", "precision@1"), ("P@5", "precision@5"), ("P@10", "precision@10"), ("Recall@10", "recall@10"),
                        ("Recall@100", "recall@100"), ("MRR@10", "mrr@10"), ("nDCG@10", "ndcg@10"), ("mAP@100", "map@100")]:
        assert ours[mine] == pytest.approx(theirs[their], rel=1e-9), mine


def test_ranks_beyond_the_depth_are_distinct():
    ranks, gains = judged_ranks([["a", "x"]], [{"b": 1, "a": 2, "c": 3}], depth=2)
    assert ranks.ranks.tolist() == [1, 3, 4] and gains.tolist() == [2, 1, 3]


def test_number_forms_and_possessives():
    assert number_forms("casual shoes") == ("casual shoes", "casual shoe")
    assert number_forms("watch") == ("watches", "watch")
    assert number_forms("jeans") == ("jeans",) and number_forms("topwear") == ("topwear",)
    assert possessive("women") == "women's" and possessive("boys") == "boys'" and possessive("unisex") == "unisex"


def _shop() -> list:
    products = standard_products()
    for p in products:
        p.attributes["gender"] = "Women" if int(p.id[1:]) < 6 else "Men"
    return products


def test_attribute_queries_relevance_families_and_seeds():
    products = _shop()
    judged = attribute_queries(products, AttributeQueryOptions(per_family=100, min_relevant=1))
    families = {judged.family(q) for q in judged.ids}
    assert families == {"category", "brand+type", "colour+type", "gender+colour+type"}
    for qid in judged.ids:
        labels = judged.info[qid]["labels"]
        text = judged.queries[qid]
        assert text == text.lower() and all(v.split()[0] in text for k, v in labels.items() if k not in ("type", "category"))
        carrying = {p.id for p in products if _carries(p, labels)}
        assert set(judged.qrels[qid]) == carrying and set(judged.qrels[qid].values()) == {len(labels)}
    shoes = next(q for q in judged.ids if judged.info[q]["labels"] == {"category": "shoes"})
    assert set(judged.qrels[shoes]) == {p.id for p in products if p.category_path[-1] == "Shoes"}
    assert attribute_queries(products, AttributeQueryOptions(per_family=3)).queries == attribute_queries(products, AttributeQueryOptions(per_family=3)).queries
    assert attribute_queries(products, AttributeQueryOptions(per_family=3, seed=1)).queries != attribute_queries(products, AttributeQueryOptions(per_family=3)).queries
    assert not attribute_queries(products, AttributeQueryOptions(min_relevant=3, families=["gender+colour+type"])).queries


def _carries(p, labels: dict) -> bool:
    own = {"type": p.category_path[-1].lower(), "brand": p.attributes["brand"].lower(),
           "colour": p.attributes["colour"].lower(), "gender": p.attributes["gender"].lower()}
    return all((value in [c.lower() for c in p.category_path]) if role == "category" else own[role] == value
               for role, value in labels.items())


def test_a_multi_value_carries_each_of_its_values():
    products = _shop()
    products[0].attributes["gender"] = "Men | Women"
    judged = attribute_queries(products, AttributeQueryOptions(per_family=100, min_relevant=1, families=["gender+colour+type"]))
    for gender in ("men", "women"):
        qid = next(q for q in judged.ids if judged.info[q]["labels"] == {"gender": gender, "colour": "red", "type": "shoes"})
        assert "p00" in judged.qrels[qid]


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown query family 'size'"):
        attribute_queries(_shop(), AttributeQueryOptions(families=["size"]))


@pytest.fixture
def engine(tmp_path):
    products = _shop() + [product("p12", "red", "Puma", ["Footwear", "Shoes"], 5.0)]
    write_images(tmp_path, products)
    index = build_index(PaletteEncoder(), Catalog(products, tmp_path), tmp_path / "idx", BuildOptions(progress=False))
    return SearchEngine(index, PaletteEncoder())


def test_index_evaluated_on_colour_queries(engine, tmp_path):
    # the palette encoder finds colours: every colour query's top product has that colour
    judged = JudgedQueries({"r": "red", "b": "blue things"}, {"r": {"p00": 1, "p06": 1, "p12": 2}, "b": {"p02": 1, "p08": 1}})
    result = evaluate_index(engine, judged, ["all"], tmp_path / "out")
    metrics = result["tasks"]["vector"]["metrics"]["all"]
    assert metrics["P@1"] == 1.0 and metrics["Recall@10"] == 1.0 and metrics["P@5"] == pytest.approx((3 / 5 + 2 / 5) / 2)
    assert list(result["tasks"]) == ["vector", "lexical", "hybrid"] == mode_list(["all"])
    rows = [json.loads(line) for line in (tmp_path / "out" / "eval" / "judged-per-query.jsonl").read_text().splitlines()]
    assert {r["qid"] for r in rows} == {"r", "b"} and json.loads((tmp_path / "out" / "eval" / "judged.json").read_text())["n_queries"] == 2


def test_index_results_get_a_row_per_mode_in_reports(engine, tmp_path):
    from catalogclip.evaluate.report import write_report
    from catalogclip.evaluate.report.collect import load_entries
    from catalogclip.evaluate.report.tables import build_tables

    judged = attribute_queries(engine.index.store.iter_products(), AttributeQueryOptions(min_relevant=1, per_family=4))
    result = evaluate_index(engine, judged, ["vector"], tmp_path / "shop-eval", "attribute-queries")
    (entry,) = load_entries([tmp_path / "shop-eval"])
    assert entry.kind == "index" and entry.info["index"] == str(tmp_path / "idx")
    families, every = build_tables([entry])
    assert families.columns[:4] == ["all nDCG@10", "all P@1", "brand+type nDCG@10", "brand+type P@1"]
    assert [r.label for r in families.rows] == ["shop-eval · vector"]
    assert families.rows[0].values[2] == result["tasks"]["vector"]["metrics"]["brand+type"]["nDCG@10"]
    assert every.columns == list(result["settings"]["metrics"])
    files = write_report([tmp_path / "shop-eval"], tmp_path / "report")
    assert "## Shopper queries (attribute-queries) per query family" in files.markdown.read_text()


def test_fusion_tuned_on_judged_queries_is_what_hybrid_search_then_scores(engine):
    # brand words are only in the titles (the palette encoder sees colours): lexical must weigh more
    judged = JudgedQueries({"p": "puma", "d": "diesel things", "r": "red puma"},
                           {"p": {f"p{i:02d}": 1 for i in range(0, 13, 2)}, "d": {f"p{i:02d}": 1 for i in range(1, 12, 2)},
                            "r": {"p00": 1, "p06": 1, "p12": 1}})
    tuning = tune_fusion(engine, judged, boosts=(engine.fusion.boost,))
    tuned = tuning.best
    grid = {(g["method"], g["weight"]): g["nDCG@10"] for g in tuning.grid}
    assert tuned.tuned["value"] == max(grid.values()) == grid[(tuned.method, tuned.weight)]
    assert tuned.weight < 0.5 and grid[(tuned.method, tuned.weight)] > grid[("weighted", 1.0)]
    engine.fusion = tuned
    result, _ = evaluate_judged(engine_search(engine), judged, ["hybrid"], engine.index.store.product_ids())
    assert result["tasks"]["hybrid"]["metrics"]["all"]["nDCG@10"] == pytest.approx(tuned.tuned["value"], abs=1e-6)


def test_mode_names():
    assert mode_list(["vector,vector", "hybrid"]) == ["vector", "hybrid"]
    with pytest.raises(ValueError, match="unknown search mode 'fuzzy'"):
        mode_list(["fuzzy"])


def test_cli_evaluates_an_index_on_attribute_queries_and_judged_files(tmp_path):
    from typer.testing import CliRunner

    from catalogclip.cli import app
    from tests._searchkit import write_catalog

    catalog = write_catalog(tmp_path / "shop", _shop())
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(app, [str(a) for a in args])

    assert cli("train", "--out", tmp_path / "run", "--catalog", catalog, "--backbone", "tiny", "--method", "clip", "--max-steps", 1, "--no-progress").exit_code == 0
    assert cli("index", "--run", tmp_path / "run", "--out", tmp_path / "idx", "--no-progress").exit_code == 0
    done = cli("evaluate", "--index", tmp_path / "idx", "--protocol", "attribute-queries", "--per-family", 5)
    assert done.exit_code == 0, done.output
    eval_dir = tmp_path / "idx-eval" / "eval"
    result = json.loads((eval_dir / "attribute-queries.json").read_text())
    assert "colour+type" in result["tasks"]["vector"]["metrics"] and "colour+type" in done.output
    again = cli("evaluate", "--index", tmp_path / "idx", "--queries", eval_dir / "attribute-queries.queries.jsonl",
                "--qrels", eval_dir / "attribute-queries.qrels", "--out", tmp_path / "again")
    assert again.exit_code == 0, again.output
    rerun = json.loads((tmp_path / "again" / "eval" / "judged.json").read_text())
    assert rerun["tasks"] == {m: {**t, "seconds": rerun["tasks"][m]["seconds"]} for m, t in result["tasks"].items()}

    tuned = cli("evaluate", "--index", tmp_path / "idx", "--qrels", eval_dir / "attribute-queries.qrels",
                "--queries", eval_dir / "attribute-queries.queries.jsonl", "--tune")
    assert tuned.exit_code == 0 and "fusion tuned on 15 queries" in tuned.output, tuned.output
    from catalogclip.search.index import ProductIndex

    assert ProductIndex.open(tmp_path / "idx").info["fusion"]["tuned"]["queries"] == 15

    (tmp_path / "bad.qrels").write_text("q1 0 p00\n")
    (tmp_path / "q.tsv").write_text("q1\tred\n")
    failed = cli("evaluate", "--index", tmp_path / "idx", "--queries", tmp_path / "q.tsv", "--qrels", tmp_path / "bad.qrels")
    assert failed.exit_code == 2 and f"{tmp_path / 'bad.qrels'}:1: malformed qrels line" in failed.output
    assert "no query with a relevant product" in failed.output

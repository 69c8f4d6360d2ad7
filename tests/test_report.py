"""`catalogclip evaluate` / `report` on a hand-made run folder, and the HTML report in Chromium."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from catalogclip.catalog.schema import Catalog, ImageRef, Product, read_jsonl, write_jsonl
from catalogclip.cli import app
from catalogclip.embeddings import Embeddings
from catalogclip.evaluate.protocols import Inventory
from catalogclip.evaluate.report.collect import load_entries
from catalogclip.evaluate.report.tables import Row, Table, build_tables
from catalogclip.evaluate.runner import _missing_category_vectors

LEAVES = {"X": ("Apparel", "Shirts"), "Y": ("Apparel", "Jeans"), "Z": ("Footwear", "Boots")}
COLOURS = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40), (120, 40, 160), (30, 30, 30)]


def _write_run(root: Path, noise: float = 0.3, seed: int = 0) -> Path:
    """A run folder as the trainer and `catalogclip embed` leave it, with embeddings made by hand:
    each image lies near its product's text vector (closer for the merchant shot)."""
    rng = np.random.default_rng(seed)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    products = []
    for k in range(12):
        leaf = "XYZ"[k % 3]
        pid = f"p{k:02d}"
        images = []
        for view, source in enumerate(("merchant", "customer")):
            name = f"{pid}_{view}.png"
            Image.new("RGB", (16, 16), COLOURS[k % len(COLOURS)]).save(data / name)
            images.append(ImageRef(name, source))
        products.append(Product(pid, f"{leaf.lower()} thing {k}", images=images, attributes={"brand": f"B{k % 4}"},
                                category_path=list(LEAVES[leaf])))
    catalog_path = write_jsonl(Catalog(products, data), data / "catalog.jsonl")
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "eiclip", "backbone": {"spec": "tiny"},
                                                     "data": {"catalog": str(catalog_path)}}))
    test = [p for p in products if p.category_path[0] == "Apparel"]  # Footwear > Boots is seen in training only
    train = [p for p in products if p not in test]
    (run / "split.json").write_text(json.dumps({"by": "leaf", "seed": 0, "train": [p.id for p in train],
                                                "test": [p.id for p in test]}))
    (run / "gates.json").write_text(json.dumps({"brand": 0.8, "colour": 0.35}))

    texts = rng.standard_normal((len(test), 16))
    image_rows = [(i, im) for i, p in enumerate(test) for im in p.images]
    images = np.stack([texts[i] + rng.standard_normal(16) * noise * (1 if im.source == "merchant" else 3)
                       for i, im in image_rows])
    nodes = ["Apparel", "Apparel > Shirts", "Apparel > Jeans"]
    leaf_mean = {n: texts[[i for i, p in enumerate(test) if p.category(len(n.split(" > "))) == n]].mean(0) for n in nodes}
    unit = lambda m: (m / np.linalg.norm(m, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    Embeddings(
        image=unit(images),
        image_product=np.array([test[i].id for i, _ in image_rows]),
        image_source=np.array([im.source for _, im in image_rows]),
        image_path=np.array([str(data / im.path) for _, im in image_rows]),
        text=unit(texts),
        text_product=np.array([p.id for p in test]),
        category=unit(np.stack([leaf_mean[n] for n in nodes])),
        category_path=np.array(nodes),
        meta={"method": "eiclip", "backbone": "tiny"},
    ).save(run / "embeddings")
    return run


def _invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def evaluated(tmp_path: Path):
    """A run evaluated on every protocol, plus the BM25 baseline on the same candidates."""
    run = _write_run(tmp_path)
    result = _invoke("evaluate", "--run", run, "-p", "all")
    assert result.exit_code == 0, result.output
    base = tmp_path / "bm25"
    result = _invoke("evaluate", "--baseline", "bm25", "--run", run, "-p", "all", "--out", base,
                     "--candidates", run / "eval" / "sample100-candidates.json")
    assert result.exit_code == 0, result.output
    return run, base


def test_evaluate_writes_one_json_per_protocol(evaluated):
    run, base = evaluated
    names = sorted(p.name for p in (run / "eval").glob("*.json"))
    assert names == ["category.json", "full.json", "sample100-candidates.json", "sample100.json", "zeroshot-cls.json"]
    full = json.loads((run / "eval" / "full.json").read_text())
    assert full["n_products"] == 8 and full["n_images"] == 16
    assert full["tasks"]["t2i"]["metrics"]["all"]["R@10"] == 1.0  # 16 candidates, both images near the text
    category = json.loads((run / "eval" / "category.json").read_text())["tasks"]["category"]
    # held-out leaves: Apparel's two leaves are unseen; the root Apparel is unseen too (only Footwear was trained)
    assert category["n_queries_per_group"] == {"all": 3, "root": 1, "leaf": 2, "unseen": 3}
    # both sides scored the same sample100 lists
    assert json.loads((base / "eval" / "sample100-candidates.json").read_text()) == json.loads(
        (run / "eval" / "sample100-candidates.json").read_text())


def test_reused_candidates_reproduce_the_numbers(evaluated, tmp_path):
    run, _ = evaluated
    first = json.loads((run / "eval" / "sample100.json").read_text())
    copy = tmp_path / "lists.json"
    shutil.copy(run / "eval" / "sample100-candidates.json", copy)
    assert _invoke("evaluate", "--run", run, "-p", "sample100", "--candidates", copy).exit_code == 0
    again = json.loads((run / "eval" / "sample100.json").read_text())
    assert again["tasks"]["t2i"]["metrics"] == first["tasks"]["t2i"]["metrics"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "-p", "full"], "--run R"),
        (["evaluate", "--run", "{run}", "-p", "nope"], "unknown protocol 'nope'"),
        (["evaluate", "--run", "{tmp}", "-p", "full"], "no config.yaml"),
        (["evaluate", "--run", "{run}", "--embeddings", "{tmp}", "-p", "full"], "catalogclip embed"),
        (["evaluate", "--baseline", "bm25", "--catalog", "{catalog}"], "--out"),
        (["evaluate", "--baseline", "tfidf", "--catalog", "{catalog}", "--out", "{tmp}/o"], "unknown baseline 'tfidf'"),
        (["report", "{tmp}", "--out", "{tmp}/r"], "no evaluation results"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    run = _write_run(tmp_path / "w")
    values = {"run": run, "tmp": tmp_path, "catalog": run.parent / "data" / "catalog.jsonl"}
    result = _invoke(*[a.format(**values) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_report_tables_match_the_eval_files(evaluated, tmp_path):
    run, base = evaluated
    out = tmp_path / "report"
    result = _invoke("report", run, base, "--out", out, "--baseline", "bm25")
    assert result.exit_code == 0, result.output
    numbers = json.loads((out / "report.json").read_text())
    tables = {t["key"]: t for t in numbers["tables"]}
    assert set(tables) == {"full", "sample100", "category-all", "category-root", "category-leaf", "category-unseen",
                           "zeroshot-cls"}
    full = tables["full"]
    assert full["columns"] == ["I2T R@1", "I2T R@5", "I2T R@10", "T2I R@1", "T2I R@5", "T2I R@10", "SumR"]
    run_row, base_row = full["rows"]
    eval_full = json.loads((run / "eval" / "full.json").read_text())
    assert run_row["label"] == "run" and base_row["label"] == "bm25"
    assert run_row["values"][-1] == pytest.approx(eval_full["summary"]["SumR"])
    assert run_row["values"][3] == pytest.approx(eval_full["tasks"]["t2i"]["metrics"]["all"]["R@1"])
    expected = 100 * (run_row["values"][-1] - base_row["values"][-1]) / base_row["values"][-1]
    assert run_row["delta"] == pytest.approx(expected) and base_row["delta"] is None
    leaf = tables["category-leaf"]
    assert leaf["columns"] == ["P@1", "P@5", "P@10", "mAP@5", "mAP@10", "R-precision"]  # the CLIP-ITA paper's

    markdown = (out / "report.md").read_text()
    assert "| model | I2T R@1 | I2T R@5 | I2T R@10 | T2I R@1 | T2I R@5 | T2I R@10 | SumR | Δ SumR |" in markdown
    assert "](plots/gates.png)" in markdown and "](plots/curves-full.png)" in markdown
    thumbs = re.findall(r"\]\((thumbs/[0-9a-f]+\.jpg)\)", markdown)
    assert thumbs and all((out / t).exists() for t in thumbs)
    page = (out / "report.html").read_text()
    sources = re.findall(r"<img[^>]* src='([^']*)'", page)
    assert sources and all(s.startswith("data:image/") for s in sources)  # self-contained
    assert "✓" in page and "✗" in page


def test_text_proxies_are_apart_never_best_nor_the_default_reference(evaluated, tmp_path):
    run, base = evaluated
    out = tmp_path / "report"
    result = _invoke("report", base, run, "--out", out)  # the baseline folder first: still not the reference
    assert result.exit_code == 0, result.output
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["baseline"] == "run"
    tables = build_tables(load_entries([base, run]), "run")
    for table in tables:
        assert [r.label for r in table.rows] == ["run", "bm25"] and table.rows[1].text_proxy
        assert "Text proxies read product text only" in table.note
        for i in range(len(table.columns)):
            assert not table.is_best(table.rows[1], i)
            assert table.is_best(table.rows[0], i) == (table.rows[0].values[i] is not None)
    crafted = Table("full", "t", ["SumR"], rows=[Row("run", [2.0]), Row("bm25", [4.7], text_proxy=True)])
    assert crafted.best(0) == 2.0 and crafted.is_best(crafted.rows[0], 0) and not crafted.is_best(crafted.rows[1], 0)
    markdown = (out / "report.md").read_text()
    assert "| bm25 | baseline (text proxy) |" in markdown and "| *Text proxies (not cross-modal)* |" in markdown
    assert "Relative improvements are over **run**." in markdown
    assert "<tr class='section'><td colspan=9>Text proxies (not cross-modal)</td></tr>" in (out / "report.html").read_text()


def test_sample100_warning_reaches_the_command_line_and_the_report(tmp_path):
    run = _write_run(tmp_path)
    result = _invoke("evaluate", "--run", run, "-p", "sample100")
    assert result.exit_code == 0 and "WARNING: sample100 is easier than its name says" in result.output
    assert "each list holds 8 candidates" in result.output
    (table,) = build_tables(load_entries([run]))
    assert "sample100 is easier than its name says" in table.note


def test_report_refuses_an_unknown_baseline(evaluated, tmp_path):
    run, base = evaluated
    result = _invoke("report", run, base, "--out", tmp_path / "r", "--baseline", "clip")
    assert result.exit_code == 2 and "none of the reported models (run, bm25)" in result.output


def test_other_protocols_get_generic_tables(tmp_path):
    """Protocols without a paper layout (product, grounding) still get every number in a table."""
    for name, acc in (("a", 0.5), ("b", 0.75)):
        (tmp_path / name / "eval").mkdir(parents=True)
        product = {"tasks": {"fine": {"metrics": {"all": {"R@1": acc, "mAP@5": acc / 2}}},
                             "coarse": {"metrics": {"all": {"R@1": acc + 0.1}}}}}
        grounding = {"protocol": "grounding", "n": 40, "Acc@0.5": acc, "mIoU": acc - 0.1, "by_source": {}}
        (tmp_path / name / "eval" / "product.json").write_text(json.dumps(product))
        (tmp_path / name / "eval" / "grounding.json").write_text(json.dumps(grounding))
    tables = {t.key: t for t in build_tables(load_entries([tmp_path / "a", tmp_path / "b"]), baseline="a")}
    assert tables["product"].columns == ["fine R@1", "fine mAP@5", "coarse R@1"]
    assert tables["product"].rows[1].values == [0.75, 0.375, 0.85]
    assert tables["product"].rows[1].delta == pytest.approx(50.0)
    assert tables["grounding"].columns == ["Acc@0.5", "mIoU"]  # the count `n` is no metric
    assert tables["grounding"].rows[0].values == [0.5, pytest.approx(0.4)]


def test_category_vectors_come_from_the_model_when_missing(tmp_path):
    run = _write_run(tmp_path)
    embeddings = Embeddings.load(run / "embeddings")
    catalog = Catalog([Product("p00", "t", images=[ImageRef("p00_0.png")], category_path=["Apparel", "Coats"])])
    inventory = Inventory.from_embeddings(embeddings, catalog)
    asked = []

    class Encoder:
        def encode_categories(self, paths):
            asked.extend(paths)
            return np.ones((len(paths), embeddings.dim), np.float32)

    vectors = _missing_category_vectors(embeddings, inventory, Encoder)
    assert asked == ["Apparel > Coats"] and set(vectors) == {"Apparel > Coats"}
    whole = Inventory.from_embeddings(embeddings, read_jsonl(run.parent / "data" / "catalog.jsonl"))
    assert _missing_category_vectors(embeddings, whole, Encoder) is None  # all there: the model is not built


_CHECK = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  const out = document.createElement('pre');
  out.id = 'check';
  out.textContent = JSON.stringify({
    images: images.length,
    decoded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    tables: document.querySelectorAll('table').length,
    rows: document.querySelectorAll('table tr').length,
  });
  document.body.appendChild(out);
});
</script></body>"""


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def test_html_report_renders_in_chromium(evaluated, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    run, base = evaluated
    out = tmp_path / "report"
    assert _invoke("report", run, base, "--out", out).exit_code == 0
    page = (out / "report.html").read_text()
    expected_images = page.count("<img")
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", _CHECK))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", checked.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    found = re.search(r'<pre id="check">(.*?)</pre>', dom, re.S)
    assert found, "the check script did not run"
    check = json.loads(html.unescape(found.group(1)))
    assert check["images"] == expected_images > 10
    assert check["decoded"] == check["images"], "a broken image in the report"
    assert check["tables"] >= 9 and check["rows"] > 30
    screenshot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1200,2400", f"--screenshot={screenshot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    with Image.open(screenshot) as image:
        assert image.size == (1200, 2400)


def test_a_run_is_labelled_with_its_backbone_options():
    from catalogclip.evaluate.report.collect import backbone_label

    assert backbone_label({"spec": "tiny", "extra": {}}) == "tiny"
    assert backbone_label({"spec": "twotower", "extra": {"image_trainable_blocks": 1}}) == "twotower (image_trainable_blocks=1)"

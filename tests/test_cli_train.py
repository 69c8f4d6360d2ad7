"""`catalogclip train` and `catalogclip embed` from the command line."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from catalogclip.cli import app
from catalogclip.embeddings import Embeddings

runner = CliRunner()


def test_train_then_embed_the_test_split(brand_catalog, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--catalog", str(brand_catalog), "--method", "eiclip", "--backbone", "tiny", "--entities", "brand,season",
        "--epochs", "2", "--batch-size", "8", "--out", str(run), "--no-progress", "--set", "data.test_fraction=0.25",
    ])
    assert result.exit_code == 0, result.output
    assert "trained eiclip" in result.output
    assert (run / "checkpoints" / "last.pt").exists()
    assert json.loads((run / "vocabs.json").read_text())["groups"][0]["group"] == "brand"
    result = runner.invoke(app, ["embed", "--run", str(run)])
    assert result.exit_code == 0, result.output
    embeddings = Embeddings.load(run / "embeddings")
    test_ids = json.loads((run / "split.json").read_text())["test"]
    assert sorted(embeddings.text_product.tolist()) == sorted(test_ids)
    assert len(test_ids) == 8  # 25% of 32 products
    assert embeddings.image.shape == (8, 256) and embeddings.meta["split"] == "test"


def test_missing_catalog_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["train", "--catalog", str(tmp_path / "nope.jsonl"), "--backbone", "tiny", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "nope.jsonl: catalog not found" in result.output
    assert "Traceback" not in result.output


def test_unknown_method_names_the_known_ones(brand_catalog, tmp_path):
    result = runner.invoke(app, ["train", "--catalog", str(brand_catalog), "--method", "clap", "--backbone", "tiny", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "unknown method 'clap'" in result.output and "eiclip" in result.output


def test_embed_needs_a_run_folder(tmp_path):
    result = runner.invoke(app, ["embed", "--run", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a run folder" in result.output

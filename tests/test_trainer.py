"""The trainer and EI-CLIP on catalogs where the answer is known."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from catalogclip.catalog.schema import read_jsonl
from catalogclip.embed import embed_catalog
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.train.config import DataConfig, OptimConfig, RunConfig
from catalogclip.train.runs import load_run
from catalogclip.train.data import iterate_batches, loader_workers
from catalogclip.train.trainer import Trainer, train, warmup_cosine


def tiny_run(catalog, method: str, epochs: int = 40, **options) -> RunConfig:
    return RunConfig(
        method=method,
        method_options=options,
        backbone=BackboneConfig(spec="tiny", embed_dim=32),
        data=DataConfig(catalog=str(catalog), test_fraction=0.05),
        optim=OptimConfig(epochs=epochs, batch_size=16, head_lr=3e-3, lr=3e-3, warmup_steps=5, log_every=5, checkpoint_every=10**6),
    )


def t2i_recall_at_1(run_dir, catalog_path) -> float:
    """Text -> image R@1 over the whole catalog (one image per product)."""
    method = load_run(run_dir).method
    emb = embed_catalog(method, read_jsonl(catalog_path), progress=False)
    best = (emb.text @ emb.image.T).argmax(axis=1)
    return float(np.mean(emb.image_product[best] == emb.text_product))


def test_warmup_then_cosine_schedule():
    f = warmup_cosine(warmup=4, total=14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.5)
    assert f(14) == pytest.approx(0.0)


def test_eiclip_recovers_brand_that_only_entities_carry(brand_catalog, tmp_path):
    """Titles name only the colour; the brand is in the image and the entities. CLIP on the
    title cannot tell the 4 brands of a colour apart, EI-CLIP can."""
    train(tiny_run(brand_catalog, "clip"), tmp_path / "clip", progress=False)
    train(tiny_run(brand_catalog, "eiclip", entity_groups=["brand", "season"]), tmp_path / "eiclip", progress=False)
    clip_r1 = t2i_recall_at_1(tmp_path / "clip", brand_catalog)
    eiclip_r1 = t2i_recall_at_1(tmp_path / "eiclip", brand_catalog)
    # 8 products share each title, so CLIP's ceiling is 1/8; each (colour, brand) kind has 2
    # identical copies, so EI-CLIP's ceiling is 1/2
    assert clip_r1 <= 0.2
    assert eiclip_r1 >= 0.35


def test_eiclip_gates_move_and_are_saved(brand_catalog, tmp_path):
    train(tiny_run(brand_catalog, "eiclip", entity_groups=["brand", "season"]), tmp_path / "run", progress=False)
    gates = json.loads((tmp_path / "run" / "gates.json").read_text())
    assert set(gates) == {"brand", "season"}
    # the useless random group's gate leaves 0.5 and ends below the informative brand's
    assert abs(gates["season"] - 0.5) > 0.02
    assert gates["brand"] > gates["season"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "gate/brand" in logged[-1] and "loss_entities" in logged[-1]


def test_equal_gates_stay_at_one_half(brand_catalog, tmp_path):
    train(tiny_run(brand_catalog, "eiclip", epochs=2, entity_groups=["brand"], gates="equal"), tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "gates.json").read_text()) == {"brand": 0.5}


def test_entities_as_text_appends_attributes(brand_catalog, tmp_path):
    from catalogclip.models.methods import build_method

    method = build_method("clip", BackboneConfig(spec="tiny", embed_dim=8), {"entities_as_text": ["brand"]})
    product = read_jsonl(brand_catalog).products[0]
    assert method.product_text(product) == f"{product.title}. brand: {product.attributes['brand']}"


class Killed(Exception):
    pass


def test_resume_after_kill_matches_unbroken_run(brand_catalog, tmp_path):
    config = tiny_run(brand_catalog, "eiclip", epochs=5, entity_groups=["brand"])  # 10 steps
    config.optim.checkpoint_every = 3
    unbroken = train(config, tmp_path / "a", progress=False)

    def kill_at_step_7(step, record):
        if step == 7:
            raise Killed

    with pytest.raises(Killed):
        train(config, tmp_path / "b", on_step=kill_at_step_7, progress=False)
    assert torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=False)["step"] == 6
    resumed = train(config, tmp_path / "b", resume=True, progress=False)
    assert resumed.steps == unbroken.steps
    a = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=False)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "resumed run must not duplicate metric lines"


def test_unknown_setting_is_named(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("optim:\n  epochz: 3\n")
    with pytest.raises(ValueError, match=r"optim\.epochz"):
        RunConfig.load(path)


def test_config_round_trips_through_yaml(tmp_path):
    config = tiny_run("c.jsonl", "eiclip", entity_groups=["brand"])
    config.save(tmp_path / "config.yaml")
    assert RunConfig.load(tmp_path / "config.yaml") == config


def test_cli_settings_override_yaml_and_flags_override_settings(tmp_path):
    from catalogclip.cli.train import build_run_config

    path = tmp_path / "run.yaml"
    tiny_run("c.jsonl", "eiclip", entity_groups=["brand"]).save(path)
    run = build_run_config(
        path, None, None, None, {"optim": {"epochs": 7}}, {"gates": "equal"},
        ["optim.epochs=3", "backbone.augment=true", "backbone.extra.head=mlp", "method_options.entity_hidden=64"],
    )
    assert run.optim.epochs == 7  # the flag wins over --set
    assert run.backbone.augment is True and run.backbone.extra == {"head": "mlp"}
    assert run.method_options == {"entity_groups": ["brand"], "entity_hidden": 64, "gates": "equal"}
    assert run.backbone.spec == "tiny"  # kept from the YAML file


def test_cli_rejects_malformed_setting():
    from catalogclip.cli.train import parse_settings

    with pytest.raises(ValueError, match="section.key=value"):
        parse_settings(["optim.epochs"])


def test_checkpoint_leaves_out_rebuildable_frozen_towers_only(brand_catalog, tmp_path):
    from catalogclip.models.methods import build_method
    from catalogclip.train.checkpoint import frozen_keys, load_trainable_state, trainable_state

    # tiny's frozen tower has random weights: it cannot be rebuilt, so it must be saved
    tiny = build_method("clip", BackboneConfig(spec="tiny", embed_dim=8, freeze_image=True))
    assert frozen_keys(tiny) == set()
    # a pretrained frozen tower is rebuilt from its source: the checkpoint skips it
    twotower = build_method("clip", BackboneConfig(spec="twotower", embed_dim=8))
    state = trainable_state(twotower)
    assert not any(k.startswith(("backbone.image_tower.", "backbone.text_tower.")) for k in state)
    assert {"logit_scale", "backbone.image_proj.weight", "backbone.text_proj.weight"} <= set(state)
    state["backbone.image_proj.weight"] = torch.zeros_like(state["backbone.image_proj.weight"])
    load_trainable_state(twotower, state)
    assert float(twotower.backbone.image_proj.weight.detach().abs().sum()) == 0.0
    del state["backbone.text_proj.weight"]
    with pytest.raises(ValueError, match="text_proj.weight"):
        load_trainable_state(twotower, state, "ckpt.pt")


def test_product_packed_batches_always_hold_two_products():
    from catalogclip.train.data import PairData, usable_batches

    # 5 products with 3 images each; batches of 6 rows packed 3 views per product: the last
    # batch would hold one product alone (no negatives) and is dropped
    index = torch.arange(5).repeat_interleave(3)
    data = PairData(index, [f"{i}.jpg" for i in range(15)], ["t"] * 5, None, None, None, None, None, None)
    batches = usable_batches(data, batch_size=6, seed=0, epoch=0, views=3, world_size=1)
    assert len(batches) == 2
    assert all(len(index[rows].unique()) == 2 for rows in batches)


def six_products_with_main_shots():
    """6 products with 5 images each, the first of each its main (merchant) shot."""
    from catalogclip.train.data import PairData

    index = torch.arange(6).repeat_interleave(5)
    main = torch.zeros(30, dtype=torch.bool)
    main[::5] = True
    return PairData(index, [f"{i}.jpg" for i in range(30)], ["t"] * 6, None, None, None, None, None, None, main)


def test_main_shot_in_batch_brings_every_products_merchant_shot():
    from catalogclip.train.data import epoch_batches

    data = six_products_with_main_shots()
    batches = [rows.tolist() for rows in epoch_batches(data, batch_size=8, seed=1, epoch=0, main_shot_in_batch=True)]
    for rows in batches:
        assert len(rows) <= 8 and len(set(rows)) == len(rows)
        assert all(5 * int(data.product_index[row]) in rows for row in rows)
    # every customer photo exactly once an epoch, as without the option
    assert sorted(row for rows in batches for row in rows if row % 5) == [row for row in range(30) if row % 5]
    assert batches == [rows.tolist() for rows in epoch_batches(data, 8, seed=1, epoch=0, main_shot_in_batch=True)]
    # without it random batches rarely hold a product's main shot with its other images
    plain = [rows.tolist() for rows in epoch_batches(data, batch_size=8, seed=1, epoch=0)]
    assert not all(5 * int(data.product_index[row]) in rows for rows in plain for row in rows)
    # packed groups start with the main shot
    for rows in epoch_batches(data, batch_size=6, seed=1, epoch=0, views_per_product=3, main_shot_in_batch=True):
        assert all(5 * int(data.product_index[row]) in rows.tolist() for row in rows.tolist())


def test_main_shots_are_each_products_first_merchant_image(tmp_path):
    from catalogclip.catalog.schema import ImageFile, ImageRef
    from catalogclip.train.data import epoch_batches, main_shots

    files = [ImageFile(product, number, ImageRef(f"{product}-{number}.jpg", source), tmp_path / f"{product}-{number}.jpg")
             for product, number, source in [(0, 0, "customer"), (0, 1, "merchant"), (0, 2, "merchant"), (1, 0, "customer")]]
    assert main_shots(files).tolist() == [False, True, False, False]
    data = six_products_with_main_shots()
    data.main_shot = None
    with pytest.raises(ValueError, match="main shot"):
        epoch_batches(data, 8, seed=0, epoch=0, main_shot_in_batch=True)


def test_loader_workers_build_the_batches_this_process_would(brand_catalog, tmp_path):
    """Worker processes decode and augment exactly what this process would, batch for batch (so
    any number of workers trains the same model and resumes exactly), and building a batch
    leaves the training RNG untouched."""
    config = tiny_run(brand_catalog, "clipita")
    config.backbone.augment = True
    method, data = Trainer(config, tmp_path / "run", progress=False).setup()
    assert data.image_inputs is None  # the tiny image tower trains on pixels: decoded every step
    rng = torch.get_rng_state()
    here = list(iterate_batches(method, data, 8, seed=3, epoch=1, skip=1, workers=0))
    assert torch.equal(torch.get_rng_state(), rng)
    there = list(iterate_batches(method, data, 8, seed=3, epoch=1, skip=1, workers=2))
    assert len(here) == len(there) > 1
    for a, b in zip(here, there):
        assert torch.equal(a.product_keys, b.product_keys) and torch.equal(a.images, b.images)
        assert a.categories == b.categories
    # augmentation is random per batch: another epoch crops the same product's image differently
    first_epoch = {int(k): img for b in iterate_batches(method, data, 8, seed=3, epoch=0) for k, img in zip(b.product_keys, b.images)}
    shared = [k for k, b in enumerate(here[0].product_keys.tolist()) if b in first_epoch]
    assert any(not torch.equal(here[0].images[k], first_epoch[here[0].product_keys[k].item()]) for k in shared)


def test_loader_workers_default_to_none_on_cpu_and_several_for_pixels_on_gpu(brand_catalog, tmp_path):
    _, data = Trainer(tiny_run(brand_catalog, "clip"), tmp_path / "run", progress=False).setup()
    assert loader_workers(None, data, torch.device("cpu")) == 0
    assert loader_workers(None, data, torch.device("cuda")) >= 1
    assert loader_workers(3, data, torch.device("cpu")) == 3
    data.image_inputs = torch.zeros(len(data), 4)  # cached tower outputs: nothing to decode
    assert loader_workers(None, data, torch.device("cuda")) == 0

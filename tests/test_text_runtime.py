"""Query towers on a runtime (ONNX Runtime = PyTorch; text towers through the seam too), and what
the service does with them."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from PIL import Image

from catalogclip.embed import RunEncoder
from catalogclip.featurise.runtime import TextTowerOutputs, TorchTower, min_cosine, open_text_tower
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.models.methods import build_method
from catalogclip.search.service import _freeze_start_up_objects, _on_runtime

#: padding of different lengths, one word, and texts without a word (they pool to zeros)
TEXTS = ["black puma running shoes", "red", "a much longer query about striped cotton shirts for men", "!!", ""]


def tiny_clip(seed: int = 0):
    torch.manual_seed(seed)
    return build_method("clip", BackboneConfig(spec="tiny", embed_dim=16))


def test_the_onnx_text_tower_computes_the_pytorch_features():
    backbone = tiny_clip().backbone.eval()
    inputs = backbone.text_inputs(TEXTS)
    reference = TorchTower(TextTowerOutputs(backbone))(*inputs.values())
    with torch.no_grad():
        np.testing.assert_allclose(reference, backbone.text_features(TEXTS).numpy(), atol=1e-6)  # the two halves make the whole
    tower = open_text_tower(backbone, "onnx")
    out = tower(*inputs.values())  # other batch and token counts than the export's example
    assert "onnxruntime" in tower.name and out.shape == (len(TEXTS), reference.shape[1]) and out.dtype == np.float32
    assert np.abs(out - reference).max() <= 1e-5
    assert not out[3:].any()  # no word, no features, as in PyTorch


@pytest.mark.parametrize("name", ["clip", "eclip"])  # pooled image features; image tokens
def test_a_run_encoder_on_onnx_gives_the_pytorch_query_vectors(name):
    torch.manual_seed(0)
    method = build_method(name, BackboneConfig(spec="tiny", embed_dim=16))
    reference = RunEncoder(method=method, model_id="m")
    images = [Image.new("RGB", (40 + 10 * i, 50), colour) for i, colour in enumerate(["red", "navy", "white"])]
    texts, pictures = reference.encode_texts(TEXTS[:4]), reference.encode_images(images)
    for runtime in ("onnx", "auto"):
        encoder = RunEncoder(method=method, model_id="m", runtime=runtime)
        for got, want in ((encoder.encode_texts(TEXTS[:4]), texts), (encoder.encode_images(images), pictures)):
            assert min_cosine(got, want) >= 0.999, runtime
            np.testing.assert_allclose(got, want, atol=1e-5)
    runtimes = RunEncoder(method=method, model_id="m", runtime="onnx").runtimes
    assert runtimes["text"].startswith("onnxruntime") and runtimes["image"].startswith("onnxruntime")
    assert reference.runtimes["text"].startswith("torch") and reference.runtimes["image"].startswith("torch")


def test_a_tower_that_takes_strings_stays_on_pytorch_unless_onnx_is_demanded(monkeypatch):
    method = tiny_clip()

    def strings_only(texts):
        raise NotImplementedError

    monkeypatch.setattr(method.backbone, "text_inputs", strings_only)
    assert RunEncoder(method=method, model_id="m", runtime="auto").text_tower is None
    with pytest.raises(ValueError, match="the tiny text tower runs on PyTorch only, not on 'onnx'"):
        RunEncoder(method=method, model_id="m", runtime="onnx")
    with pytest.raises(KeyError, match="unknown tower runtime 'tensorrt'"):
        RunEncoder(method=tiny_clip(), model_id="m", runtime="tensorrt")


def test_min_cosine_counts_equal_zero_rows_as_agreeing_and_catches_a_differing_row():
    a = np.array([[0.0, 0.0], [1.0, 0.0]])
    assert min_cosine(a, a.copy()) == 1.0
    assert min_cosine(a, np.array([[0.0, 0.0], [0.0, 1.0]])) == 0.0
    assert min_cosine(a, np.array([[1.0, 0.0], [1.0, 0.0]])) == 0.0  # a zero row against a non-zero one


def test_the_service_puts_a_runs_query_towers_on_its_runtime():
    encoder = RunEncoder(method=tiny_clip(), model_id="m")
    served = _on_runtime(encoder, "onnx")
    assert served is not encoder and served.model_id == "m" and served.runtimes["text"].startswith("onnxruntime")
    np.testing.assert_allclose(served.encode_texts(TEXTS[:3]), encoder.encode_texts(TEXTS[:3]), atol=1e-5)
    assert _on_runtime(encoder, "torch") is encoder
    other = object()  # an encoder that is not a run's: served as it is
    assert _on_runtime(other, "auto") is other


def test_start_up_objects_are_frozen_out_of_the_collectors_sweeps():
    kept = [object() for _ in range(1000)]
    try:
        _freeze_start_up_objects()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()

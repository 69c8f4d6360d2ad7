"""Micro-batching of queries: same vectors as encoding alone, concurrent callers share a batch."""
import threading

import numpy as np
import pytest
import torch
from _searchkit import PaletteEncoder

from catalogclip.search.batching import BatchingEncoder


class _GatedEncoder(PaletteEncoder):
    """Its first text call blocks until released, so the next callers pile up in the queue."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def encode_texts(self, texts, entities=None):
        if not self.text_calls:
            self.entered.set()
            self.release.wait(30)
        return super().encode_texts(texts, entities)


def _in_threads(fn, args_list):
    results = [None] * len(args_list)

    def call(i):
        try:
            results[i] = fn(*args_list[i])
        except Exception as exc:  # handed back to the test
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(args_list))]
    for t in threads:
        t.start()
    return threads, results


def test_callers_waiting_together_are_encoded_as_one_batch_with_their_own_results():
    encoder = _GatedEncoder()
    batcher = BatchingEncoder(encoder, window_ms=1, max_batch=32, threads=1)
    first, first_result = _in_threads(batcher.encode_texts, [(["red shoes"],)])
    assert encoder.entered.wait(30)
    texts = ["green", "blue", "yellow", "black", "white", "red", "blue green"]
    threads, results = _in_threads(batcher.encode_texts, [([t],) for t in texts])
    while batcher.texts._queue.qsize() < len(texts):  # all seven are queued behind the blocked batch
        threading.Event().wait(0.01)
    encoder.release.set()
    for t in first + threads:
        t.join(30)
    assert [sorted(call[0]) for call in encoder.text_calls] == [["red shoes"], sorted(texts)]
    alone = PaletteEncoder()
    for text, result in zip(texts, results):
        np.testing.assert_allclose(result[0], alone.encode_texts([text])[0], atol=1e-6)
    assert batcher.stats() == {"text": {"batches": 2, "items": 8}, "image": {"batches": 0, "items": 0}}
    batcher.close()


def test_entities_travel_with_their_text_and_missing_ones_become_empty():
    encoder = PaletteEncoder(vocabs={"colour": ["Red"]})
    batcher = BatchingEncoder(encoder, window_ms=50)
    threads, results = _in_threads(batcher.encode_texts, [(["shoes"], [{"colour": "Red"}]), (["shoes"], None)])
    for t in threads:
        t.join(30)
    red = encoder.encode_texts(["shoes"], [{"colour": "Red"}])[0]
    plain = encoder.encode_texts(["shoes"], None)[0]
    np.testing.assert_allclose(results[0][0], red, atol=1e-6)
    np.testing.assert_allclose(results[1][0], plain, atol=1e-6)
    batcher.close()


def test_an_encoder_failure_reaches_every_waiting_caller_and_the_batcher_goes_on():
    class Failing(PaletteEncoder):
        def encode_texts(self, texts, entities=None):
            if any("boom" in t for t in texts):
                raise RuntimeError("encoder failed")
            return super().encode_texts(texts, entities)

    batcher = BatchingEncoder(Failing(), window_ms=1)
    with pytest.raises(RuntimeError, match="encoder failed"):
        batcher.encode_texts(["boom"])
    assert batcher.encode_texts(["red"]).shape == (1, PaletteEncoder().dim)
    batcher.close()


def test_a_real_text_tower_gives_the_same_vectors_batched_as_alone():
    from catalogclip.embed import RunEncoder
    from catalogclip.models.backbones.base import BackboneConfig
    from catalogclip.models.methods import build_method

    torch.manual_seed(0)
    encoder = RunEncoder(method=build_method("clip", BackboneConfig(spec="tiny")), model_id="tiny-test")
    texts = ["black puma running shoes", "red", "a much longer query about striped cotton shirts for men", "x"]
    batcher = BatchingEncoder(encoder, window_ms=200)
    threads, results = _in_threads(batcher.encode_texts, [([t],) for t in texts])
    for t in threads:
        t.join(60)
    for text, result in zip(texts, results):
        np.testing.assert_allclose(result[0], encoder.encode_texts([text])[0], atol=1e-5)
    assert batcher.texts.batches < len(texts)  # some queries shared a batch
    batcher.close()


def test_concurrent_images_share_a_batch_and_keep_their_own_vectors():
    from _searchkit import PALETTE
    from PIL import Image

    class GatedImages(PaletteEncoder):
        def __init__(self):
            super().__init__()
            self.calls, self.entered, self.release = [], threading.Event(), threading.Event()

        def encode_images(self, images):
            self.calls.append(len(images))
            if len(self.calls) == 1:
                self.entered.set()
                self.release.wait(30)
            return super().encode_images(images)

    encoder = GatedImages()
    batcher = BatchingEncoder(encoder, window_ms=1, threads=1)
    images = [Image.new("RGB", (8, 8), PALETTE[c]) for c in ("red", "green", "blue", "black")]
    first, _ = _in_threads(batcher.encode_images, [([images[0]],)])
    assert encoder.entered.wait(30)
    threads, results = _in_threads(batcher.encode_images, [([im],) for im in images[1:]])
    while batcher.images._queue.qsize() < 3:
        threading.Event().wait(0.01)
    encoder.release.set()
    for t in first + threads:
        t.join(30)
    assert encoder.calls == [1, 3]
    for image, result in zip(images[1:], results):
        np.testing.assert_allclose(result[0], PaletteEncoder().encode_images([image])[0], atol=1e-6)
    batcher.close()

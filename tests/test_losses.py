import math

import pytest
import torch
import torch.nn.functional as F

from catalogclip.losses import MAX_LOGIT_SCALE, contrastive_loss, multi_positive_cross_entropy, positive_mask


def test_two_by_two_clip_loss_matches_hand_computation():
    # a = b = identity rows: logits = scale * I. With scale 1 each row is softmax([1, 0]).
    a = torch.eye(2)
    loss = contrastive_loss(a, a, torch.tensor(0.0))
    expected = -math.log(math.e / (math.e + 1))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_asymmetric_logits_average_both_directions():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=-1)
    s = 1 / math.sqrt(2)
    # logits (scale 1): [[s, 0], [s, 1]]
    row_ab = [-math.log(math.exp(s) / (math.exp(s) + 1)), -math.log(math.e / (math.exp(s) + math.e))]
    # transposed logits: [[s, s], [0, 1]]
    row_ba = [-math.log(0.5), -math.log(math.e / (1 + math.e))]
    expected = (sum(row_ab) / 2 + sum(row_ba) / 2) / 2
    assert contrastive_loss(a, b, torch.tensor(0.0)).item() == pytest.approx(expected, rel=1e-6)


def test_multi_positive_row_takes_log_of_summed_positive_mass():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    z = math.exp(2) + math.exp(1) + 1
    expected = -math.log((math.exp(2) + math.exp(1)) / z)
    assert multi_positive_cross_entropy(logits, mask).item() == pytest.approx(expected, abs=1e-6)


def test_rows_without_positive_are_ignored():
    logits = torch.tensor([[2.0, 0.0], [5.0, -3.0]])
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert multi_positive_cross_entropy(logits, mask).item() == pytest.approx(expected, rel=1e-6)


def test_mask_with_unique_keys_equals_plain_clip_loss():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(2.0)
    keys = torch.arange(6)
    assert contrastive_loss(a, b, scale, positive_mask(keys)).item() == pytest.approx(contrastive_loss(a, b, scale).item(), rel=1e-6)


def test_same_product_rows_are_not_negatives():
    # rows 0 and 1 are two images of one product whose texts are identical
    image = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.0]]), dim=-1)
    text = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]), dim=-1)
    keys = torch.tensor([7, 7, 9])
    aware = contrastive_loss(image, text, torch.tensor(math.log(10.0)), positive_mask(keys))
    naive = contrastive_loss(image, text, torch.tensor(math.log(10.0)))
    # the naive loss treats the duplicate text as a hard negative: rows 0 and 1 cannot beat log 2
    assert naive.item() > 2 / 3 * math.log(2) / 2
    assert aware.item() < 0.05
    assert aware.item() < naive.item() / 5


def test_temperature_is_clamped_at_one_hundredth():
    a = torch.eye(2)
    clamped = contrastive_loss(a, a, torch.tensor(10.0))
    at_max = contrastive_loss(a, a, torch.tensor(MAX_LOGIT_SCALE))
    assert clamped.item() == pytest.approx(at_max.item())


def test_positive_mask_compares_keys():
    mask = positive_mask(torch.tensor([1, 2, 1]))
    assert mask.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]


def test_unequal_batches_need_a_mask():
    with pytest.raises(ValueError, match="same batch size"):
        contrastive_loss(torch.eye(2), torch.eye(3)[:, :2], torch.tensor(0.0))

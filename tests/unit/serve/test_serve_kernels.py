"""lora_sgmv (segmented) equals lora_reference (per-row loop)."""

import torch

from loraops.serve.lora_kernels import lora_reference, lora_sgmv, segments


def _weights(n=5, r=4, d_in=12, d_out=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(n, r, d_in, generator=g), torch.randn(n, d_out, r, generator=g)
    A[0], B[0] = 0, 0
    return A, B, torch.rand(n, generator=g) + 0.5


def test_sgmv_matches_reference_on_interleaved_slots():
    A, B, scale = _weights()
    x = torch.randn(17, 12)
    idx = torch.tensor([3, 0, 1, 3, 3, 2, 4, 0, 1, 1, 4, 2, 3, 0, 0, 2, 1])
    order, segs = segments(idx)
    torch.testing.assert_close(lora_sgmv(x, A, B, scale, order, segs), lora_reference(x, A, B, scale, idx))


def test_slot_zero_gives_zero_delta():
    A, B, scale = _weights()
    x = torch.randn(4, 12)
    idx = torch.zeros(4, dtype=torch.long)
    assert torch.equal(lora_sgmv(x, A, B, scale, *segments(idx)), torch.zeros(4, 10))


def test_inactive_slots_are_skipped():
    A, B, scale = _weights()
    x = torch.randn(6, 12)
    idx = torch.tensor([1, 2, 1, 2, 0, 2])
    active = [False, True, False, True, True]
    got = lora_sgmv(x, A, B, scale, *segments(idx), active=active)
    want = lora_reference(x, A, B, scale, idx)
    want[idx == 2] = 0
    torch.testing.assert_close(got, want)


def test_segments_group_tokens_by_slot():
    order, segs = segments(torch.tensor([2, 0, 2, 1]))
    assert segs == [(0, 0, 1), (1, 1, 2), (2, 2, 4)]
    assert order.tolist() == [1, 3, 0, 2]


def test_zero_padded_lower_rank_equals_its_own_product():
    A, B, scale = _weights(r=8)
    A[2, 3:], B[2, :, 3:] = 0, 0                            # a rank-3 adapter in a rank-8 slot
    x = torch.randn(3, 12)
    got = lora_sgmv(x, A, B, scale, *segments(torch.tensor([2, 2, 2])))
    torch.testing.assert_close(got, scale[2] * (x @ A[2, :3].T) @ B[2, :, :3].T)

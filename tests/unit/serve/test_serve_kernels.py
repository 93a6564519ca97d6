"""The fast multi-adapter LoRA kernels (lora_padded, lora_sgmv) equal lora_reference (per-row loop)."""

import pytest
import torch

from loraops.serve.lora_kernels import (PAD_SLACK, LoRATerm, PaddedGroups, StackCache, lora_padded, lora_reference,
                                        lora_sgmv, segments)


def _weights(n=5, r=4, d_in=12, d_out=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(n, r, d_in, generator=g), torch.randn(n, d_out, r, generator=g)
    A[0], B[0] = 0, 0
    return A, B, torch.rand(n, generator=g) + 0.5


def sgmv(x, A, B, scale, idx, ranks=None):
    return lora_sgmv(x, A, B, scale, *segments(idx), ranks=ranks)


def padded(x, A, B, scale, idx, ranks=None):
    groups = PaddedGroups.of(*segments(idx))
    rank = None if ranks is None else max(ranks[s] for s in idx.tolist() if s)
    return lora_padded(x, A, B, scale, groups, rank)


KERNELS = [sgmv, padded]

INTERLEAVED = torch.tensor([3, 0, 1, 3, 3, 2, 4, 0, 1, 1, 4, 2, 3, 0, 0, 2, 1])


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_reference_on_interleaved_slots(kernel):
    A, B, scale = _weights()
    x = torch.randn(17, 12)
    torch.testing.assert_close(kernel(x, A, B, scale, INTERLEAVED), lora_reference(x, A, B, scale, INTERLEAVED))


@pytest.mark.parametrize("kernel", KERNELS)
def test_zero_padded_lower_rank_equals_its_own_product(kernel):
    A, B, scale = _weights(r=8)
    A[2, 3:], B[2, :, 3:] = 0, 0                            # a rank-3 adapter in a rank-8 slot
    x = torch.randn(3, 12)
    got = kernel(x, A, B, scale, torch.tensor([2, 2, 2]), ranks=[0, 8, 3, 8, 8])
    torch.testing.assert_close(got, scale[2] * (x @ A[2, :3].T) @ B[2, :, :3].T)


@pytest.mark.parametrize("kernel", KERNELS)
def test_mixed_ranks_are_trimmed_to_the_largest_in_use(kernel):
    A, B, scale = _weights(r=8)
    A[1, 2:], B[1, :, 2:] = 0, 0                            # rank 2
    A[3, 5:], B[3, :, 5:] = 0, 0                            # rank 5
    x, idx = torch.randn(6, 12), torch.tensor([1, 3, 0, 3, 1, 1])
    got = kernel(x, A, B, scale, idx, ranks=[0, 2, 8, 5, 8])
    torch.testing.assert_close(got, lora_reference(x, A, B, scale, idx))


def test_slot_zero_gives_zero_delta_and_no_padded_layout():
    A, B, scale = _weights()
    idx = torch.zeros(4, dtype=torch.long)
    assert torch.equal(sgmv(torch.randn(4, 12), A, B, scale, idx), torch.zeros(4, 10))
    assert PaddedGroups.of(*segments(idx)) is None
    assert LoRATerm.of(idx).delta(torch.randn(4, 12), A, B, scale) is None


def test_slots_without_weights_on_a_module_are_skipped():
    A, B, scale = _weights()
    x = torch.randn(6, 12)
    idx = torch.tensor([1, 2, 1, 2, 0, 2])
    ranks = [0, 0, 4, 0, 4]                                 # slots 1 and 3 do not target this module
    want = lora_reference(x, A, B, scale, idx)
    want[idx == 1] = 0
    A[1], B[1] = 0, 0                                       # as the pool keeps them (zero)
    torch.testing.assert_close(sgmv(x, A, B, scale, idx, ranks), want)
    torch.testing.assert_close(LoRATerm.of(idx).delta(x, A, B, scale, ranks), want)
    assert LoRATerm.of(torch.tensor([1, 3, 0])).delta(x[:3], A, B, scale, ranks) is None


def test_segments_group_tokens_by_slot():
    order, segs = segments(torch.tensor([2, 0, 2, 1]))
    assert segs == [(0, 0, 1), (1, 1, 2), (2, 2, 4)]
    assert order.tolist() == [1, 3, 0, 2]


def test_padded_groups_place_each_token_in_its_slots_row():
    groups = PaddedGroups.of(*segments(torch.tensor([2, 0, 2, 1, 2])))
    assert groups.slots.tolist() == [1, 2] and groups.width == 3
    assert groups.valid.tolist() == [0, 3, 4, 5] and groups.tokens.tolist() == [3, 0, 2, 4]
    assert groups.gather[groups.valid].tolist() == groups.tokens.tolist()


def test_a_long_prompt_beside_decode_tokens_takes_the_segment_loop():
    # One slot with a 400-token prefill and 3 others with one decode token each: padding every
    # group to 400 rows would be 4x the work, so the term keeps the per-slot matmuls.
    A, B, scale = _weights()
    idx = torch.tensor([1] * 400 + [2, 3, 4])
    term = LoRATerm.of(idx)
    assert term.padded is None and 4 * 400 > 2 * len(idx) + PAD_SLACK
    x = torch.randn(len(idx), 12)
    torch.testing.assert_close(term.delta(x, A, B, scale), lora_reference(x, A, B, scale, idx))
    assert LoRATerm.of(torch.tensor([1] * 40 + [2, 3, 4])).padded is not None


def test_one_slot_for_every_token_takes_two_plain_matmuls():
    """Batch 1 and a batch all on one adapter, with and without term weights (compositions);
    a step that mixes slots or has base tokens does not take that path (a bad adapter's NaN
    would reach rows that do not use it)."""
    A, B, scale = _weights()
    for idx in (torch.tensor([3]), torch.tensor([2, 2, 2, 2, 2])):
        term = LoRATerm.of(idx)
        assert term.single
        x = torch.randn(len(idx), 12)
        torch.testing.assert_close(term.delta(x, A, B, scale), lora_reference(x, A, B, scale, idx))
        w = torch.rand(len(idx)) + 0.5
        torch.testing.assert_close(LoRATerm.of(idx, w).delta(x, A, B, scale),
                                   w[:, None] * lora_reference(x, A, B, scale, idx))
    assert not LoRATerm.of(torch.tensor([2, 0, 2])).single and not LoRATerm.of(torch.tensor([2, 1])).single


def test_stacked_slots_are_reused_until_the_pool_writes():
    """A module's StackCache serves the same stacks step after step, and recomputes them once a
    slot's weights change (as SlotPool writes them: in place)."""
    A, B, scale = _weights()
    cache = StackCache()
    idx = torch.tensor([1, 2, 2, 4, 1, 1, 0, 2, 4, 4, 1, 2, 2, 4, 1, 1, 2])
    term = LoRATerm.of(idx)
    x = torch.randn(len(idx), 12)
    first = term.delta(x, A, B, scale, stacks=cache)
    assert torch.equal(term.delta(x, A, B, scale, stacks=cache), first)
    assert len(cache._entries) == 1
    A[2].copy_(torch.randn(4, 12))                          # a new adapter in slot 2
    B[2, :, :2].zero_()
    scale[4] = 3.0
    torch.testing.assert_close(term.delta(x, A, B, scale, stacks=cache), lora_reference(x, A, B, scale, idx))

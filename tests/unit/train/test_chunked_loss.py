import pytest
import torch
import torch.nn.functional as F

from loraops.train.loss import chunked_cross_entropy, select_loss_positions


def reference(hidden, weight, targets, softcap):
    logits = hidden @ weight.T  # full [N, V] logits: what the chunked loss avoids
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_loss_matches_full_logits_in_value_and_gradients(softcap, chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(67, 32, generator=g).requires_grad_()
    weight = (torch.randn(301, 32, generator=g) * 0.3).requires_grad_()
    targets = torch.randint(0, 301, (67,), generator=g)

    ours = chunked_cross_entropy(hidden, weight, targets, chunk=chunk, softcap=softcap)
    (ours * 0.5).backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = reference(hidden, weight, targets, softcap)
    (ref * 0.5).backward()

    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, hidden.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, weight.grad, rtol=1e-5, atol=1e-5)


def test_frozen_head_gets_no_gradient_and_hidden_still_does():
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(20, 8)
    chunked_cross_entropy(hidden, weight, torch.randint(0, 20, (10,)), chunk=3).backward()
    assert hidden.grad is not None and weight.grad is None


def test_no_loss_positions_give_zero_loss_that_backpropagates():
    hidden = torch.randn(0, 8, requires_grad=True)
    loss = chunked_cross_entropy(hidden, torch.randn(20, 8), torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0


def test_loss_positions_are_shifted_and_ignore_masked_labels():
    hidden = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)
    labels = torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])
    h, t = select_loss_positions(hidden, labels)
    # row 0: positions 1 and 2 predict tokens 7 and 8; row 1: position 0 predicts 5
    assert h.flatten().tolist() == [1.0, 2.0, 4.0]
    assert t.tolist() == [7, 8, 5]

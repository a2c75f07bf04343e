"""R2D2's n-step sequence targets and value rescaling, against brute force."""

from __future__ import annotations

import pytest
import torch

from rllib_drqn.losses import h_inverse, h_rescale, n_step_sequence_targets, sequence_td_loss


def brute_force_targets(rewards, terminateds, lengths, values, gamma, n):
    batch, time = rewards.shape
    targets = torch.zeros(batch, time, dtype=torch.float64)
    for b in range(batch):
        for t in range(lengths[b]):
            k = min(n, lengths[b] - t)
            g = sum(gamma**i * float(rewards[b, t + i]) for i in range(k))
            last = t + k - 1
            if not terminateds[b, last]:
                g += gamma**k * float(values[b, last])
            targets[b, t] = g
    return targets


@pytest.mark.parametrize("n_step", [1, 3, 5])
def test_n_step_targets_match_brute_force_with_padding_and_terminals(n_step: int) -> None:
    generator = torch.Generator().manual_seed(n_step)
    rewards = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    values = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    lengths = [8, 5, 2]
    valid = torch.zeros(3, 8, dtype=torch.bool)
    terminateds = torch.zeros(3, 8, dtype=torch.bool)
    for b, length in enumerate(lengths):
        valid[b, :length] = True
    terminateds[1, 4] = True  # row 1 ends its episode at its last valid step
    targets = n_step_sequence_targets(
        rewards=rewards * valid,
        terminateds=terminateds,
        valid=valid,
        next_values=values,
        gamma=0.9,
        n_step=n_step,
    )
    expected = brute_force_targets(rewards * valid, terminateds, lengths, values, 0.9, n_step)
    torch.testing.assert_close(targets, expected)


def test_one_step_targets_are_dqns() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[10.0, 20.0, 30.0]])
    terminateds = torch.tensor([[False, False, True]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    targets = n_step_sequence_targets(
        rewards=rewards,
        terminateds=terminateds,
        valid=valid,
        next_values=values,
        gamma=0.5,
        n_step=1,
    )
    torch.testing.assert_close(targets, torch.tensor([[6.0, 12.0, 3.0]]))


def test_value_rescaling_is_invertible_and_squashes() -> None:
    x = torch.linspace(-1000, 1000, 2001, dtype=torch.float64)
    torch.testing.assert_close(h_inverse(h_rescale(x)), x)
    assert h_rescale(torch.tensor(100.0)) < 11.0
    assert h_rescale(torch.tensor(0.0)) == 0.0


def test_rescaled_targets_apply_h_to_the_unrescaled_return() -> None:
    rewards = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    raw_values = torch.tensor([[50.0, 80.0]], dtype=torch.float64)
    valid = torch.ones(1, 2, dtype=torch.bool)
    terminateds = torch.zeros(1, 2, dtype=torch.bool)
    targets = n_step_sequence_targets(
        rewards=rewards,
        terminateds=terminateds,
        valid=valid,
        next_values=h_rescale(raw_values),
        gamma=0.99,
        n_step=2,
        rescale_eps=1e-3,
    )
    expected = h_rescale(
        torch.tensor([[1 + 0.99 + 0.99**2 * 80.0, 1 + 0.99 * 80.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(targets, expected)


def test_bad_n_step_raises() -> None:
    with pytest.raises(ValueError, match="n_step must be >= 1, got 0"):
        n_step_sequence_targets(
            rewards=torch.zeros(1, 2),
            terminateds=torch.zeros(1, 2, dtype=torch.bool),
            valid=torch.ones(1, 2, dtype=torch.bool),
            next_values=torch.zeros(1, 2),
            gamma=0.9,
            n_step=0,
        )


def test_sequence_loss_only_counts_trained_steps_and_uses_double_q() -> None:
    q = torch.zeros(1, 3, 2, requires_grad=True)
    next_online = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])
    next_target = torch.tensor([[[5.0, 2.0], [5.0, 2.0], [5.0, 2.0]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    trained = torch.tensor([[False, True, True]])  # first step is burn-in
    loss, td, _ = sequence_td_loss(
        q_values=q,
        next_online_q=next_online,
        next_target_q=next_target,
        actions=torch.zeros(1, 3),
        rewards=torch.zeros(1, 3),
        terminateds=torch.zeros(1, 3, dtype=torch.bool),
        valid=valid,
        trained=trained,
        weights=torch.ones(1, 3),
        gamma=1.0,
        n_step=1,
        huber=False,
    )
    # Double-Q: the online argmax (action 1) picks the target's 2.0, not its max 5.0.
    assert torch.allclose(td, torch.tensor([[0.0, 2.0, 2.0]]))
    assert loss.item() == pytest.approx(4.0)
    loss.backward()
    assert q.grad[0, 0].abs().sum() == 0

"""R2D2's sequence targets: n-step returns inside a sequence and value rescaling.

RLlib's ``DQNTorchLearner`` loss takes 1-step targets (its replay computes n-step rewards only
for single transitions, and asserts ``n_step == 1`` when it samples sequences). R2D2
(Kapturowski et al. 2019, https://openreview.net/forum?id=r1lyTjAqYX) computes n-step targets
inside each sequence instead, and learns Q in a rescaled space, h(x) = sign(x)(sqrt(|x|+1) - 1)
+ eps * x (Pohlen et al. 2018, https://arxiv.org/abs/1805.11593). This module is that target
computation as plain tensor functions; ``rllib_drqn.learner`` calls them when
``n_step > 1`` or ``value_rescaling`` is set, and uses RLlib's loss otherwise.
"""

from __future__ import annotations

import torch

__all__ = ["h_inverse", "h_rescale", "n_step_sequence_targets", "sequence_td_loss"]


def h_rescale(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x: squashes large returns (R2D2)."""
    return torch.sign(x) * (torch.sqrt(torch.abs(x) + 1.0) - 1.0) + eps * x


def h_inverse(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """The exact inverse of :func:`h_rescale` (Pohlen et al. 2018, Proposition A.2)."""
    root = torch.sqrt(1.0 + 4.0 * eps * (torch.abs(x) + 1.0 + eps))
    return torch.sign(x) * (((root - 1.0) / (2.0 * eps)) ** 2 - 1.0)


def n_step_sequence_targets(
    *,
    rewards: torch.Tensor,
    terminateds: torch.Tensor,
    valid: torch.Tensor,
    next_values: torch.Tensor,
    gamma: float,
    n_step: int,
    rescale_eps: float | None = None,
) -> torch.Tensor:
    """Targets ``[B, T]`` of n-step Q-learning inside each window.

    For step t of a window with ``L`` valid steps the horizon is ``k = min(n_step, L - t)``:
    ``G = sum_{i<k} gamma^i r_{t+i} + gamma^k (1 - terminated_{t+k-1}) V(o_{t+k})``. Replay
    ends each window with up to ``n_step - 1`` lookahead steps past its trained ones
    (``rllib_drqn.replay.LOOKAHEAD``), so a trained step's horizon is the full n unless the
    episode ends (or its data so far does) within n steps. A terminal step can only be a
    window's last valid step (windows never cross episode ends), so the horizon reaches it
    whenever it lies within n steps; after a truncation the target bootstraps from the last
    observation.

    Args:
        rewards: ``[B, T]`` rewards of the action at each step.
        terminateds: ``[B, T]``, True where ``o_{t+1}`` is terminal.
        valid: ``[B, T]`` bool, False on zero-padded steps (True on lookahead steps).
        next_values: ``[B, T]`` bootstrap values ``V(o_{t+1})`` (double-Q: the target net's
            value of the online net's argmax), in rescaled space when ``rescale_eps`` is set.
        gamma: Discount.
        n_step: The return horizon n >= 1.
        rescale_eps: When set, ``next_values`` are rescaled values: they are mapped back with
            h^-1 and the target is mapped with h (R2D2's value rescaling).

    Returns:
        The targets, detached from the graph.
    """
    if n_step < 1:
        raise ValueError(f"n_step must be >= 1, got {n_step}.")
    with torch.no_grad():
        batch, time = rewards.shape
        values = next_values if rescale_eps is None else h_inverse(next_values, rescale_eps)
        lengths = valid.long().sum(dim=1, keepdim=True)  # [B, 1]
        steps = torch.arange(time, device=rewards.device).unsqueeze(0)  # [1, T]
        horizon = torch.clamp(torch.minimum(lengths - steps, torch.tensor(n_step)), min=1)
        padded_rewards = torch.cat([rewards, rewards.new_zeros(batch, n_step)], dim=1)
        returns = torch.zeros_like(rewards)
        for i in range(n_step):
            within = (i < horizon).to(rewards.dtype)
            returns = returns + (gamma**i) * within * padded_rewards[:, i : i + time]
        last = torch.clamp(steps + horizon - 1, max=time - 1)  # index of V(o_{t+k}) in [B, T]
        bootstrap = values.gather(1, last) * (1.0 - terminateds.gather(1, last).to(values.dtype))
        targets = returns + gamma ** horizon.to(values.dtype) * bootstrap
        if rescale_eps is not None:
            targets = h_rescale(targets, rescale_eps)
        return targets * valid.to(targets.dtype)


def sequence_td_loss(
    *,
    q_values: torch.Tensor,
    next_online_q: torch.Tensor | None,
    next_target_q: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    terminateds: torch.Tensor,
    valid: torch.Tensor,
    trained: torch.Tensor,
    weights: torch.Tensor,
    gamma: float,
    n_step: int,
    huber: bool = True,
    rescale_eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """R2D2's loss over ``[B, T]`` sequences: n-step (double-)Q targets, optionally rescaled.

    Args:
        q_values: ``[B, T, A]`` online Q(o_t, .).
        next_online_q: ``[B, T, A]`` online Q(o_{t+1}, .) for the double-Q argmax, or None
            for the plain max over the target net.
        next_target_q: ``[B, T, A]`` target-net Q(o_{t+1}, .).
        actions: ``[B, T]`` actions taken.
        rewards, terminateds: ``[B, T]``.
        valid: ``[B, T]`` bool, False on padding (where n-step horizons end).
        trained: ``[B, T]`` bool, the steps that carry loss (valid, past the burn-in, before
            the lookahead).
        weights: ``[B, T]`` importance-sampling weights.
        gamma, n_step, rescale_eps: As in :func:`n_step_sequence_targets`.
        huber: Huber loss (RLlib's default) instead of squared error.

    Returns:
        The mean loss over trained steps, the per-step ``|TD error|`` ``[B, T]`` (zero where
        not trained, so priorities only see trained steps) and the selected Q-values.
    """
    q_selected = q_values.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    selector = next_target_q if next_online_q is None else next_online_q
    best = selector.argmax(dim=-1, keepdim=True)
    next_values = next_target_q.gather(-1, best).squeeze(-1)
    targets = n_step_sequence_targets(
        rewards=rewards,
        terminateds=terminateds,
        valid=valid,
        next_values=next_values,
        gamma=gamma,
        n_step=n_step,
        rescale_eps=rescale_eps,
    )
    loss_fn = torch.nn.functional.huber_loss if huber else torch.nn.functional.mse_loss
    per_step = loss_fn(q_selected, targets, reduction="none") * weights
    mask = trained.to(per_step.dtype)
    loss = (per_step * mask).sum() / mask.sum().clamp(min=1.0)
    td_error = (q_selected - targets).abs().detach() * mask
    return loss, td_error, q_selected

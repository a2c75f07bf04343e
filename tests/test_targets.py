"""Every trained step of a replayed window gets its full n-step target.

A known episode goes through the real data path (replay sampling in each update mode, the
one-pass batching, the learner's choice of trained steps, the sequence loss), and the target
of every trained position, the window's last included, is checked against the n-step return
computed by hand from the stored episode.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rllib_drqn.batching import AddSequencesToBatch
from rllib_drqn.learner import trained_steps
from rllib_drqn.losses import sequence_td_loss
from rllib_drqn.module import DRQNTorchRLModule
from rllib_drqn.replay import DRQNEpisodeReplayBuffer, DRQNPrioritizedEpisodeReplayBuffer

GAMMA = 0.9
SEQ_LEN = 10
CELL = 4


def known_episode(length: int, *, terminated: bool, truncated: bool = False) -> SingleAgentEpisode:
    """Observation at step t is [t]; the reward of step t is t + 1."""
    return SingleAgentEpisode(
        observations=[np.array([t], np.float32) for t in range(length + 1)],
        actions=[0] * length,
        rewards=[float(t + 1) for t in range(length)],
        extra_model_outputs={
            Columns.STATE_OUT: [
                {"h": np.zeros(CELL, np.float32), "c": np.zeros(CELL, np.float32)}
                for _ in range(length)
            ]
        },
        terminated=terminated,
        truncated=truncated,
        len_lookback_buffer=0,
    ).to_numpy()


def value_of(observation: torch.Tensor) -> torch.Tensor:
    """A bootstrap value that names its observation: V(o_t) = 1000 + t."""
    return 1000.0 + observation[..., 0]


def full_n_step_target(episode: SingleAgentEpisode, t: int, n_step: int) -> float:
    """sum_{i<k} gamma^i r_{t+i} + gamma^k V(o_{t+k}), k = min(n, steps left in the episode)."""
    rewards = episode.get_rewards()
    k = min(n_step, len(episode) - t)
    target = sum(GAMMA**i * rewards[t + i] for i in range(k))
    if not (episode.is_terminated and t + k == len(episode)):
        target += GAMMA**k * (1000.0 + (t + k))
    return float(target)


def module(max_seq_len: int, burn_in_len: int = 0) -> DRQNTorchRLModule:
    return DRQNTorchRLModule(
        observation_space=gym.spaces.Box(-1e6, 1e6, (1,), np.float32),
        action_space=gym.spaces.Discrete(2),
        model_config={
            "lstm_cell_size": CELL,
            "fcnet_hiddens": [4],
            "max_seq_len": max_seq_len,
            "burn_in_len": burn_in_len,
        },
    )


def checked_targets(
    buffer: DRQNEpisodeReplayBuffer,
    episodes: dict[str, SingleAgentEpisode],
    *,
    n_step: int,
    burn_in_len: int = 0,
    num_sequences: int = 64,
) -> int:
    """Samples windows, computes their targets as the learner does; returns positions checked."""
    windows = buffer.sample(
        num_items=num_sequences * SEQ_LEN,
        batch_length_T=SEQ_LEN,
        lookback=1,
        min_batch_length_T=burn_in_len,
        sample_episodes=True,
        n_step=n_step,
    )
    sources = [episodes[source_id] for source_id in buffer.last_sampled_source_ids]
    starts = [window.t_started for window in windows]
    learner_module = MultiRLModule()
    learner_module.add_module(DEFAULT_MODULE_ID, module(SEQ_LEN, burn_in_len))
    piece = AddSequencesToBatch(lookahead=n_step - 1)
    batch = piece(rl_module=learner_module, batch={}, episodes=windows)
    batch = batch[DEFAULT_MODULE_ID]
    batch = {k: torch.as_tensor(v) for k, v in batch.items() if not isinstance(v, dict)}
    trained = trained_steps(batch, burn_in_len=burn_in_len)
    assert trained.shape[1] == SEQ_LEN + n_step - 1  # The same time axis in every batch.
    next_values = value_of(batch[Columns.NEXT_OBS])
    q_values = torch.zeros(*trained.shape, 2)
    _, td_error, _ = sequence_td_loss(
        q_values=q_values,
        next_online_q=None,
        next_target_q=next_values.unsqueeze(-1).expand(-1, -1, 2),
        actions=batch[Columns.ACTIONS],
        rewards=batch[Columns.REWARDS],
        terminateds=batch[Columns.TERMINATEDS],
        valid=batch[Columns.LOSS_MASK].bool(),
        trained=trained,
        weights=torch.ones(trained.shape),
        gamma=GAMMA,
        n_step=n_step,
        huber=False,
    )
    checked = 0
    for row, (source, start) in enumerate(zip(sources, starts, strict=True)):
        trained_len = min(SEQ_LEN, len(source) - start)
        expected_trained = [burn_in_len <= t < trained_len for t in range(trained.shape[1])]
        assert trained[row].tolist() == expected_trained, (row, start, len(source))
        for t in range(burn_in_len, trained_len):
            # q = 0, so |TD error| is the target itself.
            expected = full_n_step_target(source, start + t, n_step)
            actual = float(td_error[row, t])
            assert actual == pytest.approx(expected, rel=1e-5), (
                f"window from step {start} of a {len(source)}-step episode, position {t}: "
                f"target {actual:.3f}, full {n_step}-step return {expected:.3f}"
            )
            checked += 1
    return checked


def filled(buffer: DRQNEpisodeReplayBuffer) -> dict[str, SingleAgentEpisode]:
    """A terminated, a truncated and a short episode, by id."""
    episodes = [
        known_episode(37, terminated=True),
        known_episode(25, terminated=False, truncated=True),
        known_episode(6, terminated=True),
    ]
    buffer.add(episodes)
    return {episode.id_: episode for episode in episodes}


@pytest.mark.parametrize("n_step", [3, 5])
@pytest.mark.parametrize("update_mode", ["random", "stored"])
def test_every_trained_position_gets_the_full_n_step_return(update_mode: str, n_step: int) -> None:
    buffer = DRQNEpisodeReplayBuffer(10_000, update_mode=update_mode, seed=0)
    episodes = filled(buffer)
    assert checked_targets(buffer, episodes, n_step=n_step) > 300


def test_full_targets_after_burn_in() -> None:
    buffer = DRQNEpisodeReplayBuffer(10_000, update_mode="stored", seed=1)
    episodes = filled(buffer)
    assert checked_targets(buffer, episodes, n_step=3, burn_in_len=4) > 200


def test_full_targets_in_sequential_chunks() -> None:
    """A chunk's lookahead overlaps the next chunk's first steps; every chunk is checked."""
    buffer = DRQNEpisodeReplayBuffer(10_000, update_mode="sequential", seed=2)
    episodes = filled(buffer)
    checked = sum(checked_targets(buffer, episodes, n_step=3, num_sequences=3) for _ in range(8))
    assert checked > 100


def test_full_targets_with_prioritized_replay() -> None:
    buffer = DRQNPrioritizedEpisodeReplayBuffer(10_000, update_mode="stored", seed=3)
    episodes = filled(buffer)
    assert checked_targets(buffer, episodes, n_step=3) > 300

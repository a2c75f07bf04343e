"""Ready configs for flickering Atari, each default with its source.

The paper's 2015 settings (Hausknecht & Stone, https://arxiv.org/abs/1507.06527, from the
authors' code: github.com/mhauskn/dqn, branch ``recurrent``), and the modern defaults that
replace some of them here (paper -> here: why):

- Adadelta lr 0.1 -> Adam lr 1e-4: RLlib's DQN learner is Adam; 1e-4 is PFRL's DRQN rate.
- MSE loss -> Huber loss: RLlib's DQN default, robust to large TD errors.
- plain Q-learning target -> double-Q target (van Hasselt et al. 2016): less overestimation.
- one update per env step -> one per 4 env steps: Nature DQN's and PFRL's update interval.
- epsilon 1.0 -> 0.1 over 1M updates -> 1.0 -> 0.01 over 250k env steps: Nature DQN's 1M
  frames are 250k agent steps; 0.01 as PFRL.
- target copy every 10k updates -> every 10k env steps: RLlib counts env steps.
- Kept from the paper: replay of 400k transitions (uint8: about 2.9 GB), learning from 50k,
  32 sequences of 10 per update, gradient clip 10, one frame per step, LSTM 512.

Functions return fresh configs; chain more settings onto them as on any ``AlgorithmConfig``.
"""

from __future__ import annotations

from typing import Any

from rllib_drqn.baselines import NATURE_CONV_FILTERS, FrameStackDQNConfig
from rllib_drqn.config import PRIORITIZED_REPLAY_BUFFER_TYPE, DRQNConfig
from rllib_drqn.envs import FLICKERING_ATARI

__all__ = ["dqn_frame_stack", "drqn_paper", "drqn_sequential", "r2d2"]

#: Settings shared by every Atari preset (see the module docstring for their sources).
_ATARI_TRAINING: dict[str, Any] = {
    "lr": 1e-4,
    "gamma": 0.99,
    "grad_clip": 10.0,
    "num_steps_sampled_before_learning_starts": 50_000,
    "target_network_update_freq": 10_000,
    "epsilon": [(0, 1.0), (250_000, 0.01)],
    "double_q": True,
}
_REPLAY_CAPACITY = 400_000
# 1 env runner x 4 envs x 1 step per sample = one learner update per 4 env steps.
_ENV_RUNNERS: dict[str, Any] = {
    "num_env_runners": 1,
    "num_envs_per_env_runner": 4,
    "rollout_fragment_length": 1,
}


def _atari_env(game: str, flicker_prob: float, frame_stack: int = 1) -> dict[str, Any]:
    return {"game": game, "flicker_prob": flicker_prob, "frame_stack": frame_stack}


def drqn_paper(game: str = "Pong", flicker_prob: float = 0.5) -> DRQNConfig:
    """DRQN as in the paper: one frame in, LSTM 512, unroll 10, bootstrapped random updates."""
    config = DRQNConfig()
    return (
        config.environment(FLICKERING_ATARI, env_config=_atari_env(game, flicker_prob))
        .env_runners(**_ENV_RUNNERS)
        .training(
            update_mode="random",
            # Pinned: DRQNConfig's own defaults are for small tasks (3-step targets).
            n_step=1,
            num_sequences_per_batch=32,
            replay_buffer_config={**config.replay_buffer_config, "capacity": _REPLAY_CAPACITY},
            **_ATARI_TRAINING,
        )
        .rl_module(model_config={"lstm_cell_size": 512, "max_seq_len": 10})
        # Pinned: DRQNConfig reports the mean of 20 episodes, RLlib's DQN (and the YAMLs' stop
        # returns) 100.
        .reporting(metrics_num_episodes_for_smoothing=100)
    )


def drqn_sequential(game: str = "Pong", flicker_prob: float = 0.5) -> DRQNConfig:
    """The paper's bootstrapped sequential updates: whole episodes, LSTM state carried."""
    return drqn_paper(game, flicker_prob).training(update_mode="sequential")


def dqn_frame_stack(
    frames: int = 10, game: str = "Pong", flicker_prob: float = 0.5
) -> FrameStackDQNConfig:
    """The memory-less baseline: Nature DQN seeing the last ``frames`` frames.

    ``frames=4`` is Nature DQN's input; ``frames=10`` is the paper's flickering-Pong baseline
    (it sees as far back as DRQN's 10-step unroll).
    """
    config = FrameStackDQNConfig()
    return (
        config.environment(FLICKERING_ATARI, env_config=_atari_env(game, flicker_prob, frames))
        .env_runners(**_ENV_RUNNERS)
        .training(
            train_batch_size_per_learner=32,
            n_step=1,
            replay_buffer_config={
                "type": "EpisodeReplayBuffer",
                "capacity": _REPLAY_CAPACITY,
            },
            **_ATARI_TRAINING,
        )
        .rl_module(
            model_config={
                "conv_filters": NATURE_CONV_FILTERS,
                "conv_activation": "relu",
                "head_fcnet_hiddens": [512],
            }
        )
    )


def r2d2(game: str = "Pong", flicker_prob: float = 0.5) -> DRQNConfig:
    """R2D2 (Kapturowski et al. 2019, https://openreview.net/forum?id=r1lyTjAqYX) on one machine.

    From the paper: stored state with a burn-in of 40 of 80 steps, 5-step double-Q targets,
    dueling head, prioritized sequence replay (priority exponent 0.9, eta = 0.9 max/mean mix, no
    importance weights), value rescaling h(x), gamma 0.997, 64 sequences per update, Adam lr 1e-4
    with eps 1e-3, target network every 2,500 updates (10k env steps at one update per 4
    steps). eps = 1e-3 in h(x) is RLlib's former R2D2 value (the paper's could not be read).
    R2D2's actors (Ape-X's, Horgan et al. 2018): remote env runners sample continuously while
    the learner trains (``async_training``, ``rllib_drqn.async_training``), and runner i of N
    acts with the fixed epsilon 0.4 ** (1 + 7 i / (N - 1)) (``per_runner_epsilon``).
    Not from the paper: 2 env runners x 2 envs (half a CPU each, so it runs on 2 cores; R2D2
    ran 256 actors: raise ``num_env_runners`` on a bigger machine or a cluster), the replay
    ratio held at the synchronous preset's one update of 64 sequences per 4 env steps
    (``replay_ratio=None``), and 400k replay steps instead of 1M sequences.
    """
    return (
        drqn_paper(game, flicker_prob)
        # Fragment "auto" is 1 step for DRQN: n-step returns are built inside sequences.
        .env_runners(
            num_env_runners=2,
            num_envs_per_env_runner=2,
            num_cpus_per_env_runner=0.5,
            rollout_fragment_length="auto",
        )
        .training(
            async_training=True,
            replay_ratio=None,  # The sync loop's one update per sample round of 4 env steps.
            per_runner_epsilon=True,
            per_runner_epsilon_base=0.4,
            per_runner_epsilon_alpha=7.0,
            update_mode="stored",
            burn_in_len=40,
            n_step=5,
            double_q=True,
            dueling=True,
            value_rescaling=True,
            value_rescaling_epsilon=1e-3,
            gamma=0.997,
            lr=1e-4,
            adam_epsilon=1e-3,
            num_sequences_per_batch=64,
            replay_buffer_config={
                "type": PRIORITIZED_REPLAY_BUFFER_TYPE,
                "capacity": _REPLAY_CAPACITY,
                "alpha": 0.9,
                "beta": 0.0,
                "priority_eta": 0.9,
            },
        )
        .rl_module(model_config={"lstm_cell_size": 512, "max_seq_len": 80})
    )

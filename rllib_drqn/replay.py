"""Sequence replay for DRQN's update modes, on RLlib's episode replay buffer.

Why a buffer subclass: RLlib 2.60's DQN asks its buffer for ``num_items`` *timesteps*
(``EpisodeReplayBuffer._sample_episodes`` counts each sequence as T+1 of them) and always keeps
the LSTM state stored while acting. DRQN needs batches counted in sequences, zero-state or
whole-episode sampling, and replay without the 4 KB-per-step LSTM state when the update mode
does not read it. Those are all decisions of the buffer's ``add``/``sample``; storage, eviction
and metrics stay RLlib's.

Update modes (Hausknecht & Stone 2015, section 4; Kapturowski et al. 2019 for ``stored``):

- ``random``: sequences of ``max_seq_len`` steps from uniformly random starts inside episodes.
  No LSTM state is stored, so RLlib's ``AddStatesFromEpisodesToBatch`` connector fills the
  initial state with the module's zero state.
- ``sequential``: a fixed number of episode cursors; each ``sample`` returns the next chunk of
  each cursor's episode, from t=0 to the episode's end. The learner carries the LSTM state from
  one chunk to the next (``rllib_drqn.learner``); the buffer tags every chunk with its cursor slot
  and start step so the learner can match states to rows.
- ``stored``: like ``random`` but the acting state is kept in replay and used as the initial
  state (R2D2's stored state).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.rllib.core import DEFAULT_AGENT_ID, DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.utils import force_list
from ray.rllib.utils.annotations import override
from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer

__all__ = [
    "SEQ_SLOT",
    "SEQ_START",
    "UPDATE_MODES",
    "DRQNEpisodeReplayBuffer",
]

UPDATE_MODES = ("random", "sequential", "stored")

#: Per-step columns on sequential chunks: which cursor slot the chunk belongs to, and the
#: timestep inside its episode where the chunk starts (0 means "zero initial state").
SEQ_SLOT = "drqn_seq_slot"
SEQ_START = "drqn_seq_start"


@dataclass
class _Cursor:
    """Where one sequential-update slot stands: an episode and the next step to train on."""

    episode_id: str
    position: int


class DRQNEpisodeReplayBuffer(EpisodeReplayBuffer):
    """RLlib's ``EpisodeReplayBuffer`` sampling DRQN sequences by update mode.

    Args:
        capacity: Timesteps kept; whole oldest episodes are evicted beyond it (as RLlib does).
        update_mode: One of ``"random"``, ``"sequential"``, ``"stored"``.
        seed: Seeds the sampling generator, so replay draws repeat under a fixed seed.
        **kwargs: Passed on to ``EpisodeReplayBuffer``.
    """

    def __init__(
        self,
        capacity: int = 10000,
        *,
        update_mode: str = "random",
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        if update_mode not in UPDATE_MODES:
            raise ValueError(
                f"Unknown update_mode {update_mode!r}; use one of {list(UPDATE_MODES)}."
            )
        super().__init__(capacity, **kwargs)
        self.update_mode = update_mode
        self.rng = np.random.default_rng(seed)
        self._cursors: list[_Cursor | None] = []

    @property
    def stores_state(self) -> bool:
        """Only R2D2's stored-state mode reads the acting LSTM state back from replay."""
        return self.update_mode == "stored"

    @override(EpisodeReplayBuffer)
    def add(self, episodes: list[SingleAgentEpisode] | SingleAgentEpisode) -> None:
        episodes = force_list(episodes)
        if not self.stores_state:
            episodes = [_without_lstm_state(episode) for episode in episodes]
        super().add(episodes)

    @override(EpisodeReplayBuffer)
    def sample(
        self,
        num_items: int | None = None,
        *,
        batch_length_T: int | None = None,
        lookback: int = 0,
        min_batch_length_T: int = 0,
        sample_episodes: bool | None = False,
        n_step: int | tuple | None = None,
        **kwargs: Any,
    ) -> Any:
        """Returns ``ceil(num_items / batch_length_T)`` sequences for a recurrent module.

        DQN's ``training_step`` passes ``num_items=total_train_batch_size`` and
        ``batch_length_T=max_seq_len`` (0 for a stateless module, which gets RLlib's
        behaviour unchanged). ``DRQNConfig`` sets the train batch size to
        ``num_sequences_per_batch * max_seq_len``, so this returns that many sequences.
        """
        if not (sample_episodes and batch_length_T):
            return super().sample(
                num_items,
                batch_length_T=batch_length_T,
                lookback=lookback,
                min_batch_length_T=min_batch_length_T,
                sample_episodes=sample_episodes,
                n_step=n_step,
                **kwargs,
            )
        if n_step not in (None, 1):
            raise ValueError(
                f"DRQN samples sequences with 1-step targets; got n_step={n_step!r}. "
                "Set config.training(n_step=1)."
            )
        if len(self._indices) == 0:
            raise RuntimeError(
                "The replay buffer is empty; set num_steps_sampled_before_learning_starts > 0."
            )
        num_sequences = max(1, math.ceil((num_items or self.batch_size_B) / batch_length_T))
        if self.update_mode == "sequential":
            sequences = self._sample_sequential_chunks(num_sequences, batch_length_T, lookback)
        else:
            sequences = self._sample_random_sequences(
                num_sequences, batch_length_T, lookback, min_batch_length_T
            )
        for sequence in sequences:
            # DQNTorchLearner reads `n_step` and `weights` per step (prioritized replay
            # weights; all ones here), as RLlib's own sequence sampling provides them.
            _add_constant_column(sequence, "n_step", 1, lookback)
            _add_constant_column(sequence, "weights", 1.0, lookback)
        self._record_sample_metrics(sequences)
        return sequences

    def _sample_random_sequences(
        self, num_sequences: int, seq_len: int, lookback: int, min_length: int
    ) -> list[SingleAgentEpisode]:
        """Uniform random start over all stored steps, then up to ``seq_len`` steps."""
        sequences = []
        # Sequences shorter than the burn-in carry no loss; skip their starts, as RLlib does.
        max_tries = 100 * num_sequences
        while len(sequences) < num_sequences:
            episode_index, start = self._indices[self.rng.integers(len(self._indices))]
            episode = self.episodes[episode_index - self._num_episodes_evicted]
            max_tries -= 1
            if min_length > 0 and start + min_length >= len(episode) and max_tries > 0:
                continue
            end = min(start + seq_len, len(episode))
            sequences.append(episode.slice(slice(start, end), len_lookback_buffer=lookback))
        return sequences

    def _sample_sequential_chunks(
        self, num_sequences: int, seq_len: int, lookback: int
    ) -> list[SingleAgentEpisode]:
        """The next ``seq_len`` steps of each cursor's episode; finished cursors restart."""
        if len(self._cursors) != num_sequences:
            self._cursors = [None] * num_sequences
        chunks = []
        for slot in range(num_sequences):
            cursor = self._cursors[slot]
            episode = self._episode_at(cursor)
            if episode is None:
                episode = self._draw_episode_for_cursor()
                cursor = _Cursor(episode.id_, 0)
            start = cursor.position
            end = min(start + seq_len, len(episode))
            chunk = episode.slice(slice(start, end), len_lookback_buffer=lookback)
            _add_constant_column(chunk, SEQ_SLOT, slot, lookback)
            _add_constant_column(chunk, SEQ_START, start, lookback)
            chunks.append(chunk)
            # A short chunk ends the cursor: either the episode is over, or it is still being
            # collected and the state after padded steps would not be the state at `end`.
            self._cursors[slot] = _Cursor(episode.id_, end) if end - start == seq_len else None
        return chunks

    def _episode_at(self, cursor: _Cursor | None) -> SingleAgentEpisode | None:
        if cursor is None or cursor.episode_id not in self.episode_id_to_index:
            return None
        index = self.episode_id_to_index[cursor.episode_id] - self._num_episodes_evicted
        episode = self.episodes[index]
        return episode if cursor.position < len(episode) else None

    def _draw_episode_for_cursor(self) -> SingleAgentEpisode:
        """A uniformly drawn stored episode, preferring finished ones not held by a cursor."""
        held = {cursor.episode_id for cursor in self._cursors if cursor is not None}
        finished = [e for e in self.episodes if e.is_done and len(e) > 0]
        candidates = [e for e in finished if e.id_ not in held] or finished
        candidates = candidates or [e for e in self.episodes if len(e) > 0]
        return candidates[self.rng.integers(len(candidates))]

    def _record_sample_metrics(self, sequences: list[SingleAgentEpisode]) -> None:
        num_steps = sum(len(sequence) for sequence in sequences)
        num_episodes = len({sequence.id_ for sequence in sequences})
        self.sampled_timesteps += num_steps
        self._update_sample_metrics(
            num_env_steps_sampled=num_steps,
            num_episodes_per_sample=num_episodes,
            num_env_steps_per_sample=num_steps,
            sampled_n_step=1.0,
            num_resamples=0,
            agent_to_num_steps_sampled={DEFAULT_AGENT_ID: num_steps},
            agent_to_num_episodes_per_sample={DEFAULT_AGENT_ID: num_episodes},
            agent_to_num_steps_per_sample={DEFAULT_AGENT_ID: num_steps},
            agent_to_sampled_n_step={DEFAULT_AGENT_ID: 1.0},
            agent_to_num_resamples={DEFAULT_AGENT_ID: 0},
            module_to_num_steps_sampled={DEFAULT_MODULE_ID: num_steps},
            module_to_num_episodes_per_sample={DEFAULT_MODULE_ID: num_episodes},
            module_to_num_steps_per_sample={DEFAULT_MODULE_ID: num_steps},
            module_to_sampled_n_step={DEFAULT_MODULE_ID: 1.0},
            module_to_num_resamples={DEFAULT_MODULE_ID: 0},
        )


def _without_lstm_state(episode: SingleAgentEpisode) -> SingleAgentEpisode:
    """A shallow copy of ``episode`` without the acting LSTM state (the caller's is kept)."""
    if Columns.STATE_OUT not in episode.extra_model_outputs:
        return episode
    stripped = copy.copy(episode)
    stripped.extra_model_outputs = {
        key: value for key, value in episode.extra_model_outputs.items() if key != Columns.STATE_OUT
    }
    return stripped


def _add_constant_column(
    episode: SingleAgentEpisode, key: str, value: float, lookback: int
) -> None:
    episode.extra_model_outputs[key] = InfiniteLookbackBuffer(
        np.full((len(episode) + lookback,), value), lookback=lookback
    )

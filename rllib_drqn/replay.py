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

Every window carries ``n_step - 1`` steps of lookahead past its ``max_seq_len`` trained steps,
where its episode holds them (column ``LOOKAHEAD``, True on those steps). The learner unrolls
both networks over them but puts no loss there, so each trained step's n-step target reaches
its full horizon; only the episode's end (or the end of the data collected so far) cuts it.
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
from ray.rllib.utils.replay_buffers.prioritized_episode_buffer import (
    PrioritizedEpisodeReplayBuffer,
)

__all__ = [
    "LOOKAHEAD",
    "SEQ_SLOT",
    "SEQ_START",
    "UPDATE_MODES",
    "DRQNEpisodeReplayBuffer",
    "DRQNPrioritizedEpisodeReplayBuffer",
    "lookahead_steps",
]

UPDATE_MODES = ("random", "sequential", "stored")

#: Per-step columns on sequential chunks: which cursor slot the chunk belongs to, and the
#: timestep inside its episode where the chunk starts (0 means "zero initial state").
SEQ_SLOT = "drqn_seq_slot"
SEQ_START = "drqn_seq_start"
#: Per-step bool column: True on a window's lookahead steps, which complete the n-step targets
#: of its trained steps and carry no loss themselves.
LOOKAHEAD = "drqn_lookahead"

# Sampled sequences get ids "<stored episode id>/<row>"; see `_SequenceSampling.sample`.
_ID_SEPARATOR = "/"


@dataclass
class _Cursor:
    """Where one sequential-update slot stands: an episode and the next step to train on."""

    episode_id: str
    position: int


class _SequenceSampling:
    """DRQN's sequence sampling, shared by the plain and the prioritized buffer.

    Mixed in before an RLlib episode buffer class, whose storage (``episodes``, ``_indices``,
    eviction) it reads. Subclasses choose how a start step is drawn (``_draw_start``).
    """

    update_mode: str
    rng: np.random.Generator

    def _init_sequence_sampling(self, update_mode: str, seed: int | None) -> None:
        if update_mode not in UPDATE_MODES:
            raise ValueError(
                f"Unknown update_mode {update_mode!r}; use one of {list(UPDATE_MODES)}."
            )
        self.update_mode = update_mode
        self.rng = np.random.default_rng(seed)
        self._cursors: list[_Cursor | None] = []
        self._source_episode_ids: list[str] = []

    @property
    def stores_state(self) -> bool:
        """Only R2D2's stored-state mode reads the acting LSTM state back from replay."""
        return self.update_mode == "stored"

    def add(self, episodes: list[SingleAgentEpisode] | SingleAgentEpisode) -> None:
        episodes = force_list(episodes)
        if not self.stores_state:
            episodes = [_without_lstm_state(episode) for episode in episodes]
        super().add(episodes)

    def sample(
        self,
        num_items: int | None = None,
        *,
        batch_length_T: int | None = None,
        lookback: int = 0,
        min_batch_length_T: int = 0,
        sample_episodes: bool | None = False,
        n_step: int | tuple | None = None,
        beta: float = 0.0,
        **kwargs: Any,
    ) -> Any:
        """Returns ``ceil(num_items / batch_length_T)`` windows for a recurrent module.

        DQN's ``training_step`` passes ``num_items=total_train_batch_size`` and
        ``batch_length_T=max_seq_len`` (0 for a stateless module, which gets RLlib's
        behaviour unchanged). ``DRQNConfig`` sets the train batch size to
        ``num_sequences_per_batch * max_seq_len``, so this returns that many windows. Each is
        ``batch_length_T`` trained steps followed by up to ``n_step - 1`` lookahead steps
        (``LOOKAHEAD``), both cut at the episode's end. Windows hold 1-step data: DRQN's
        learner computes the n-step targets inside each window (``rllib_drqn.losses``).
        """
        if not (sample_episodes and batch_length_T):
            return super().sample(
                num_items,
                batch_length_T=batch_length_T,
                lookback=lookback,
                min_batch_length_T=min_batch_length_T,
                sample_episodes=sample_episodes,
                n_step=n_step,
                beta=beta,
                **kwargs,
            )
        if len(self._indices) == 0:
            raise RuntimeError(
                "The replay buffer is empty; set num_steps_sampled_before_learning_starts > 0."
            )
        num_sequences = max(1, math.ceil((num_items or self.batch_size_B) / batch_length_T))
        lookahead = lookahead_steps(n_step)
        if self.update_mode == "sequential":
            chunks = self._sample_sequential_chunks(
                num_sequences, batch_length_T, lookahead, lookback
            )
            sequences = [(chunk, 1.0) for chunk in chunks]
        else:
            sequences = self._sample_random_sequences(
                num_sequences, batch_length_T, lookahead, lookback, min_batch_length_T, beta
            )
        self._source_episode_ids = [sequence.id_ for sequence, _ in sequences]
        for index, (sequence, weight) in enumerate(sequences):
            # DQNTorchLearner reads `n_step` and `weights` (importance-sampling weights of
            # prioritized replay) per step, as RLlib's own sequence sampling provides them.
            _add_constant_column(sequence, "n_step", 1, lookback)
            _add_constant_column(sequence, "weights", weight, lookback)
            # RLlib's learner connectors group rows by episode id
            # (ConnectorV2.add_n_batch_items keys items by `(episode.id_,)`): two sequences of
            # one episode would be merged and reordered, and per-row results (TD errors for
            # priorities) would no longer line up with the samples. One id per sequence.
            sequence.id_ = f"{sequence.id_}{_ID_SEPARATOR}{index}"
        sequences = [sequence for sequence, _ in sequences]
        self._record_sample_metrics(sequences)
        return sequences

    @property
    def last_sampled_source_ids(self) -> list[str]:
        """The stored episode each sequence of the last ``sample()`` was cut from, in order."""
        return list(self._source_episode_ids)

    def _sample_random_sequences(
        self,
        num_sequences: int,
        seq_len: int,
        lookahead: int,
        lookback: int,
        min_length: int,
        beta: float,
    ) -> list[tuple[SingleAgentEpisode, float]]:
        """Windows of up to ``seq_len`` trained steps from drawn starts, with their IS weights."""
        sequences = []
        self._sampled_starts: list[Any] = []
        self._sampled_lengths: list[int] = []
        # Sequences shorter than the burn-in carry no loss; skip their starts, as RLlib does.
        max_tries = 100 * num_sequences
        while len(sequences) < num_sequences:
            episode, start, weight, key = self._draw_start(beta)
            max_tries -= 1
            if min_length > 0 and start + min_length >= len(episode) and max_tries > 0:
                continue
            sequence = _window(episode, start, seq_len, lookahead, lookback)
            sequences.append((sequence, weight))
            self._sampled_starts.append(key)
            self._sampled_lengths.append(min(start + seq_len, len(episode)) - start)
        self._sampled_burn_in = min_length
        return sequences

    def _draw_start(self, beta: float) -> tuple[SingleAgentEpisode, int, float, Any]:
        """A uniformly drawn stored step: (episode, start, IS weight 1, its index)."""
        index = self.rng.integers(len(self._indices))
        episode_index, start = self._indices[index][:2]
        return self.episodes[episode_index - self._num_episodes_evicted], start, 1.0, index

    def _sample_sequential_chunks(
        self, num_sequences: int, seq_len: int, lookahead: int, lookback: int
    ) -> list[SingleAgentEpisode]:
        """The next ``seq_len`` steps of each cursor's episode (and their lookahead).

        Finished cursors restart; a chunk's lookahead steps are the next chunk's first ones.
        """
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
            chunk = _window(episode, start, seq_len, lookahead, lookback)
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


class DRQNEpisodeReplayBuffer(_SequenceSampling, EpisodeReplayBuffer):
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
        super().__init__(capacity, **kwargs)
        self._init_sequence_sampling(update_mode, seed)


class DRQNPrioritizedEpisodeReplayBuffer(_SequenceSampling, PrioritizedEpisodeReplayBuffer):
    """RLlib's ``PrioritizedEpisodeReplayBuffer`` sampling sequences by priority (R2D2).

    A sequence's start step carries its priority; after an update it becomes
    ``eta * max|delta| + (1 - eta) * mean|delta|`` over the sequence's trained steps
    (Kapturowski et al. 2019, eta = 0.9). Importance-sampling weights use ``beta`` as RLlib
    passes it from ``replay_buffer_config``; R2D2 itself uses none (beta = 0).

    Args:
        capacity: Timesteps kept.
        update_mode: ``"random"`` or ``"stored"`` (sequential cursors have no priorities).
        priority_eta: The max/mean mix of per-step TD errors into a sequence priority.
        seed: Seeds the sampling generator.
        **kwargs: Passed on to ``PrioritizedEpisodeReplayBuffer`` (``alpha``, ...).
    """

    def __init__(
        self,
        capacity: int = 10000,
        *,
        update_mode: str = "random",
        priority_eta: float = 0.9,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        if update_mode == "sequential":
            raise ValueError(
                "Prioritized replay draws sequences by priority; update_mode='sequential' walks "
                "whole episodes instead. Use update_mode='random' or 'stored', or the plain "
                "DRQNEpisodeReplayBuffer."
            )
        if not 0.0 <= priority_eta <= 1.0:
            raise ValueError(f"priority_eta must be in [0, 1], got {priority_eta!r}.")
        super().__init__(capacity, **kwargs)
        self._init_sequence_sampling(update_mode, seed)
        self.priority_eta = priority_eta

    def _draw_start(self, beta: float) -> tuple[SingleAgentEpisode, int, float, Any]:
        """A start drawn proportionally to priority, as RLlib's own ``sample`` draws steps."""
        total = self._sum_segment.sum()
        tree_index = self._sum_segment.find_prefixsum_idx(self.rng.random() * total)
        num_steps = self.get_num_timesteps()
        p_min = self._min_segment.min() / total
        max_weight = (p_min * num_steps) ** (-beta)
        weight = ((self._sum_segment[tree_index] / total) * num_steps) ** (-beta) / max_weight
        episode_index, start, _ = self._indices[self._tree_idx_to_sample_idx[tree_index]]
        episode = self.episodes[episode_index - self._num_episodes_evicted]
        return episode, start, float(weight), tree_index

    @override(PrioritizedEpisodeReplayBuffer)
    def update_priorities(self, priorities: np.ndarray, module_id: str | None = None) -> None:
        """Sets each sampled window's priority from its trained steps' TD errors ``[B, T]``."""
        td_errors = np.abs(np.asarray(priorities, dtype=np.float64))
        num_sequences = len(self._sampled_starts)
        td_errors = td_errors.reshape(num_sequences, -1)
        sequence_priorities = []
        for row, length in enumerate(self._sampled_lengths):
            trained = td_errors[row, self._sampled_burn_in : length]
            if trained.size == 0:
                trained = td_errors[row, :length]
            sequence_priorities.append(
                self.priority_eta * trained.max() + (1 - self.priority_eta) * trained.mean()
            )
        self._last_sampled_indices = list(self._sampled_starts)
        super().update_priorities(np.array(sequence_priorities), module_id)


def lookahead_steps(n_step: int | tuple | None) -> int:
    """Steps past a window's trained ones that its n-step targets read: ``n_step - 1``."""
    if isinstance(n_step, int) and not isinstance(n_step, bool):
        return max(0, n_step - 1)
    return 0


def _window(
    episode: SingleAgentEpisode, start: int, seq_len: int, lookahead: int, lookback: int
) -> SingleAgentEpisode:
    """Steps ``start .. start + seq_len + lookahead`` of ``episode`` (cut at its end).

    The steps past ``start + seq_len`` are tagged in the ``LOOKAHEAD`` column.
    """
    end = min(start + seq_len + lookahead, len(episode))
    window = episode.slice(slice(start, end), len_lookback_buffer=lookback)
    is_lookahead = np.zeros(len(window) + lookback, dtype=bool)
    is_lookahead[lookback + seq_len :] = True
    window.extra_model_outputs[LOOKAHEAD] = InfiniteLookbackBuffer(is_lookahead, lookback=lookback)
    return window


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

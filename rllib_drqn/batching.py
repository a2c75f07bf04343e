"""Replayed sequences to a train batch in one pass: DRQN's learner-connector piece.

Why not RLlib's own pieces: for a stateful module, RLlib's default learner pipeline
(``AlgorithmConfig.build_learner_connector``; DQN adds the next observations) builds the batch
item by item: per-episode dicts of lists, ``split_and_zero_pad`` and ``tree.map_structure`` per
column, then ``BatchIndividualItems``. On StatelessCartPole that took 5 ms of an 11.5 ms update
(32 sequences of 10 steps). DRQN's replay hands over windows of at most ``max_seq_len``
trained steps plus their n-step lookahead (``rllib_drqn.replay.LOOKAHEAD``), one batch row
each, so the same batch is each window's stored arrays, sliced, zero padded to
``max_seq_len + lookahead`` and stacked. ``AddSequencesToBatch`` does that, and hands anything
else (a batch that custom pieces already filled, longer or unfinalized episodes, nested
a multi-agent module) to RLlib's pieces unchanged. ``Tuple``/``Dict`` observations are batched
leaf by leaf.
``tests/test_batching.py`` checks that both give the same batch, column by column, in every
update mode.

The previous action and reward (``model_config['lstm_use_prev_action']`` /
``['lstm_use_prev_reward']``) are columns computed from what the episode already holds, never
stored: ``AddPrevActionsRewardsToBatch`` adds a_{t-1} and r_{t-1} while acting (from the
ongoing episode) and on RLlib's learner path; ``AddSequencesToBatch`` reads them from each
replayed sequence's actions and rewards and its lookback step (the step before its start).
Both give ``-1`` and ``0`` at an episode's first step. Why not RLlib's ``PrevActionsPrevRewards``
(``ray/rllib/connectors/env_to_module/prev_actions_prev_rewards.py``): it rewrites each
observation into a Dict holding a float one-hot of the action, which replay would then store
at every step, and it does not run in a learner pipeline.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import tree
from ray.rllib.connectors.common.add_observations_from_episodes_to_batch import (
    AddObservationsFromEpisodesToBatch,
)
from ray.rllib.connectors.common.add_states_from_episodes_to_batch import (
    AddStatesFromEpisodesToBatch,
)
from ray.rllib.connectors.common.add_time_dim_to_batch_and_zero_pad import (
    AddTimeDimToBatchAndZeroPad,
)
from ray.rllib.connectors.common.batch_individual_items import BatchIndividualItems
from ray.rllib.connectors.connector_pipeline_v2 import ConnectorPipelineV2
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.learner.add_columns_from_episodes_to_train_batch import (
    AddColumnsFromEpisodesToTrainBatch,
)
from ray.rllib.connectors.learner.add_next_observations_from_episodes_to_train_batch import (
    AddNextObservationsFromEpisodesToTrainBatch,
)
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.utils.annotations import override
from ray.rllib.utils.numpy import convert_to_numpy

from rllib_drqn.module import (
    NO_PREV_ACTION,
    NO_PREV_REWARD,
    PREV_ACTIONS,
    PREV_REWARDS,
    uses_prev_inputs,
)
from rllib_drqn.replay import LOOKAHEAD

__all__ = [
    "AddPrevActionsRewardsToBatch",
    "AddSequencesToBatch",
    "add_prev_inputs_piece",
    "use_sequence_batching",
]


class AddPrevActionsRewardsToBatch(ConnectorV2):
    """Adds ``PREV_ACTIONS``/``PREV_REWARDS`` from the episodes, when the module reads them.

    As an env-to-module piece (after RLlib's ``AddObservationsFromEpisodesToBatch``) it adds one
    item per episode: the action and reward before the observation being acted on, read from
    the episode as RLlib's ``PrevActionsPrevRewards`` reads them (``get_actions(-1)``; a chunk
    that continues an episode keeps that step in its lookback). As a learner piece (first in
    RLlib's default batching pieces) it adds one item per step of each episode.
    """

    def __init__(
        self,
        input_observation_space: gym.Space | None = None,
        input_action_space: gym.Space | None = None,
        *,
        as_learner_connector: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self._as_learner_connector = as_learner_connector

    @override(ConnectorV2)
    def __call__(
        self,
        *,
        rl_module: RLModule,
        batch: dict[str, Any],
        episodes: list[Any],
        **kwargs: Any,
    ) -> Any:
        module = _the_module(rl_module)
        if module is None or not uses_prev_inputs(module.model_config) or PREV_ACTIONS in batch:
            return batch
        for episode in self.single_agent_episode_iterator(
            episodes, agents_that_stepped_only=not self._as_learner_connector
        ):
            if self._as_learner_connector:
                actions, rewards = _prev_steps(episode)
                for column, items in ((PREV_ACTIONS, actions), (PREV_REWARDS, rewards)):
                    self.add_n_batch_items(
                        batch,
                        column,
                        items_to_add=items,
                        num_items=len(episode),
                        single_agent_episode=episode,
                    )
                continue
            if episode.t == 0:
                action, reward = NO_PREV_ACTION, NO_PREV_REWARD
            else:
                action, reward = episode.get_actions(-1), episode.get_rewards(-1)
            self.add_batch_item(batch, PREV_ACTIONS, np.int64(action), episode)
            self.add_batch_item(batch, PREV_REWARDS, np.float32(reward), episode)
        return batch


def add_prev_inputs_piece(pipeline: ConnectorPipelineV2) -> None:
    """Puts ``AddPrevActionsRewardsToBatch`` after the env-to-module pipeline's obs piece.

    A pipeline without RLlib's default pieces gets it first; it does nothing for a module that
    reads no previous action or reward.
    """
    piece = AddPrevActionsRewardsToBatch(
        pipeline.input_observation_space, pipeline.input_action_space
    )
    kinds = [type(existing).__name__ for existing in pipeline.connectors]
    if "AddObservationsFromEpisodesToBatch" in kinds:
        pipeline.insert_after("AddObservationsFromEpisodesToBatch", piece)
    else:
        pipeline.prepend(piece)


def _prev_steps(episode: SingleAgentEpisode) -> tuple[np.ndarray, np.ndarray]:
    """a_{t-1}, r_{t-1} for each step of ``episode`` (its lookback step before step 0)."""
    actions = np.asarray(episode.get_actions(slice(0, len(episode))), dtype=np.int64)
    rewards = np.asarray(episode.get_rewards(slice(0, len(episode))), dtype=np.float32)
    first_action, first_reward = _first_prev(episode)
    prev_actions = np.concatenate([[first_action], actions[:-1]]).astype(np.int64)
    prev_rewards = np.concatenate([[first_reward], rewards[:-1]]).astype(np.float32)
    return prev_actions, prev_rewards


def _first_prev(episode: SingleAgentEpisode) -> tuple[int, float]:
    """a_{t-1}, r_{t-1} of the episode's step 0: its lookback step, or none at t=0."""
    if episode.t_started == 0 or episode.actions.lookback < 1:
        return NO_PREV_ACTION, NO_PREV_REWARD
    return int(_step(episode.actions, -1)), float(_step(episode.rewards, -1))


def _rllib_default_pieces() -> list[ConnectorV2]:
    """RLlib's default pieces for a stateful DQN module, in its order, up to the tensors."""
    return [
        AddObservationsFromEpisodesToBatch(as_learner_connector=True),
        AddNextObservationsFromEpisodesToTrainBatch(),
        AddColumnsFromEpisodesToTrainBatch(),
        AddTimeDimToBatchAndZeroPad(as_learner_connector=True),
        AddStatesFromEpisodesToBatch(as_learner_connector=True),
        BatchIndividualItems(),
    ]


class AddSequencesToBatch(ConnectorV2):
    """Learner-connector piece: DRQN's replayed sequences as ``[B, T, ...]`` arrays.

    Gives what RLlib's default pieces give (see the module docstring): observations and next
    observations, actions, rewards, terminateds/truncateds on each sequence's last step,
    every extra model output but the LSTM state, ``seq_lens``, ``loss_mask``, and
    ``state_in``/``next_state_in`` (the stored state before and after the first step, or the
    module's initial state where none is stored or the sequence starts its episode).

    ``seq_lens`` and ``loss_mask`` count a window's lookahead steps as valid (its n-step
    targets read them); the ``LOOKAHEAD`` column tells the learner which steps carry no loss.
    RLlib's pieces would cut such a window into ``max_seq_len`` chunks, so a window with
    lookahead that this piece cannot batch raises instead of going to them.

    Args:
        lookahead: The most lookahead steps a window holds (``n_step - 1``); every batch has
            ``max_seq_len + lookahead`` time steps, so batches of several learners line up.
    """

    def __init__(
        self,
        input_observation_space: gym.Space | None = None,
        input_action_space: gym.Space | None = None,
        *,
        lookahead: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_observation_space, input_action_space, **kwargs)
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead!r}.")
        self.lookahead = lookahead
        # The previous action and reward first, so RLlib's pieces pad and split them as the
        # other columns.
        self.rllib_pieces = ConnectorPipelineV2(
            input_observation_space,
            input_action_space,
            connectors=[
                AddPrevActionsRewardsToBatch(as_learner_connector=True),
                *_rllib_default_pieces(),
            ],
        )

    @override(ConnectorV2)
    def __call__(
        self,
        *,
        rl_module: RLModule,
        batch: dict[str, Any],
        episodes: list[Any],
        shared_data: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        module = _the_single_module(rl_module)
        if batch or module is None or not _batchable(episodes, module, self.lookahead):
            _refuse_lookahead_windows(episodes)
            kwargs.pop("data", None)  # The pipeline passes the batch again as deprecated `data`.
            return self.rllib_pieces(
                rl_module=rl_module,
                batch=batch,
                episodes=episodes,
                shared_data=shared_data,
                **kwargs,
            )
        module_batch = _sequences_to_batch(episodes, module, self.lookahead)
        if shared_data is not None:
            # Read by Learner._make_batch_if_necessary, as AddTimeDimToBatchAndZeroPad sets it.
            shared_data[f"_zero_padded_for_mid={DEFAULT_MODULE_ID}"] = True
        batch[DEFAULT_MODULE_ID] = module_batch
        return batch


def use_sequence_batching(pipeline: ConnectorPipelineV2, *, lookahead: int = 0) -> bool:
    """Puts ``AddSequencesToBatch(lookahead=...)`` in place of RLlib's default batching pieces.

    Only where the pipeline holds those pieces in RLlib's order (custom pieces before or after
    them stay); returns whether it did. A pipeline built without the defaults
    (``add_default_connectors_to_learner_pipeline=False``) is left as it is.
    """
    expected = [type(piece) for piece in _rllib_default_pieces()]
    kinds = [type(piece) for piece in pipeline.connectors]
    for first in range(len(kinds) - len(expected) + 1):
        if kinds[first : first + len(expected)] == expected:
            break
    else:
        return False
    replaced = pipeline.connectors[first]
    pipeline.connectors[first : first + len(expected)] = [
        AddSequencesToBatch(
            replaced.input_observation_space, replaced.input_action_space, lookahead=lookahead
        )
    ]
    return True


def _the_module(rl_module: RLModule | None) -> RLModule | None:
    """The single-agent module (of a ``MultiRLModule`` with only the default one), if any."""
    if isinstance(rl_module, MultiRLModule):
        return rl_module.get(DEFAULT_MODULE_ID)
    return rl_module


def _the_single_module(rl_module: RLModule) -> RLModule | None:
    """The learner's one stateful module, or ``None`` for anything RLlib's pieces should do."""
    if not isinstance(rl_module, MultiRLModule) or set(rl_module.keys()) != {DEFAULT_MODULE_ID}:
        return None
    module = rl_module[DEFAULT_MODULE_ID]
    return module if module.is_stateful() else None


def _num_lookahead(episode: SingleAgentEpisode) -> int:
    """How many of the window's steps are n-step lookahead (0 without the column)."""
    column = episode.extra_model_outputs.get(LOOKAHEAD)
    if column is None:
        return 0
    return int(np.count_nonzero(_steps(column, len(episode))))


def _refuse_lookahead_windows(episodes: list[Any]) -> None:
    for episode in episodes:
        if isinstance(episode, SingleAgentEpisode) and episode.is_numpy and _num_lookahead(episode):
            raise ValueError(
                "DRQN's replayed windows carry n_step - 1 steps of lookahead past "
                "max_seq_len, which RLlib's default learner-connector pieces would cut into "
                "separate rows. Keep DRQN's AddSequencesToBatch (do not fill the batch in a "
                "custom piece before it), or set config.training(n_step=1)."
            )


def _batchable(episodes: list[Any], module: RLModule, lookahead: int) -> bool:
    """Whether every episode is a finalized single-agent window that fits one batch row."""
    if not episodes:
        return False
    max_seq_len = module.model_config["max_seq_len"]
    keys = None
    for episode in episodes:
        if not (isinstance(episode, SingleAgentEpisode) and episode.is_numpy):
            return False
        num_lookahead = _num_lookahead(episode)
        if not (
            0 < len(episode) - num_lookahead <= max_seq_len
            and num_lookahead <= lookahead
            and all(
                isinstance(leaf, np.ndarray) for leaf in tree.flatten(episode.observations.data)
            )
            and isinstance(episode.actions.data, np.ndarray)
            and isinstance(episode.rewards.data, np.ndarray)
        ):
            return False
        extra = episode.extra_model_outputs
        if keys is None:
            keys = set(extra)
        if set(extra) != keys or not all(
            isinstance(buffer.data, np.ndarray)
            for key, buffer in extra.items()
            if key != Columns.STATE_OUT
        ):
            return False
        stored = extra.get(Columns.STATE_OUT)
        if stored is not None and episode.t_started > 0 and stored.lookback < 1:
            return False  # RLlib's piece decides what a missing lookback state means.
    return True


def _steps(buffer: InfiniteLookbackBuffer, length: int, offset: int = 0) -> Any:
    """Steps ``offset .. offset + length`` of a finalized buffer, past its lookback.

    Reads ``buffer.data`` directly (ray/rllib/env/utils/infinite_lookback_buffer.py: a
    finalized buffer's ``data`` holds ``lookback`` steps before step 0): ``buffer.get`` costs
    ~10 us a call, which is most of a batch's time at ~10 columns x 32 sequences.
    """
    start = buffer.lookback + offset
    return tree.map_structure(lambda array: array[start : start + length], buffer.data)


def _step(buffer: InfiniteLookbackBuffer, index: int) -> Any:
    """One step of a finalized buffer (``-1``: the lookback step before step 0)."""
    at = buffer.lookback + index
    return tree.map_structure(lambda array: array[at], buffer.data)


def _padded(rows: list[Any], max_seq_len: int) -> Any:
    """``[B, max_seq_len, ...]``, each row zero-padded after its own length (leaf by leaf)."""
    if not isinstance(rows[0], np.ndarray):
        return tree.map_structure(lambda *leaves: _padded(list(leaves), max_seq_len), *rows)
    out = np.zeros((len(rows), max_seq_len, *rows[0].shape[1:]), dtype=rows[0].dtype)
    for index, row in enumerate(rows):
        out[index, : len(row)] = row
    return out


def _sequences_to_batch(
    episodes: list[SingleAgentEpisode], module: RLModule, lookahead: int
) -> dict[str, Any]:
    lengths = np.array([len(episode) for episode in episodes])
    # Rows of max_seq_len trained steps and up to `lookahead` steps after them.
    max_seq_len = module.model_config["max_seq_len"] + lookahead
    last_step = (np.arange(len(episodes)), lengths - 1)

    def column(buffer_of: Any, offset: int = 0) -> np.ndarray:
        """One column: each episode's steps from the buffer ``buffer_of(episode)``, padded."""
        steps = [_steps(buffer_of(episode), len(episode), offset) for episode in episodes]
        return _padded(steps, max_seq_len)

    module_batch: dict[str, Any] = {
        Columns.OBS: column(lambda e: e.observations),
        Columns.NEXT_OBS: column(lambda e: e.observations, offset=1),
        Columns.ACTIONS: column(lambda e: e.actions),
        Columns.REWARDS: column(lambda e: e.rewards),
    }
    for key, flag in ((Columns.TERMINATEDS, "is_terminated"), (Columns.TRUNCATEDS, "is_truncated")):
        flags = np.zeros((len(episodes), max_seq_len), dtype=bool)
        flags[last_step] = [getattr(episode, flag) for episode in episodes]
        module_batch[key] = flags
    for key in episodes[0].extra_model_outputs:
        if key not in (Columns.STATE_OUT, Columns.STATE_IN):
            module_batch[key] = column(lambda e, k=key: e.extra_model_outputs[k])
    if uses_prev_inputs(module.model_config):
        # Step t's inputs are a_{t-1} and r_{t-1}: the sequence's actions and rewards shifted
        # by one, after the step before its start (its lookback step; none at t=0).
        prev = [_prev_steps(episode) for episode in episodes]
        module_batch[PREV_ACTIONS] = _padded([actions for actions, _ in prev], max_seq_len)
        module_batch[PREV_REWARDS] = _padded([rewards for _, rewards in prev], max_seq_len)
    module_batch[Columns.SEQ_LENS] = lengths
    module_batch[Columns.LOSS_MASK] = np.arange(max_seq_len)[None, :] < lengths[:, None]

    initial_state = convert_to_numpy(module.get_initial_state())
    states_in, next_states_in = [], []
    for episode in episodes:
        stored = episode.extra_model_outputs.get(Columns.STATE_OUT)
        if stored is None:
            states_in.append(initial_state)
            next_states_in.append(initial_state)
            continue
        # As AddStatesFromEpisodesToBatch: the state before step 0 is the lookback step's
        # STATE_OUT, unless the sequence starts its episode; the next state is step 0's.
        states_in.append(initial_state if episode.t_started == 0 else _step(stored, -1))
        next_states_in.append(_step(stored, 0))
    module_batch[Columns.STATE_IN] = tree.map_structure(lambda *rows: np.stack(rows), *states_in)
    module_batch[Columns.NEXT_STATE_IN] = tree.map_structure(
        lambda *rows: np.stack(rows), *next_states_in
    )
    return module_batch

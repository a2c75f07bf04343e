"""Replayed sequences to a train batch in one pass: DRQN's learner-connector piece.

Why not RLlib's own pieces: for a stateful module, RLlib's default learner pipeline
(``AlgorithmConfig.build_learner_connector``; DQN adds the next observations) builds the batch
item by item: per-episode dicts of lists, ``split_and_zero_pad`` and ``tree.map_structure`` per
column, then ``BatchIndividualItems``. On StatelessCartPole that took 5 ms of an 11.5 ms update
(32 sequences of 10 steps). DRQN's replay hands over sequences of at most ``max_seq_len``
steps, one batch row each, so the same batch is each sequence's stored arrays, sliced, zero
padded to ``max_seq_len`` and stacked. ``AddSequencesToBatch`` does that, and hands anything
else (a batch that custom pieces already filled, longer or unfinalized episodes, nested
observations, a multi-agent module) to RLlib's pieces unchanged.
``tests/test_batching.py`` checks that both give the same batch, column by column, in every
update mode.
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

__all__ = ["AddSequencesToBatch", "use_sequence_batching"]


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
    """

    def __init__(
        self,
        input_observation_space: gym.Space | None = None,
        input_action_space: gym.Space | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.rllib_pieces = ConnectorPipelineV2(
            input_observation_space, input_action_space, connectors=_rllib_default_pieces()
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
        if batch or module is None or not _batchable(episodes, module):
            kwargs.pop("data", None)  # The pipeline passes the batch again as deprecated `data`.
            return self.rllib_pieces(
                rl_module=rl_module,
                batch=batch,
                episodes=episodes,
                shared_data=shared_data,
                **kwargs,
            )
        module_batch = _sequences_to_batch(episodes, module)
        if shared_data is not None:
            # Read by Learner._make_batch_if_necessary, as AddTimeDimToBatchAndZeroPad sets it.
            shared_data[f"_zero_padded_for_mid={DEFAULT_MODULE_ID}"] = True
        batch[DEFAULT_MODULE_ID] = module_batch
        return batch


def use_sequence_batching(pipeline: ConnectorPipelineV2) -> bool:
    """Puts ``AddSequencesToBatch`` in place of RLlib's default batching pieces.

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
        AddSequencesToBatch(replaced.input_observation_space, replaced.input_action_space)
    ]
    return True


def _the_single_module(rl_module: RLModule) -> RLModule | None:
    """The learner's one stateful module, or ``None`` for anything RLlib's pieces should do."""
    if not isinstance(rl_module, MultiRLModule) or set(rl_module.keys()) != {DEFAULT_MODULE_ID}:
        return None
    module = rl_module[DEFAULT_MODULE_ID]
    return module if module.is_stateful() else None


def _batchable(episodes: list[Any], module: RLModule) -> bool:
    """Whether every episode is a finalized single-agent sequence that fits one batch row."""
    if not episodes:
        return False
    max_seq_len = module.model_config["max_seq_len"]
    keys = None
    for episode in episodes:
        if not (
            isinstance(episode, SingleAgentEpisode)
            and episode.is_numpy
            and 0 < len(episode) <= max_seq_len
            and isinstance(episode.observations.data, np.ndarray)
            and isinstance(episode.actions.data, np.ndarray)
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


def _padded(rows: list[np.ndarray], max_seq_len: int) -> np.ndarray:
    """``[B, max_seq_len, ...]``, each row zero-padded after its own length."""
    out = np.zeros((len(rows), max_seq_len, *rows[0].shape[1:]), dtype=rows[0].dtype)
    for index, row in enumerate(rows):
        out[index, : len(row)] = row
    return out


def _sequences_to_batch(episodes: list[SingleAgentEpisode], module: RLModule) -> dict[str, Any]:
    max_seq_len = module.model_config["max_seq_len"]
    lengths = np.array([len(episode) for episode in episodes])
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

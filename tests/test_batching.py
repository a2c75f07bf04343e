"""AddSequencesToBatch builds the batch RLlib's default learner-connector pieces build."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from test_update_modes import SEQ_LEN, small_config

from rllib_drqn.batching import AddSequencesToBatch, use_sequence_batching
from rllib_drqn.replay import DRQNEpisodeReplayBuffer

#: The LSTM size of the config these tests share with test_update_modes.
CELL = small_config("random").model_config["lstm_cell_size"]


@pytest.fixture
def trained(ray_session: None) -> Iterator[Any]:
    algos = []

    def build(update_mode: str, **training: Any) -> Any:
        algo = small_config(update_mode, **training).build_algo()
        algos.append(algo)
        algo.train()
        return algo

    yield build
    for algo in algos:
        algo.stop()


def the_piece(algo: Any) -> AddSequencesToBatch:
    connectors = algo.learner_group._learner._learner_connector.connectors
    pieces = [piece for piece in connectors if isinstance(piece, AddSequencesToBatch)]
    assert len(pieces) == 1, [type(piece).__name__ for piece in connectors]
    return pieces[0]


def both_batches(algo: Any, episodes: list[Any]) -> tuple[dict, dict, dict, dict]:
    """(ours, RLlib's) module batches and shared data from the same episodes.

    RLlib's pieces know no n-step lookahead, so the windows compared are 1-step ones
    (``sample_sequences``) and our piece is compared without lookahead padding.
    """
    the_piece(algo)  # The learner uses ours.
    piece = AddSequencesToBatch(lookahead=0)
    module = algo.learner_group._learner.module
    ours_shared: dict[str, Any] = {}
    ours = piece(
        rl_module=module, batch={}, episodes=copy.deepcopy(episodes), shared_data=ours_shared
    )
    rllib_shared: dict[str, Any] = {}
    rllib = piece.rllib_pieces(
        rl_module=module, batch={}, episodes=copy.deepcopy(episodes), shared_data=rllib_shared
    )
    return ours[DEFAULT_MODULE_ID], rllib[DEFAULT_MODULE_ID], ours_shared, rllib_shared


def assert_same_batch(ours: dict[str, Any], rllib: dict[str, Any]) -> None:
    assert sorted(ours) == sorted(rllib)
    for key, expected in rllib.items():
        if isinstance(expected, dict):
            assert_same_batch(ours[key], expected)
            continue
        actual = ours[key]
        assert isinstance(actual, np.ndarray), key
        assert actual.dtype == expected.dtype, (key, actual.dtype, expected.dtype)
        assert actual.shape == expected.shape, (key, actual.shape, expected.shape)
        np.testing.assert_array_equal(actual, expected, err_msg=key)


def sample_sequences(algo: Any, num_sequences: int) -> list[Any]:
    return algo.local_replay_buffer.sample(
        num_items=num_sequences * SEQ_LEN,
        batch_length_T=SEQ_LEN,
        lookback=1,
        min_batch_length_T=algo.config.burn_in_len,
        sample_episodes=True,
        n_step=1,
    )


@pytest.mark.parametrize(
    ("update_mode", "training"),
    [("random", {}), ("sequential", {}), ("stored", {"burn_in_len": 2})],
)
def test_same_batch_as_rllib_pieces_on_replayed_sequences(
    trained: Any, update_mode: str, training: dict[str, Any]
) -> None:
    algo = trained(update_mode, **training)
    seen_lengths, seen_starts = set(), set()
    # Several draws (sequential cursors walk on), so sequences that start their episode, cut
    # into it, and end early (zero padding) all occur.
    for _ in range(8):
        episodes = sample_sequences(algo, 16)
        seen_lengths |= {len(e) for e in episodes}
        seen_starts |= {e.t_started > 0 for e in episodes}
        ours, rllib, ours_shared, rllib_shared = both_batches(algo, episodes)
        assert_same_batch(ours, rllib)
        # The learner reads this flag (Learner._make_batch_if_necessary); RLlib's other shared
        # entry, memorized_map_structure, is for module-to-env pipelines only.
        flag = f"_zero_padded_for_mid={DEFAULT_MODULE_ID}"
        assert ours_shared[flag] is rllib_shared[flag] is True
    assert min(seen_lengths) < SEQ_LEN and max(seen_lengths) == SEQ_LEN
    assert seen_starts == {False, True}
    if update_mode == "stored":
        # The stored state really is there, and differs from the zero initial state.
        assert np.abs(ours[Columns.STATE_IN]["h"]).sum() > 0


def test_same_batch_for_truncated_frames_with_stored_state(trained: Any) -> None:
    """uint8 frames and a truncated episode: dtypes and the truncation flag carry over."""
    algo = trained("stored")
    length = 12
    episode = SingleAgentEpisode(
        observations=[np.full((3, 3, 1), t, np.uint8) for t in range(length + 1)],
        actions=[t % 2 for t in range(length)],
        rewards=[float(t) for t in range(length)],
        extra_model_outputs={
            Columns.STATE_OUT: [
                {"h": np.full(CELL, t + 1, np.float32), "c": np.full(CELL, -t, np.float32)}
                for t in range(length)
            ]
        },
        truncated=True,
        len_lookback_buffer=0,
    ).to_numpy()
    buffer = DRQNEpisodeReplayBuffer(1000, update_mode="stored", seed=0)
    buffer.add(episode)
    episodes = buffer.sample(
        num_items=20 * SEQ_LEN, batch_length_T=SEQ_LEN, lookback=1, sample_episodes=True, n_step=1
    )
    assert any(e.is_truncated for e in episodes)
    ours, rllib, _, _ = both_batches(algo, episodes)
    assert_same_batch(ours, rllib)
    assert ours[Columns.OBS].dtype == np.uint8
    assert ours[Columns.TRUNCATEDS].any()


def test_a_batch_custom_pieces_filled_goes_to_rllib_pieces(trained: Any) -> None:
    algo = trained("random")
    piece = the_piece(algo)
    episodes = sample_sequences(algo, 4)
    # What a custom piece before DRQN's does: per-episode items, as RLlib's pieces add them.
    batch: dict[str, Any] = {}
    for episode in episodes:
        ConnectorV2.add_n_batch_items(
            batch,
            "custom",
            items_to_add=np.full(len(episode), 7.0),
            num_items=len(episode),
            single_agent_episode=episode,
        )
    batch = piece(
        rl_module=algo.learner_group._learner.module,
        batch=batch,
        episodes=episodes,
        shared_data={},
    )
    # RLlib's pieces batch the custom column with the rest, zero-padded like the others.
    module_batch = batch[DEFAULT_MODULE_ID]
    np.testing.assert_array_equal(module_batch["custom"], 7.0 * module_batch[Columns.LOSS_MASK])
    assert module_batch[Columns.ACTIONS].shape == (4, SEQ_LEN)


def test_windows_with_lookahead_are_never_cut_by_rllibs_pieces(trained: Any) -> None:
    """RLlib's pieces would split an n-step window into max_seq_len rows: refused, with a fix."""
    algo = trained("random")
    piece = the_piece(algo)
    windows = algo.local_replay_buffer.sample(
        num_items=4 * SEQ_LEN, batch_length_T=SEQ_LEN, lookback=1, sample_episodes=True, n_step=3
    )
    assert any(len(window) > SEQ_LEN for window in windows)
    with pytest.raises(ValueError, match=r"lookahead past max_seq_len.*n_step=1"):
        piece(
            rl_module=algo.learner_group._learner.module,
            batch={"custom": {}},
            episodes=windows,
            shared_data={},
        )


def test_only_rllibs_default_pieces_are_replaced(trained: Any) -> None:
    algo = trained("random")
    names = [type(p).__name__ for p in algo.learner_group._learner._learner_connector.connectors]
    assert names == ["AddSequencesToBatch", "NumpyToTensor"]
    # A pipeline without RLlib's defaults is left alone.
    pipeline = copy.deepcopy(algo.learner_group._learner._learner_connector)
    assert not use_sequence_batching(pipeline)
    assert [type(p).__name__ for p in pipeline.connectors] == names

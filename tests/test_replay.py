"""DRQNEpisodeReplayBuffer on its own: what each update mode stores and samples."""

from __future__ import annotations

import numpy as np
import pytest
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rllib_drqn.replay import (
    LOOKAHEAD,
    SEQ_SLOT,
    SEQ_START,
    DRQNEpisodeReplayBuffer,
    DRQNPrioritizedEpisodeReplayBuffer,
)

CELL = 4


def make_episode(length: int, *, done: bool = True) -> SingleAgentEpisode:
    """An episode whose observation at step t is [t] and whose stored state at t is t+1.

    Numpy'd, as env runners hand episodes to the algorithm.
    """
    episode = SingleAgentEpisode(
        observations=[np.array([t], np.float32) for t in range(length + 1)],
        actions=[0] * length,
        rewards=[1.0] * length,
        extra_model_outputs={
            Columns.STATE_OUT: [
                {"h": np.full(CELL, t + 1, np.float32), "c": np.full(CELL, t + 1, np.float32)}
                for t in range(length)
            ]
        },
        terminated=done,
        len_lookback_buffer=0,
    )
    return episode.to_numpy()


def sample(buffer: DRQNEpisodeReplayBuffer, num_sequences: int, seq_len: int):
    return buffer.sample(
        num_items=num_sequences * seq_len,
        batch_length_T=seq_len,
        lookback=1,
        sample_episodes=True,
        n_step=1,
    )


def test_random_mode_drops_the_acting_state_from_replay() -> None:
    buffer = DRQNEpisodeReplayBuffer(capacity=1000, update_mode="random")
    episode = make_episode(20)
    buffer.add(episode)
    assert Columns.STATE_OUT not in buffer.episodes[0].extra_model_outputs
    # The caller's episode is left as it was.
    assert Columns.STATE_OUT in episode.extra_model_outputs


def test_stored_mode_keeps_the_acting_state() -> None:
    buffer = DRQNEpisodeReplayBuffer(capacity=1000, update_mode="stored")
    buffer.add(make_episode(20))
    assert Columns.STATE_OUT in buffer.episodes[0].extra_model_outputs


def test_batches_are_counted_in_sequences() -> None:
    buffer = DRQNEpisodeReplayBuffer(capacity=1000, seed=0)
    buffer.add([make_episode(50), make_episode(7)])
    sequences = sample(buffer, num_sequences=32, seq_len=10)
    assert len(sequences) == 32
    assert all(1 <= len(s) <= 10 for s in sequences)
    for s in sequences:
        # Consecutive steps of one episode: observation t is [t].
        obs = s.get_observations()[:, 0]
        assert np.array_equal(obs, np.arange(s.t_started, s.t_started + len(s) + 1))


def test_random_starts_spread_over_the_whole_episode() -> None:
    buffer = DRQNEpisodeReplayBuffer(capacity=1000, seed=1)
    buffer.add(make_episode(100))
    starts = np.array([s.t_started for s in sample(buffer, num_sequences=2000, seq_len=10)])
    quarter_share = np.histogram(starts, bins=4, range=(0, 100))[0] / len(starts)
    print("share of starts per quarter of the episode:", quarter_share)
    assert starts.min() == 0
    assert starts.max() >= 95
    assert np.all(np.abs(quarter_share - 0.25) < 0.05)


def test_same_seed_draws_the_same_sequences() -> None:
    draws = []
    for _ in range(2):
        buffer = DRQNEpisodeReplayBuffer(capacity=1000, seed=7)
        buffer.add([make_episode(30), make_episode(40)])
        sequences = sample(buffer, 16, 10)
        sources = buffer.last_sampled_source_ids
        draws.append(
            [
                (buffer.episode_id_to_index[i], s.t_started)
                for i, s in zip(sources, sequences, strict=True)
            ]
        )
    assert draws[0] == draws[1]


def test_sequential_cursors_walk_each_episode_from_its_start_to_its_end() -> None:
    buffer = DRQNEpisodeReplayBuffer(capacity=1000, update_mode="sequential", seed=0)
    episodes = [make_episode(25), make_episode(12), make_episode(31)]
    buffer.add(episodes)
    seen: dict[int, list[tuple[str, int, int]]] = {0: [], 1: []}
    for _ in range(12):
        chunks = sample(buffer, num_sequences=2, seq_len=10)
        for chunk, source_id in zip(chunks, buffer.last_sampled_source_ids, strict=True):
            slot = int(chunk.get_extra_model_outputs(SEQ_SLOT)[0])
            start = int(chunk.get_extra_model_outputs(SEQ_START)[0])
            assert start == chunk.t_started
            seen[slot].append((source_id, chunk.t_started, len(chunk)))
    for chunks in seen.values():
        # Within a slot: each episode from t=0 in steps of 10 until its last (short) chunk.
        expected_start = 0
        for episode_id, start, length in chunks:
            assert start == expected_start, chunks
            full_length = len(buffer.episodes[buffer.episode_id_to_index[episode_id]])
            expected_start = 0 if start + length >= full_length else start + length
    # Each chunk's episode is one of the stored ones, and both slots start at t=0 first.
    assert seen[0][0][1] == 0
    assert seen[1][0][1] == 0


def test_sequential_cursor_restarts_when_its_episode_is_evicted() -> None:
    buffer = DRQNEpisodeReplayBuffer(capacity=60, update_mode="sequential", seed=0)
    buffer.add(make_episode(40))
    first = sample(buffer, num_sequences=1, seq_len=10)[0]
    (first_source,) = buffer.last_sampled_source_ids
    assert first.t_started == 0
    buffer.add([make_episode(30), make_episode(25)])  # evicts the 40-step episode
    assert first_source not in buffer.episode_id_to_index
    chunk = sample(buffer, num_sequences=1, seq_len=10)[0]
    assert buffer.last_sampled_source_ids != [first_source]
    assert chunk.t_started == 0


def test_burn_in_skips_starts_that_leave_no_step_to_train() -> None:
    buffer = DRQNEpisodeReplayBuffer(capacity=1000, update_mode="stored", seed=0)
    buffer.add(make_episode(20))
    sequences = buffer.sample(
        num_items=200 * 10,
        batch_length_T=10,
        lookback=1,
        min_batch_length_T=4,
        sample_episodes=True,
        n_step=1,
    )
    assert max(s.t_started for s in sequences) < 20 - 4


@pytest.mark.parametrize("mode", ["stored", "sequence", ""])
def test_unknown_mode_raises(mode: str) -> None:
    if mode == "stored":
        DRQNEpisodeReplayBuffer(update_mode=mode)
        return
    with pytest.raises(ValueError, match=f"Unknown update_mode {mode!r}"):
        DRQNEpisodeReplayBuffer(update_mode=mode)


def test_sequences_hold_one_step_data_whatever_n_step_is() -> None:
    """n-step targets are the learner's job (inside each sequence), not the replay's."""
    buffer = DRQNEpisodeReplayBuffer()
    buffer.add(make_episode(10))
    (sequence,) = buffer.sample(num_items=5, batch_length_T=5, sample_episodes=True, n_step=3)
    assert np.all(sequence.get_extra_model_outputs("n_step") == 1)
    assert np.all(sequence.get_rewards() == 1.0)


def test_each_sampled_sequence_gets_its_own_id() -> None:
    """RLlib's learner connectors group rows by episode id; one id per row keeps the order."""
    buffer = DRQNEpisodeReplayBuffer(capacity=1000, seed=0)
    buffer.add(make_episode(30))
    sequences = sample(buffer, num_sequences=8, seq_len=5)
    assert len({s.id_ for s in sequences}) == 8
    assert set(buffer.last_sampled_source_ids) == {buffer.episodes[0].id_}


def test_prioritized_buffer_draws_high_priority_sequences_more_often() -> None:
    buffer = DRQNPrioritizedEpisodeReplayBuffer(capacity=1000, alpha=1.0, seed=0)
    buffer.add(make_episode(40))
    sequences = sample(buffer, num_sequences=40, seq_len=5)
    # Give sequences starting in the first half a TD error 20x larger than the rest.
    td_errors = np.array(
        [[2.0 if s.t_started < 20 else 0.1] * 5 for s in sequences], dtype=np.float32
    )
    buffer.update_priorities(td_errors)
    starts = np.array([s.t_started for s in sample(buffer, num_sequences=2000, seq_len=5)])
    first_half = (starts < 20).mean()
    print("share of starts in the high-priority half:", first_half)
    assert first_half > 0.75


def test_prioritized_sequence_priority_mixes_max_and_mean_of_trained_steps() -> None:
    buffer = DRQNPrioritizedEpisodeReplayBuffer(capacity=1000, alpha=1.0, priority_eta=0.9)
    buffer.add(make_episode(50))
    sequences = buffer.sample(
        num_items=10,
        batch_length_T=10,
        lookback=1,
        sample_episodes=True,
        n_step=1,
        min_batch_length_T=2,
    )
    (sequence,) = sequences
    (tree_index,) = buffer._sampled_starts
    td = np.zeros((1, 10), np.float32)
    td[0, :2] = 50.0  # burn-in steps: ignored
    td[0, 2 : len(sequence)] = np.linspace(1.0, 2.0, len(sequence) - 2)
    buffer.update_priorities(td)
    trained = td[0, 2 : len(sequence)]
    expected = 0.9 * trained.max() + 0.1 * trained.mean()
    assert buffer._sum_segment[tree_index] == pytest.approx(expected, rel=1e-5)


def test_prioritized_sequence_priority_ignores_the_lookahead_steps() -> None:
    """With n_step=3 a window holds 2 lookahead steps past its 10 trained ones."""
    buffer = DRQNPrioritizedEpisodeReplayBuffer(capacity=1000, alpha=1.0, priority_eta=0.9)
    buffer.add(make_episode(500))
    (window,) = buffer.sample(
        num_items=10, batch_length_T=10, lookback=1, sample_episodes=True, n_step=3
    )
    (tree_index,) = buffer._sampled_starts
    trained_len = min(10, len(window))
    td = np.zeros((1, 12), np.float32)
    td[0, :trained_len] = np.linspace(1.0, 2.0, trained_len)
    td[0, trained_len:] = 50.0  # lookahead steps (and padding): ignored
    buffer.update_priorities(td)
    trained = td[0, :trained_len]
    expected = 0.9 * trained.max() + 0.1 * trained.mean()
    assert buffer._sum_segment[tree_index] == pytest.approx(expected, rel=1e-5)


def test_windows_carry_n_step_lookahead_past_their_trained_steps() -> None:
    buffer = DRQNEpisodeReplayBuffer(seed=0)
    buffer.add(make_episode(30))
    windows = buffer.sample(
        num_items=400, batch_length_T=10, lookback=1, sample_episodes=True, n_step=4
    )
    for window in windows:
        start = window.t_started
        assert len(window) == min(13, 30 - start)
        lookahead = window.get_extra_model_outputs(LOOKAHEAD)
        assert lookahead.tolist() == [t >= 10 for t in range(len(window))]
        # The steps are the episode's own: observation t of the episode is [t].
        assert window.get_observations()[:, 0].tolist() == list(
            range(start, start + len(window) + 1)
        )


def test_prioritized_buffer_rejects_sequential_mode() -> None:
    with pytest.raises(ValueError, match="update_mode='sequential' walks whole episodes"):
        DRQNPrioritizedEpisodeReplayBuffer(update_mode="sequential")

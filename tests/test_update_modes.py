"""Each update mode, watched through real RLlib training on StatelessCartPole.

The module's ``_forward_train`` is wrapped to record what the learner feeds it (after RLlib's
replay, learner connectors and DRQN's state carry) and what the forward pass returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns

from rllib_drqn import DRQNConfig
from rllib_drqn.module import TARGET_STATE_IN
from rllib_drqn.replay import LOOKAHEAD, SEQ_SLOT, SEQ_START

SEQ_LEN = 5


def small_config(update_mode: str, **training: Any) -> DRQNConfig:
    return (
        DRQNConfig()
        .environment("StatelessCartPole")
        .env_runners(num_env_runners=0, rollout_fragment_length=8)
        .training(
            update_mode=update_mode,
            num_sequences_per_batch=6,
            num_steps_sampled_before_learning_starts=300,
            **training,
        )
        .rl_module(model_config={"lstm_cell_size": 8, "fcnet_hiddens": [8], "max_seq_len": SEQ_LEN})
        .reporting(min_sample_timesteps_per_iteration=400)
        .debugging(seed=0)
    )


class ForwardRecorder:
    """Keeps (batch, output) of every forward_train call, as numpy."""

    def __init__(self, module: Any) -> None:
        self.calls: list[tuple[dict[str, Any], dict[str, Any]]] = []
        original = module._forward_train

        def recording_forward_train(batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            out = original(batch, **kwargs)
            self.calls.append((_to_numpy(batch), _to_numpy(out)))
            return out

        module._forward_train = recording_forward_train


def _to_torch(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_torch(v) for k, v in tree.items()}
    return torch.as_tensor(tree)


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().numpy().copy()
    return tree


@pytest.fixture
def train_and_record(ray_session: None) -> Iterator[Any]:
    algos = []

    def run(config: DRQNConfig, iterations: int = 2) -> tuple[Any, ForwardRecorder]:
        algo = config.build_algo()
        algos.append(algo)
        recorder = ForwardRecorder(algo.learner_group._learner.module[DEFAULT_MODULE_ID])
        for _ in range(iterations):
            algo.train()
        assert recorder.calls, "the learner never ran forward_train"
        return algo, recorder

    yield run
    for algo in algos:
        algo.stop()


def test_random_mode_starts_every_sequence_from_zero_state(train_and_record) -> None:
    algo, recorder = train_and_record(small_config("random"))
    starts = []
    for batch, _ in recorder.calls:
        for key in ("h", "c"):
            assert not batch[Columns.STATE_IN][key].any(), "random mode must start from zero"
        # The trained steps and the n-step lookahead that completes their targets.
        assert batch[Columns.OBS].shape[1] == SEQ_LEN + algo.config.n_step - 1
        assert not batch[LOOKAHEAD][:, :SEQ_LEN].any()
        assert batch[LOOKAHEAD][:, SEQ_LEN:].any()
    # No LSTM state is kept in replay: the mode never reads it.
    buffer = algo.local_replay_buffer
    assert all(Columns.STATE_OUT not in e.extra_model_outputs for e in buffer.episodes)
    # Starts spread over the episodes (not only their beginnings).
    sampled = buffer.sample(
        num_items=300 * SEQ_LEN, batch_length_T=SEQ_LEN, lookback=1, sample_episodes=True, n_step=1
    )
    starts = np.array([s.t_started for s in sampled])
    lengths = np.array(
        [
            len(buffer.episodes[buffer.episode_id_to_index[source_id]])
            for source_id in buffer.last_sampled_source_ids
        ]
    )
    relative = starts / lengths
    print("relative start positions: mean", relative.mean(), "max", relative.max())
    assert (starts == 0).mean() < 0.3
    assert relative.max() > 0.8
    assert 0.3 < relative.mean() < 0.7


def test_sequential_mode_carries_each_chunks_final_state_into_the_next(
    train_and_record,
) -> None:
    algo, recorder = train_and_record(small_config("sequential"), iterations=3)
    assert len(recorder.calls) >= 10
    # Each chunk's lookahead (n_step - 1 = 2 steps) is the next chunk's first steps.
    assert recorder.calls[0][0][Columns.OBS].shape[1] == SEQ_LEN + 2
    checked_carry = checked_start = 0
    for (previous, previous_out), (batch, _) in zip(
        recorder.calls, recorder.calls[1:], strict=False
    ):
        previous_rows = {
            (int(slot), int(start) + SEQ_LEN): row
            for row, (slot, start) in enumerate(
                zip(previous[SEQ_SLOT][:, 0], previous[SEQ_START][:, 0], strict=True)
            )
            # Full chunks: all SEQ_LEN trained steps valid (the lookahead may be cut).
            if previous[Columns.LOSS_MASK][row, :SEQ_LEN].all()
        }
        for row, (slot, start) in enumerate(
            zip(batch[SEQ_SLOT][:, 0], batch[SEQ_START][:, 0], strict=True)
        ):
            if start == 0:
                checked_start += 1
                for key in ("h", "c"):
                    assert not batch[Columns.STATE_IN][key][row].any()
                    assert not batch[TARGET_STATE_IN][key][row].any()
                continue
            previous_row = previous_rows[(int(slot), int(start))]
            for key in ("h", "c"):
                np.testing.assert_allclose(
                    batch[Columns.STATE_IN][key][row],
                    previous_out[Columns.STATE_OUT][key][previous_row],
                    rtol=1e-6,
                )
                np.testing.assert_allclose(
                    batch[TARGET_STATE_IN][key][row],
                    previous_out[Columns.NEXT_STATE_OUT][key][previous_row],
                    rtol=1e-6,
                )
            checked_carry += 1
    # The state handed on is the online net's after the SEQ_LEN trained steps, not after the
    # lookahead steps that follow them.
    module = algo.learner_group._learner.module[DEFAULT_MODULE_ID]
    batch, _ = recorder.calls[-1]
    with torch.no_grad():
        out = _to_numpy(module.forward_train(_to_torch(batch)))
        # The online net's inputs o_0 .. o_{SEQ_LEN - 1}, as the module builds them.
        frames = np.concatenate([batch[Columns.OBS][:, :1], batch[Columns.NEXT_OBS]], axis=1)
        features = module.q_net.embed(torch.as_tensor(frames[:, :SEQ_LEN]))
        state_in = {k: torch.as_tensor(v) for k, v in batch[Columns.STATE_IN].items()}
        _, state_after_chunk = module.q_net.recur(features, state_in)
    for key in ("h", "c"):
        np.testing.assert_allclose(
            out[Columns.STATE_OUT][key], state_after_chunk[key].numpy(), rtol=1e-5, atol=1e-6
        )
    print(f"checked {checked_carry} carried states and {checked_start} episode starts")
    assert checked_carry > 20
    assert checked_start > 5


def test_stored_mode_starts_from_the_state_stored_while_acting(train_and_record) -> None:
    algo, recorder = train_and_record(small_config("stored"))
    buffer = algo.local_replay_buffer
    assert all(Columns.STATE_OUT in e.extra_model_outputs for e in buffer.episodes)
    batch, _ = recorder.calls[-1]
    assert batch[Columns.STATE_IN]["h"].any(), "stored states should not all be zero"
    # Match each trained row to its stored episode by its first observation.
    stored_state_by_obs = {}
    for episode in buffer.episodes:
        observations = episode.get_observations()
        for t in range(len(episode)):
            state = (
                episode.get_extra_model_outputs(Columns.STATE_OUT, t - 1)["h"]
                if t > 0
                else np.zeros(8, np.float32)
            )
            stored_state_by_obs[observations[t].tobytes()] = state
    matched = 0
    for row in range(batch[Columns.OBS].shape[0]):
        key = batch[Columns.OBS][row, 0].tobytes()
        if key in stored_state_by_obs:  # rows from episodes still in replay
            np.testing.assert_allclose(batch[Columns.STATE_IN]["h"][row], stored_state_by_obs[key])
            matched += 1
    assert matched >= batch[Columns.OBS].shape[0] // 2


def test_burn_in_steps_carry_zero_loss_weight(train_and_record) -> None:
    algo, recorder = train_and_record(small_config("stored", burn_in_len=2))
    learner = algo.learner_group._learner
    batch, _ = recorder.calls[-1]
    tensors = {k: v for k, v in batch.items()}

    def loss_with_rewards(rewards: np.ndarray) -> float:
        module_batch = {
            k: (
                {kk: torch.as_tensor(vv) for kk, vv in v.items()}
                if isinstance(v, dict)
                else torch.as_tensor(v)
            )
            for k, v in tensors.items()
        }
        module_batch[Columns.REWARDS] = torch.as_tensor(rewards)
        module = learner.module[DEFAULT_MODULE_ID]
        fwd_out = module.forward_train(module_batch)
        loss = learner.compute_loss_for_module(
            module_id=DEFAULT_MODULE_ID,
            config=learner.config,
            batch=module_batch,
            fwd_out=fwd_out,
        )
        return float(loss.detach())

    rewards = tensors[Columns.REWARDS]
    base = loss_with_rewards(rewards)
    burn_in_changed = rewards.copy()
    burn_in_changed[:, :2] += 100.0
    trained_changed = rewards.copy()
    trained_changed[:, 2:] += 100.0
    assert loss_with_rewards(burn_in_changed) == pytest.approx(base, rel=1e-6)
    assert loss_with_rewards(trained_changed) > base + 1.0
    # Lookahead steps carry no loss of their own, but their rewards complete the n-step
    # targets of the last trained steps.
    lookahead_changed = rewards.copy()
    lookahead_changed[:, SEQ_LEN:] += 100.0
    assert loss_with_rewards(lookahead_changed) > base + 1.0


def test_r2d2_settings_train_with_n_step_rescaled_targets_and_priorities(train_and_record) -> None:
    """Stored state + burn-in, 3-step double-Q, value rescaling, prioritized sequences."""
    from rllib_drqn.config import PRIORITIZED_REPLAY_BUFFER_TYPE

    config = small_config(
        "stored",
        burn_in_len=2,
        n_step=3,
        value_rescaling=True,
        dueling=True,
        replay_buffer_config={
            "type": PRIORITIZED_REPLAY_BUFFER_TYPE,
            "capacity": 5000,
            "alpha": 0.9,
            "beta": 0.0,
        },
    )
    algo, recorder = train_and_record(config)
    buffer = algo.local_replay_buffer
    assert type(buffer).__name__ == "DRQNPrioritizedEpisodeReplayBuffer"
    # New steps enter at priority 1.0; sampled starts got priorities from the TD errors.
    assert buffer._sum_segment.sum() != pytest.approx(buffer.get_num_timesteps())
    # The learner's non-finite guard would have raised; the recorded Q-values are finite.
    assert np.isfinite(recorder.calls[-1][1]["qf_preds"]).all()

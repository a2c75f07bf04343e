"""DRQNTorchRLModule: the paper's layers, shapes over [B, T], state handling, bad inputs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from torch import nn

from rllib_drqn import DRQNTorchRLModule
from rllib_drqn.envs import make_flickering_atari
from rllib_drqn.module import TARGET_STATE_IN

FRAME_SPACE = gym.spaces.Box(0, 255, (84, 84, 1), np.uint8)
VECTOR_SPACE = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def build(obs_space: gym.Space = VECTOR_SPACE, num_actions: int = 3, **model_config):
    module = DRQNTorchRLModule(
        observation_space=obs_space,
        action_space=gym.spaces.Discrete(num_actions),
        model_config={"lstm_cell_size": 16, "fcnet_hiddens": [8], **model_config},
    )
    module.make_target_networks()
    return module


def build_with_distinct_target() -> DRQNTorchRLModule:
    """A module whose target net differs from the online one, so mixing them up shows."""
    module = build()
    with torch.no_grad():
        for param in module._target_q_net.parameters():
            param.add_(0.1)
    return module


def zero_state(module: DRQNTorchRLModule, batch: int) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(batch, module.cell_size) for k in ("h", "c")}


def random_state(module: DRQNTorchRLModule, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(batch, module.cell_size, generator=generator) for k in ("h", "c")}


def test_pong_module_has_exactly_the_papers_layers() -> None:
    env = make_flickering_atari({"game": "Pong", "flicker_prob": 0.5})
    module = DRQNTorchRLModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={},
    )
    convs = [m for m in module.q_net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (8, 8), (4, 4)),
        (64, (4, 4), (2, 2)),
        (64, (3, 3), (1, 1)),
    ]
    lstms = [m for m in module.q_net.modules() if isinstance(m, nn.LSTM)]
    assert len(lstms) == 1
    assert (lstms[0].input_size, lstms[0].hidden_size) == (64 * 7 * 7, 512)
    linears = [m for m in module.q_net.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1
    assert (linears[0].in_features, linears[0].out_features) == (512, env.action_space.n)

    frames = torch.randint(0, 256, (2, 5, 84, 84, 1), dtype=torch.uint8)
    out = module.compute_q_values({Columns.OBS: frames, Columns.STATE_IN: zero_state(module, 2)})
    assert out["qf_preds"].shape == (2, 5, env.action_space.n)
    assert out[Columns.STATE_OUT]["h"].shape == (2, 512)


def test_uint8_frames_are_scaled_inside_the_module() -> None:
    module = build(FRAME_SPACE, conv_filters=[[4, 8, 4]])
    frames = torch.full((1, 2, 84, 84, 1), 255, dtype=torch.uint8)
    state = zero_state(module, 1)
    q_uint8 = module.compute_q_values({Columns.OBS: frames, Columns.STATE_IN: state})["qf_preds"]
    # Same result as feeding already-scaled frames through a module that does not scale.
    module.scales_pixels = False
    ones = torch.ones((1, 2, 84, 84, 1))
    q_float = module.compute_q_values({Columns.OBS: ones, Columns.STATE_IN: state})["qf_preds"]
    assert torch.allclose(q_uint8, q_float, atol=1e-5)


def test_initial_state_is_unbatched_zeros() -> None:
    module = build(lstm_cell_size=24)
    state = module.get_initial_state()
    assert set(state) == {"h", "c"}
    for value in state.values():
        assert isinstance(value, np.ndarray)
        assert value.shape == (24,)
        assert value.dtype == np.float32
        assert not value.any()
    assert module.is_stateful()


def test_state_out_continues_the_sequence() -> None:
    """Running T steps at once equals running them one by one, carrying STATE_OUT."""
    module = build()
    obs = torch.randn(3, 6, 2)
    state = random_state(module, 3)
    whole = module.compute_q_values({Columns.OBS: obs, Columns.STATE_IN: state})
    for t in range(6):
        step = module.compute_q_values({Columns.OBS: obs[:, t : t + 1], Columns.STATE_IN: state})
        assert torch.allclose(step["qf_preds"][:, 0], whole["qf_preds"][:, t], atol=1e-5)
        state = step[Columns.STATE_OUT]
    assert torch.allclose(state["h"], whole[Columns.STATE_OUT]["h"], atol=1e-5)


def test_one_step_calls_run_the_cell_without_onednn_and_restore_the_flag() -> None:
    """Acting (T=1) skips oneDNN's per-call weight reorder; longer unrolls keep it."""
    module = build()
    cell, seen = module.q_net.lstm, []
    forward = cell.forward

    def spy(*args, **kwargs):
        seen.append(torch.backends.mkldnn.enabled)
        return forward(*args, **kwargs)

    cell.forward = spy
    state = zero_state(module, 2)
    module.compute_q_values({Columns.OBS: torch.randn(2, 1, 2), Columns.STATE_IN: state})
    module.compute_q_values({Columns.OBS: torch.randn(2, 5, 2), Columns.STATE_IN: state})
    assert seen == [False, True]
    assert torch.backends.mkldnn.enabled


def test_forward_train_matches_separate_online_and_target_passes() -> None:
    """One T+1 pass gives the same Q(o_t), Q(o_t+1) and target values as RLlib's layout."""
    module = build_with_distinct_target()
    obs_seq = torch.randn(4, 6, 2)
    state = random_state(module, 4)
    batch = {
        Columns.OBS: obs_seq[:, :5],
        Columns.NEXT_OBS: obs_seq[:, 1:],
        Columns.STATE_IN: state,
    }
    out = module.forward_train(batch)
    full = module.compute_q_values({Columns.OBS: obs_seq, Columns.STATE_IN: state})["qf_preds"]
    target = module.forward_target({Columns.OBS: obs_seq, Columns.STATE_IN: state})["qf_preds"]
    assert out["qf_preds"].shape == (4, 5, 3)
    assert torch.allclose(out["qf_preds"], full[:, :5], atol=1e-5)
    assert torch.allclose(out["qf_next_preds"], full[:, 1:], atol=1e-5)
    assert torch.allclose(out["qf_target_next_preds"], target[:, 1:], atol=1e-5)
    assert not torch.allclose(out["qf_target_next_preds"], full[:, 1:], atol=1e-3)
    # No carry asked for (random and stored updates): one LSTM call, no state returned.
    assert Columns.STATE_OUT not in out and Columns.NEXT_STATE_OUT not in out


def test_forward_train_returns_the_state_after_t_steps_when_carrying() -> None:
    """Sequential updates (a TARGET_STATE_IN in the batch) get the states after T steps."""
    module = build_with_distinct_target()
    obs_seq = torch.randn(4, 6, 2)
    state, target_state = random_state(module, 4, 0), random_state(module, 4, 1)
    batch = {Columns.OBS: obs_seq[:, :5], Columns.NEXT_OBS: obs_seq[:, 1:]}
    carried = module.forward_train(
        {**batch, Columns.STATE_IN: state, TARGET_STATE_IN: target_state}
    )
    # The state after the 5 trained steps, not after the extra next-observation step.
    first_five = {Columns.OBS: obs_seq[:, :5]}
    after_five = module.compute_q_values({**first_five, Columns.STATE_IN: state})
    target_after_five = module.forward_target({**first_five, Columns.STATE_IN: target_state})
    for key in ("h", "c"):
        assert torch.allclose(carried[Columns.STATE_OUT][key], after_five[Columns.STATE_OUT][key])
        assert torch.allclose(
            carried[Columns.NEXT_STATE_OUT][key], target_after_five[Columns.STATE_OUT][key]
        )
    # The Q-values are those of the one-call path.
    plain = module.forward_train({**batch, Columns.STATE_IN: state})
    assert torch.allclose(carried["qf_preds"], plain["qf_preds"], atol=1e-5)


def test_target_net_can_start_from_its_own_state() -> None:
    module = build()
    obs_seq = torch.randn(2, 4, 2)
    state, target_state = random_state(module, 2, 0), random_state(module, 2, 1)
    batch = {Columns.OBS: obs_seq[:, :3], Columns.NEXT_OBS: obs_seq[:, 1:]}
    out = module.forward_train({**batch, Columns.STATE_IN: state, TARGET_STATE_IN: target_state})
    expected = module.forward_target({Columns.OBS: obs_seq, Columns.STATE_IN: target_state})
    assert torch.allclose(out["qf_target_next_preds"], expected["qf_preds"][:, 1:], atol=1e-5)


def test_burn_in_steps_carry_no_gradient() -> None:
    module = build(burn_in_len=3)
    obs_seq = torch.randn(2, 7, 2, requires_grad=True)
    batch = {
        Columns.OBS: obs_seq[:, :6],
        Columns.NEXT_OBS: obs_seq[:, 1:],
        Columns.STATE_IN: zero_state(module, 2),
    }
    out = module.forward_train(batch)
    assert torch.equal(out["qf_preds"][:, :3], torch.zeros_like(out["qf_preds"][:, :3]))
    out["qf_preds"].sum().backward()
    assert obs_seq.grad is not None
    assert not obs_seq.grad[:, :3].any(), "gradient flowed into burn-in observations"
    assert obs_seq.grad[:, 3:6].abs().sum() > 0


def test_exploration_keeps_one_action_per_env_and_step() -> None:
    """[B, 1] in, [B, 1] actions out: no [B, B] broadcast with several envs per runner."""
    module = build(epsilon=[(0, 1.0), (100, 0.0)])
    batch = {Columns.OBS: torch.randn(5, 1, 2), Columns.STATE_IN: zero_state(module, 5)}
    explored = module.forward_exploration(batch, t=0)
    greedy = module.forward_inference(batch)
    assert explored[Columns.ACTIONS].shape == (5, 1)
    assert greedy[Columns.ACTIONS].shape == (5, 1)
    assert explored[Columns.STATE_OUT]["h"].shape == (5, 16)


def test_epsilon_schedule_decides_between_random_and_greedy() -> None:
    torch.manual_seed(0)
    module = build(num_actions=6, epsilon=[(0, 1.0), (1000, 0.0)])
    batch = {Columns.OBS: torch.randn(400, 1, 2), Columns.STATE_IN: zero_state(module, 400)}
    greedy = module.forward_inference(batch)[Columns.ACTIONS]
    random_acts = module.forward_exploration(batch, t=0)[Columns.ACTIONS]
    assert (random_acts != greedy).float().mean() > 0.6  # 5/6 expected to differ
    late = module.forward_exploration(batch, t=5000)[Columns.ACTIONS]
    assert torch.equal(late, greedy)


def test_dueling_head_is_optional() -> None:
    plain, dueling = build(), build(dueling=True)
    assert plain.q_net.value is None
    assert isinstance(dueling.q_net.value, nn.Linear)


@pytest.mark.parametrize(
    ("model_config", "match"),
    [
        ({"lstm_size": 64}, r"Unknown DRQN model_config key\(s\) \['lstm_size'\]"),
        ({"lstm_cell_size": 0}, r"lstm_cell_size'\] must be a positive int, got 0"),
        ({"max_seq_len": "10"}, r"max_seq_len'\] must be a positive int, got '10'"),
        ({"fcnet_activation": "swishy"}, r"'swishy' is not one of"),
        ({"num_atoms": 51}, r"num_atoms=51 .* Set config.training\(num_atoms=1\)"),
    ],
)
def test_bad_model_config_names_the_value_and_fix(model_config: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(**model_config)


@pytest.mark.parametrize(
    ("obs_space", "error", "match"),
    [
        (gym.spaces.Box(0, 1, (4, 4), np.float32), ValueError, r"got shape \(4, 4\)"),
        (gym.spaces.Text(8), TypeError, r"cannot encode the observation space Text\("),
        (
            gym.spaces.Graph(gym.spaces.Box(0, 1, (2,)), gym.spaces.Discrete(2)),
            TypeError,
            r"cannot encode the observation space Graph\(.*fixed-size Box",
        ),
        (
            gym.spaces.Dict({"seq": gym.spaces.Sequence(gym.spaces.Discrete(3))}),
            TypeError,
            r"cannot encode the observation space Sequence\(Discrete\(3\).* at seq",
        ),
    ],
)
def test_unsupported_observation_space_raises(obs_space, error, match) -> None:
    with pytest.raises(error, match=match):
        build(obs_space)


def test_conv_filters_that_shrink_the_frame_to_nothing_raise() -> None:
    with pytest.raises(ValueError, match="shrink a 84x84 frame to nothing"):
        build(FRAME_SPACE, conv_filters=[[8, 84, 84], [8, 3, 1]])


def test_continuous_actions_raise() -> None:
    with pytest.raises(TypeError, match="needs a Discrete action space"):
        DRQNTorchRLModule(
            observation_space=VECTOR_SPACE,
            action_space=gym.spaces.Box(-1, 1, (2,)),
            model_config={},
        )


def test_wrong_observation_shape_in_a_batch_raises() -> None:
    module = build()
    batch = {Columns.OBS: torch.randn(2, 3), Columns.STATE_IN: zero_state(module, 2)}
    with pytest.raises(ValueError, match=r"expects observations shaped \[B, T, \*\(2,\)\]"):
        module.compute_q_values(batch)

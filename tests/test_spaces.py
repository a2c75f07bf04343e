"""Non-Box observations, GRU cells and the previous action/reward inputs, end to end."""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import tree
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from test_batching import assert_same_batch
from torch import nn

from rllib_drqn import DRQNConfig, DRQNTorchRLModule
from rllib_drqn.batching import AddSequencesToBatch
from rllib_drqn.envs import DelayedRecall, make_delayed_recall
from rllib_drqn.module import PREV_ACTIONS, PREV_REWARDS, TARGET_STATE_IN
from rllib_drqn.replay import DRQNEpisodeReplayBuffer

SEQ_LEN = 4
IMAGE = gym.spaces.Box(0, 255, (8, 8, 1), np.uint8)
SPACES = {
    "discrete": gym.spaces.Discrete(5, start=2),
    "multi_discrete": gym.spaces.MultiDiscrete([3, 2, 4]),
    "multi_binary": gym.spaces.MultiBinary(3),
    "tuple": gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Box(-1, 1, (2, 2)))),
    "dict_with_image": gym.spaces.Dict(
        {"cue": gym.spaces.Discrete(3), "frame": IMAGE, "bits": gym.spaces.MultiBinary(2)}
    ),
    "nested": gym.spaces.Dict(
        {"a": gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.MultiDiscrete([2, 2])))}
    ),
}
SMALL = {"lstm_cell_size": 8, "fcnet_hiddens": [8], "conv_filters": [[4, 3, 2]]}


def build(space: gym.Space, num_actions: int = 3, **model_config: Any) -> DRQNTorchRLModule:
    module = DRQNTorchRLModule(
        observation_space=space,
        action_space=gym.spaces.Discrete(num_actions),
        model_config={**SMALL, **model_config},
    )
    module.make_target_networks()
    return module


def sample_obs(space: gym.Space, batch: int, time: int, seed: int = 0) -> Any:
    """``[B, T, ...]`` tensors of observations drawn from ``space``."""
    space.seed(seed)
    steps = [[space.sample() for _ in range(time)] for _ in range(batch)]
    rows = [tree.map_structure(lambda *leaves: np.stack(leaves), *row) for row in steps]
    stacked = tree.map_structure(lambda *leaves: np.stack(leaves), *rows)
    return tree.map_structure(torch.as_tensor, stacked)


def state(module: DRQNTorchRLModule, batch: int) -> dict[str, torch.Tensor]:
    return {
        k: torch.as_tensor(v)[None].repeat(batch, 1) for k, v in module.get_initial_state().items()
    }


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_acts_and_trains(name: str) -> None:
    space = SPACES[name]
    module = build(space)
    steps = sample_obs(space, 2, 4)
    obs = tree.map_structure(lambda leaf: leaf[:, :3], steps)
    next_obs = tree.map_structure(lambda leaf: leaf[:, 1:], steps)
    out = module.compute_q_values({Columns.OBS: obs, Columns.STATE_IN: state(module, 2)})
    assert out["qf_preds"].shape == (2, 3, 3)
    batch = {
        Columns.OBS: obs,
        Columns.NEXT_OBS: next_obs,
        Columns.ACTIONS: torch.zeros(2, 3, dtype=torch.long),
        Columns.REWARDS: torch.zeros(2, 3),
        Columns.STATE_IN: state(module, 2),
    }
    train_out = module.forward_train(batch)
    # Q(o_t) of training equals acting over the same steps from the same state.
    torch.testing.assert_close(train_out["qf_preds"], out["qf_preds"])
    train_out["qf_preds"].sum().backward()
    assert all(p.grad is not None for p in module.q_net.parameters())


def test_integer_observations_are_one_hot_encoded_inside_the_module() -> None:
    from rllib_drqn.module import _encode

    discrete = _encode(torch.tensor([2, 6]), gym.spaces.Discrete(5, start=2))
    torch.testing.assert_close(discrete, torch.eye(5)[[0, 4]])
    multi = _encode(torch.tensor([[2, 1, 0]]), gym.spaces.MultiDiscrete([3, 2, 4]))
    torch.testing.assert_close(multi, torch.tensor([[0, 0, 1, 0, 1, 1, 0, 0, 0]]).float())
    bits = _encode(torch.tensor([[1, 0, 1]], dtype=torch.int8), gym.spaces.MultiBinary(3))
    torch.testing.assert_close(bits, torch.tensor([[1.0, 0.0, 1.0]]))
    # The MLP sees 5 + 9 + ... one-hot inputs, not the raw integers.
    module = build(gym.spaces.Tuple((SPACES["discrete"], SPACES["multi_discrete"])))
    first = next(m for m in module.q_net.torso.modules() if isinstance(m, nn.Linear))
    assert first.in_features == 5 + 9


def test_image_in_a_dict_goes_through_the_convolutions() -> None:
    module = build(SPACES["dict_with_image"])
    torso = module.q_net.torso
    assert torso.image_path == ("frame",) and isinstance(torso.conv[1][0], nn.Conv2d)
    mlp_in = next(m for m in torso.mlp.modules() if isinstance(m, nn.Linear)).in_features
    assert mlp_in == 3 + 2  # cue one-hot + bits; the frame is not flattened into the MLP.
    obs = sample_obs(SPACES["dict_with_image"], 1, 2)
    blank = {**obs, "frame": torch.zeros_like(obs["frame"])}
    batch = {Columns.STATE_IN: state(module, 1)}
    q_frame = module.compute_q_values({**batch, Columns.OBS: obs})["qf_preds"]
    q_blank = module.compute_q_values({**batch, Columns.OBS: blank})["qf_preds"]
    assert not torch.allclose(q_frame, q_blank)


def test_a_batch_that_does_not_match_a_dict_space_raises() -> None:
    module = build(SPACES["dict_with_image"])
    obs = sample_obs(SPACES["dict_with_image"], 1, 2)
    del obs["bits"]
    with pytest.raises(ValueError, match="built for observations of Dict"):
        module.compute_q_values({Columns.OBS: obs, Columns.STATE_IN: state(module, 1)})


@pytest.mark.parametrize("cell_type", ["lstm", "gru"])
def test_both_cells_carry_state_through_burn_in_and_sequential_chunks(cell_type: str) -> None:
    module = build(SPACES["discrete"], cell_type=cell_type, burn_in_len=2)
    keys = {"lstm": {"h", "c"}, "gru": {"h"}}[cell_type]
    assert set(module.get_initial_state()) == keys
    cell = module.q_net.lstm if cell_type == "lstm" else module.q_net.gru
    assert isinstance(cell, nn.LSTM if cell_type == "lstm" else nn.GRU)
    obs = sample_obs(SPACES["discrete"], 2, 7)
    start = {k: torch.randn(2, 8, generator=torch.Generator().manual_seed(1)) for k in keys}
    # Step by step from a stored state equals one pass.
    whole = module.compute_q_values({Columns.OBS: obs, Columns.STATE_IN: start})
    carried, q_steps = start, []
    for t in range(7):
        step = module.compute_q_values({Columns.OBS: obs[:, t : t + 1], Columns.STATE_IN: carried})
        carried = step[Columns.STATE_OUT]
        q_steps.append(step["qf_preds"])
    torch.testing.assert_close(torch.cat(q_steps, 1), whole["qf_preds"])
    # Training over 6 steps with a sequential carry returns the state after them, and the
    # trained steps after the 2 burn-in steps are those of acting.
    batch = {
        Columns.OBS: obs[:, :6],
        Columns.NEXT_OBS: obs[:, 1:7],
        Columns.ACTIONS: torch.zeros(2, 6, dtype=torch.long),
        Columns.REWARDS: torch.zeros(2, 6),
        Columns.STATE_IN: start,
        TARGET_STATE_IN: start,
    }
    out = module.forward_train(batch)
    assert set(out[Columns.STATE_OUT]) == keys
    after_six = module.compute_q_values({Columns.OBS: obs[:, :6], Columns.STATE_IN: start})
    for key in keys:
        torch.testing.assert_close(out[Columns.STATE_OUT][key], after_six[Columns.STATE_OUT][key])
    torch.testing.assert_close(out["qf_preds"][:, 2:], whole["qf_preds"][:, 2:6])
    assert torch.all(out["qf_preds"][:, :2] == 0)


def test_prev_action_and_reward_reach_the_cell() -> None:
    module = build(SPACES["discrete"], lstm_use_prev_action=True, lstm_use_prev_reward=True)
    assert module.q_net.lstm.input_size == 8 + 3 + 1
    obs = sample_obs(SPACES["discrete"], 1, 1)
    base = {Columns.OBS: obs, Columns.STATE_IN: state(module, 1)}

    def q(action: int, reward: float) -> torch.Tensor:
        prev = {PREV_ACTIONS: torch.tensor([[action]]), PREV_REWARDS: torch.tensor([[reward]])}
        return module.compute_q_values({**base, **prev})["qf_preds"]

    assert not torch.allclose(q(0, 0.0), q(1, 0.0))
    assert not torch.allclose(q(0, 0.0), q(0, 1.0))
    # -1 (no previous action: the episode's first step) is an all-zero one-hot.
    with torch.no_grad():
        module.q_net.lstm.weight_ih_l0[:, 8] = 0.0  # action 0's input weights
    torch.testing.assert_close(q(-1, 0.0), q(0, 0.0))
    with pytest.raises(ValueError, match="lstm_use_prev_action'\\] is set, but the batch has no"):
        module.compute_q_values(base)


class _DictEnv(gym.Env):
    """A Dict-observation env with varied actions and rewards and episodes of 3-11 steps."""

    def __init__(self, config: Any = None) -> None:
        self.observation_space = SPACES["dict_with_image"]
        self.action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(1 << 30)))
        self._left = int(self.np_random.integers(3, 12))
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._left -= 1
        reward = float(action) + float(self.np_random.random())
        return self.observation_space.sample(), reward, self._left == 0, False, {}


@pytest.mark.usefixtures("ray_session")
def test_acting_and_training_see_the_same_prev_action_and_reward_at_every_step() -> None:
    config = (
        DRQNConfig()
        .environment(_DictEnv)
        .env_runners(num_env_runners=0, rollout_fragment_length=5)
        .rl_module(
            model_config={
                **SMALL,
                "lstm_use_prev_action": True,
                "lstm_use_prev_reward": True,
                "max_seq_len": SEQ_LEN,
            }
        )
        .debugging(seed=0)
    )
    config.validate()
    runner = SingleAgentEnvRunner(config=config)
    acting_module = runner.module
    original = acting_module._forward_exploration

    def recording(batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # RLlib keeps every module output in the episode, step by step: the inputs acting saw
        # travel through replay next to the data they must be recomputed from.
        out = original(batch, **kwargs)
        return {
            **out,
            "acted_prev_actions": batch[PREV_ACTIONS],
            "acted_prev_rewards": batch[PREV_REWARDS],
        }

    acting_module._forward_exploration = recording
    chunks = []
    for _ in range(12):  # 5-step fragments: episodes are cut into chunks across samples.
        chunks += runner.sample(num_timesteps=5, explore=True)
    assert any(chunk.t_started > 0 for chunk in chunks)  # Some chunks continue an episode.
    runner.stop()

    buffer = DRQNEpisodeReplayBuffer(capacity=10_000, update_mode="stored")
    buffer.add(chunks)
    sequences = []
    for episode in buffer.episodes:
        for start in range(len(episode)):
            sequence = episode.slice(
                slice(start, min(start + SEQ_LEN, len(episode))), len_lookback_buffer=1
            )
            sequence.id_ = f"{sequence.id_}/{len(sequences)}"
            sequences.append(sequence)
    learner_module = MultiRLModuleSpec(
        rl_module_specs={
            DEFAULT_MODULE_ID: RLModuleSpec(
                module_class=DRQNTorchRLModule,
                observation_space=_DictEnv().observation_space,
                action_space=_DictEnv().action_space,
                model_config=config.model_config,
            )
        }
    ).build()
    piece = AddSequencesToBatch()
    ours = piece(rl_module=learner_module, batch={}, episodes=copy.deepcopy(sequences))
    rllib = piece.rllib_pieces(
        rl_module=learner_module, batch={}, episodes=copy.deepcopy(sequences), shared_data={}
    )
    ours, rllib = ours[DEFAULT_MODULE_ID], rllib[DEFAULT_MODULE_ID]
    assert_same_batch(ours, rllib)  # Dict observations and prev columns, both paths.
    valid = ours[Columns.LOSS_MASK]
    np.testing.assert_array_equal(ours[PREV_ACTIONS][valid], ours["acted_prev_actions"][valid])
    np.testing.assert_allclose(ours[PREV_REWARDS][valid], ours["acted_prev_rewards"][valid])
    starts = np.array([sequence.t_started == 0 for sequence in sequences])
    assert (ours[PREV_ACTIONS][starts, 0] == -1).all() and (
        ours[PREV_REWARDS][starts, 0] == 0
    ).all()
    assert (ours[PREV_ACTIONS][~starts, 0] >= 0).all() and valid.sum() > 50


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize(
    ("cell_type", "training"),
    [
        ("gru", {"update_mode": "stored", "burn_in_len": 2}),
        ("gru", {"update_mode": "sequential"}),
        ("lstm", {"update_mode": "random"}),
    ],
)
def test_discrete_memory_env_trains_with_either_cell_and_prev_inputs(
    cell_type: str, training: dict[str, Any]
) -> None:
    config = (
        DRQNConfig()
        .environment("DelayedRecall", env_config={"delay": 2})
        .training(num_steps_sampled_before_learning_starts=64, **training)
        .rl_module(
            model_config={
                "cell_type": cell_type,
                "lstm_cell_size": 16,
                "lstm_use_prev_action": True,
                "lstm_use_prev_reward": True,
                "max_seq_len": SEQ_LEN,
            }
        )
        .reporting(min_sample_timesteps_per_iteration=200)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        assert result["learners"][DEFAULT_MODULE_ID]["num_module_steps_trained"] > 0
        module = algo.get_module()
        assert set(module.get_initial_state()) == ({"h", "c"} if cell_type == "lstm" else {"h"})
    finally:
        algo.stop()


def test_delayed_recall_needs_the_cue_from_delay_plus_one_steps_back() -> None:
    env = DelayedRecall(num_cues=3, delay=4)
    returns = {}
    for answer_with in ("cue", "wrong"):
        obs, _ = env.reset(seed=3)
        cue, observations = int(obs), [int(obs)]
        for _ in range(5):
            obs, reward, terminated, _, _ = env.step(0)
            observations.append(int(obs))
            assert reward == 0.0 and not terminated
        answer = cue if answer_with == "cue" else (cue + 1) % 3
        _, returns[answer_with], terminated, _, _ = env.step(answer)
        assert terminated
        assert observations[1:] == [3, 3, 3, 3, 4]  # four blanks, then the query
    assert returns == {"cue": 1.0, "wrong": 0.0}
    with pytest.raises(ValueError, match=r"Unknown DelayedRecall env_config key\(s\) \['delays'\]"):
        make_delayed_recall({"delays": 4})
    with pytest.raises(ValueError, match="num_cues must be an integer >= 2, got 1"):
        make_delayed_recall({"num_cues": 1})


DICT_WITHOUT_PIXELS = gym.spaces.Dict({"frame": IMAGE, "cue": gym.spaces.Discrete(2)})


@pytest.mark.parametrize(
    ("configure", "error", "match"),
    [
        (
            lambda c: c.environment("Pendulum-v1").rl_module(
                model_config={"lstm_use_prev_action": True}
            ),
            TypeError,
            r"got Box\(-2.0, 2.0, \(1,\), float32\).*lstm_use_prev_action also needs it",
        ),
        (
            lambda c: c.environment("DelayedRecall").rl_module(model_config={"cell_type": "rnn"}),
            ValueError,
            r"Unknown model_config\['cell_type'\]='rnn'; use one of \['lstm', 'gru'\]",
        ),
        (
            lambda c: c.environment(
                observation_space=DICT_WITHOUT_PIXELS, action_space=gym.spaces.Discrete(2)
            ).rl_module(model_config={"image_key": "pixels"}),
            ValueError,
            r"image_key'\]='pixels' is not a key .* keys are \['cue', 'frame'\]",
        ),
        (
            lambda c: c.environment(
                observation_space=gym.spaces.Text(5), action_space=gym.spaces.Discrete(2)
            ),
            TypeError,
            r"cannot encode the observation space Text\(",
        ),
    ],
)
def test_bad_spaces_and_keys_raise_in_the_driver(configure: Any, error: type, match: str) -> None:
    config = configure(DRQNConfig())
    with pytest.raises(error, match=match):
        config.validate()


def test_paper_preset_pins_the_papers_settings_over_the_small_task_defaults() -> None:
    from rllib_drqn import presets

    defaults, paper = DRQNConfig(), presets.drqn_paper()
    assert (defaults.n_step, defaults.lr, defaults.rollout_fragment_length) == (3, 3e-3, 4)
    assert defaults.update_mode == "stored"
    assert (paper.n_step, paper.lr, paper.rollout_fragment_length) == (1, 1e-4, 1)
    assert paper.metrics_num_episodes_for_smoothing == 100
    assert (paper.update_mode, paper.burn_in_len, paper.num_envs_per_env_runner) == ("random", 0, 4)
    assert paper.model_config["lstm_cell_size"] == 512
    assert paper.epsilon == [(0, 1.0), (250_000, 0.01)]
    # Unset, the cell size follows the observations: the paper's 512 for frames.
    from rllib_drqn.module import default_cell_size

    assert default_cell_size(IMAGE) == 512 and default_cell_size(gym.spaces.Discrete(3)) == 128

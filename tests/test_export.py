"""Tests of ``rllib export`` and ``rllib_drqn.export``: step-by-step parity, the player, bad inputs.

The parity test plays whole episodes with three players side by side, each carrying its own
recurrent state through the episode: the exported ONNX model in onnxruntime, the exported
TorchScript model, and the RLModule itself (``forward_inference``, with ``compute_q_values``
on the same batch for its Q-values). The env is driven by the module's greedy action; at every
step the Q-values agree within 1e-5 and the greedy actions are identical. Modules are built
with random weights and saved with ``module.save_to_path()``; the exports read those
directories, and one Algorithm checkpoint (``algo.save_to_path()``) goes through the command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import onnxruntime  # The test extra installs it (with onnx): CI runs these tests.
import pytest
import torch
import tree
from ray.rllib.algorithms.dqn.default_dqn_rl_module import QF_PREDS
from ray.rllib.core.columns import Columns

from rllib_drqn import DRQNConfig, DRQNTorchRLModule
from rllib_drqn.cli import main
from rllib_drqn.evaluate import play_episodes
from rllib_drqn.export import (
    EXPORT_EXTRA,
    ExportError,
    export_checkpoint,
    export_module,
)
from rllib_drqn.module import NO_PREV_ACTION, NO_PREV_REWARD, PREV_ACTIONS, PREV_REWARDS

torch.set_num_threads(1)  # Batch-1 inference; threads only fight over CI's 2 cores.

REPO = Path(__file__).resolve().parents[1]
PLAYER = REPO / "docs" / "examples" / "play_onnx.py"
ATOL = 1e-5
EPISODES = 2

IMAGE_SPACE = gym.spaces.Box(0, 255, (84, 84, 1), np.uint8)
#: Discrete (with a start), MultiDiscrete, and a Tuple of MultiBinary and Box inside a Dict.
DICT_SPACE = gym.spaces.Dict(
    {
        "room": gym.spaces.Discrete(5, start=1),
        "doors": gym.spaces.MultiDiscrete([2, 3]),
        "sensors": gym.spaces.Tuple(
            (gym.spaces.MultiBinary(3), gym.spaces.Box(-1.0, 1.0, (2,), np.float32))
        ),
    }
)
SMALL = {"lstm_cell_size": 16, "fcnet_hiddens": [16]}
PREV_BOTH = {"lstm_use_prev_action": True, "lstm_use_prev_reward": True}


class RandomObservationEnv(gym.Env):
    """Observations drawn from a space, a reward that depends on the action, fixed length.

    Random frames are a stand-in for Atari: the players only have to agree on them.
    """

    def __init__(self, observation_space: gym.Space, num_actions: int, length: int) -> None:
        self.observation_space = observation_space
        self.action_space = gym.spaces.Discrete(num_actions)
        self.length = length

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        self._steps = 0
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._steps += 1
        reward = float(action == self._steps % self.action_space.n) + self.np_random.normal()
        return self.observation_space.sample(), reward, False, self._steps >= self.length, {}


def make_module(
    space: gym.Space, tmp_path: Path, num_actions: int = 4, **model_config: Any
) -> tuple[Any, Path]:
    """A DRQN module with random weights, saved as an RLModule directory."""
    module = DRQNTorchRLModule(
        observation_space=space,
        action_space=gym.spaces.Discrete(num_actions),
        model_config=model_config,
        inference_only=True,
    )
    module.eval()
    path = tmp_path / "module"
    module.save_to_path(path)
    return module, path


# ---------------------------------------------------------------------------------------------
# The three players.
# ---------------------------------------------------------------------------------------------

Step = Callable[[Any, int, float], tuple[np.ndarray, int]]


def module_player(module: DRQNTorchRLModule) -> Step:
    """``forward_inference`` with the state it returns, fed back; Q-values of the same batch."""
    state = tree.map_structure(lambda s: torch.as_tensor(s)[None], module.get_initial_state())

    def step(obs: Any, prev_action: int, prev_reward: float) -> tuple[np.ndarray, int]:
        nonlocal state
        leaves = tree.map_structure(
            lambda leaf, sub: torch.as_tensor(np.asarray(leaf, sub.dtype))[None, None],
            obs,
            _dtypes(module.observation_space),
        )
        batch = {Columns.OBS: leaves, Columns.STATE_IN: state}
        if module.uses_prev_action:
            batch[PREV_ACTIONS] = torch.tensor([[prev_action]])
        if module.uses_prev_reward:
            batch[PREV_REWARDS] = torch.tensor([[prev_reward]], dtype=torch.float32)
        with torch.no_grad():
            out = module.forward_inference(batch)
            q_values = module.compute_q_values(batch)[QF_PREDS]
        state = out[Columns.STATE_OUT]
        return q_values.reshape(-1).numpy(), int(out[Columns.ACTIONS].reshape(-1)[0])

    return step


def _dtypes(space: gym.Space) -> Any:
    """The space's structure with a leaf space (its dtype) at every leaf, for map_structure."""
    if isinstance(space, gym.spaces.Dict):
        return {key: _dtypes(sub) for key, sub in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(_dtypes(sub) for sub in space.spaces)
    return space


def feeds(
    meta: dict[str, Any], obs: Any, carried: dict[str, Any], batched: bool = False
) -> list[np.ndarray]:
    """The exported model's inputs in ``model.json`` order (a batch of one unless ``batched``)."""
    values = []
    for spec in meta["inputs"]:
        if spec["kind"] == "observation":
            leaf = obs
            for key in spec["path"]:
                leaf = leaf[key]
            leaf = np.asarray(leaf, spec["dtype"])
            values.append(leaf if batched else leaf[None])
        else:
            values.append(np.asarray(carried[spec["name"]], spec["dtype"]))
    return values


def load_exported(out_dir: Path) -> tuple[dict[str, Any], Callable[..., list[np.ndarray]]]:
    """``model.json`` and a function running the model on its inputs (numpy, in order)."""
    meta = json.loads((out_dir / "model.json").read_text())
    model_file = out_dir / meta["model_file"]
    if meta["format"] == "onnx":
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(model_file), options)
        names = [spec["name"] for spec in meta["inputs"]]

        def run(values: list[np.ndarray]) -> list[np.ndarray]:
            return session.run(None, dict(zip(names, values, strict=True)))

        return meta, run
    traced = torch.jit.load(str(model_file))

    def run_traced(values: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return [tensor.numpy() for tensor in traced(*map(torch.as_tensor, values))]

    return meta, run_traced


def exported_player(out_dir: Path) -> Step:
    """The ONNX model in onnxruntime or the TorchScript model, as ``model.json`` describes it."""
    meta, run = load_exported(out_dir)
    names = [spec["name"] for spec in meta["outputs"]]
    state = {
        spec["name"]: np.full([1, *spec["shape"][1:]], spec["at_episode_start"], spec["dtype"])
        for spec in meta["inputs"]
        if spec["kind"] == "state"
    }

    def step(obs: Any, prev_action: int, prev_reward: float) -> tuple[np.ndarray, int]:
        nonlocal state
        carried = {**state, "prev_action": [prev_action], "prev_reward": [prev_reward]}
        out = dict(zip(names, run(feeds(meta, obs, carried)), strict=True))
        state = {s["input"]: out[s["name"]] for s in meta["outputs"] if s["kind"] == "state"}
        return out["q_values"][0], int(out["action"][0])

    return step


def play_side_by_side(module: DRQNTorchRLModule, out_dirs: list[Path], env: gym.Env) -> int:
    """Whole episodes; at every step each player's Q-values and action match the module's."""
    steps = 0
    for episode in range(EPISODES):
        obs, _ = env.reset(seed=episode)
        reference = module_player(module)
        players = {out_dir.name: exported_player(out_dir) for out_dir in out_dirs}
        prev_action, prev_reward, done = NO_PREV_ACTION, NO_PREV_REWARD, False
        while not done:
            q_want, action = reference(obs, prev_action, prev_reward)
            for name, player in players.items():
                q_got, action_got = player(obs, prev_action, prev_reward)
                np.testing.assert_allclose(
                    q_got, q_want, rtol=0, atol=ATOL, err_msg=f"{name}, step {steps}"
                )
                assert action_got == action, (name, steps, q_got, q_want)
            obs, prev_reward, terminated, truncated, _ = env.step(action)
            prev_action, done = action, terminated or truncated
            steps += 1
    return steps


PARITY_CASES = [
    # The paper's network: 84x84 frames, the three convolutions, LSTM(512).
    pytest.param(IMAGE_SPACE, {"cell_type": "lstm"}, 12, id="image-lstm512"),
    pytest.param(
        IMAGE_SPACE,
        {"cell_type": "gru", "lstm_cell_size": 32, **PREV_BOTH},
        12,
        id="image-gru-prev-action-reward",
    ),
    pytest.param(DICT_SPACE, {**SMALL, "cell_type": "lstm"}, 30, id="dict-lstm"),
    pytest.param(
        DICT_SPACE,
        {**SMALL, "cell_type": "lstm", "lstm_use_prev_action": True},
        30,
        id="dict-lstm-prev-action",
    ),
    pytest.param(
        DICT_SPACE,
        {**SMALL, "cell_type": "gru", "lstm_use_prev_reward": True},
        30,
        id="dict-gru-prev-reward",
    ),
    pytest.param(
        gym.spaces.Discrete(6),
        {**SMALL, "cell_type": "gru", "dueling": True, **PREV_BOTH},
        30,
        id="discrete-gru-dueling-prev-action-reward",
    ),
]


@pytest.mark.parametrize(("space", "model_config", "length"), PARITY_CASES)
def test_exported_models_play_like_the_module(
    space: gym.Space, model_config: dict[str, Any], length: int, tmp_path: Path
) -> None:
    module, module_dir = make_module(space, tmp_path, **model_config)
    out_dirs = []
    for fmt in ("onnx", "torchscript"):
        result = export_checkpoint(module_dir, tmp_path / fmt, format=fmt)
        assert result.metadata["checkpoint"] == str(module_dir.resolve())
        out_dirs.append(result.out_dir)
    env = RandomObservationEnv(space, num_actions=4, length=length)
    assert play_side_by_side(module, out_dirs, env) == EPISODES * length


def test_model_json_lays_out_structured_observations(tmp_path: Path) -> None:
    _, module_dir = make_module(DICT_SPACE, tmp_path, **SMALL, **PREV_BOTH)
    meta = export_checkpoint(module_dir, tmp_path / "out").metadata
    assert [(s["name"], s["dtype"], s["shape"]) for s in meta["inputs"]] == [
        ("obs.doors", "int64", ["batch", 2]),
        ("obs.room", "int64", ["batch"]),
        ("obs.sensors.0", "int8", ["batch", 3]),
        ("obs.sensors.1", "float32", ["batch", 2]),
        ("prev_action", "int64", ["batch"]),
        ("prev_reward", "float32", ["batch"]),
        ("h", "float32", ["batch", 16]),
        ("c", "float32", ["batch", 16]),
    ]
    assert [s["name"] for s in meta["outputs"]] == ["q_values", "action", "h_out", "c_out"]
    assert meta["inputs"][1]["space"] == {"type": "Discrete", "n": 5, "start": 1, "dtype": "int64"}
    assert meta["inputs"][4]["at_episode_start"] == -1
    assert meta["initial_state"] == {
        key: {"shape": [16], "dtype": "float32", "fill": 0.0} for key in ("h", "c")
    }
    assert meta["observation_space"]["type"] == "Dict"
    assert meta["action_space"] == {"type": "Discrete", "n": 4, "start": 0, "dtype": "int64"}
    assert meta["onnx_opset"] == 17 and meta["torch_version"] == torch.__version__
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == [s["name"] for s in meta["inputs"]]
    assert [o.name for o in session.get_outputs()] == [s["name"] for s in meta["outputs"]]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_batch_axis_is_dynamic(fmt: str, tmp_path: Path) -> None:
    """16 envs in one call (traced at 2), three steps with state carried: the module's Q."""
    module, _ = make_module(DICT_SPACE, tmp_path, **SMALL, lstm_use_prev_action=True)
    meta, run = load_exported(export_module(module, tmp_path / "out", format=fmt).out_dir)
    rng = np.random.default_rng(0)
    DICT_SPACE.seed(0)
    carried: dict[str, Any] = {key: np.zeros((16, 16), np.float32) for key in ("h", "c")}
    state = {key: torch.as_tensor(value) for key, value in carried.items()}
    for _ in range(3):
        obs = tree.map_structure(
            lambda *leaves: np.stack(leaves), *[DICT_SPACE.sample() for _ in range(16)]
        )
        carried["prev_action"] = rng.integers(-1, 4, size=16)
        got = run(feeds(meta, obs, carried, batched=True))
        batch = {
            Columns.OBS: tree.map_structure(lambda leaf: torch.as_tensor(leaf)[:, None], obs),
            Columns.STATE_IN: state,
            PREV_ACTIONS: torch.as_tensor(carried["prev_action"])[:, None],
        }
        with torch.no_grad():
            want = module.compute_q_values(batch)
        assert got[0].shape == (16, 4) and got[1].shape == (16,)
        np.testing.assert_allclose(got[0], want[QF_PREDS][:, 0].numpy(), rtol=0, atol=ATOL)
        state = want[Columns.STATE_OUT]
        carried.update(h=got[2], c=got[3])


def test_player_needs_neither_torch_nor_ray(tmp_path: Path) -> None:
    """docs/examples/play_onnx.py plays as the module does, importing neither torch nor ray."""
    cartpole = gym.make("CartPole-v1")
    space = cartpole.observation_space
    module, module_dir = make_module(space, tmp_path, num_actions=2, **SMALL, **PREV_BOTH)
    out_dir = export_checkpoint(module_dir, tmp_path / "deploy").out_dir
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['play_onnx.py', {str(out_dir)!r}, 'CartPole-v1', '2']\n"
        f"runpy.run_path({str(PLAYER)!r}, run_name='__main__')\n"
        "print('imported:', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray'}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["episode 0", "episode 1", "imported"], lines
    assert lines[-1] == "imported: []"
    # Greedy, episode i reset with seed i: the returns of the module played by the plugin.
    returns = play_episodes(module, cartpole, num_episodes=2, epsilon=0.0, seed=0)
    assert lines[:2] == [f"episode {i}: return {value:g}" for i, value in enumerate(returns)]


# ---------------------------------------------------------------------------------------------
# The command, and every bad input.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def algorithm_checkpoint(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ``algo.save_to_path()`` checkpoint (the layout ``rllib train file`` writes)."""
    config = (
        DRQNConfig()
        .environment("StatelessCartPole")
        .env_runners(num_env_runners=0)
        .rl_module(model_config=SMALL)
    )
    algo = config.build_algo()
    try:
        return Path(algo.save_to_path(tmp_path_factory.mktemp("checkpoints") / "drqn"))
    finally:
        algo.stop()


def _one_line_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("rllib: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_command_exports_an_algorithm_checkpoint(
    algorithm_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = algorithm_checkpoint.resolve()
    before = sorted(p.relative_to(checkpoint) for p in checkpoint.rglob("*"))
    for fmt, model_file in (("onnx", "model.onnx"), ("torchscript", "model.pt")):
        out = tmp_path / fmt
        assert main(["export", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert f"Model:    {out / model_file}" in printed
        assert "h float32[batch, 16]" in printed
        assert sorted(p.name for p in out.iterdir()) == sorted(["model.json", model_file])
        meta = json.loads((out / "model.json").read_text())
        assert meta["checkpoint"] == str(checkpoint)
        assert (meta["env"], meta["algorithm"], meta["format"]) == (
            "StatelessCartPole",
            "DRQN",
            fmt,
        )
    assert sorted(p.relative_to(checkpoint) for p in checkpoint.rglob("*")) == before
    # The module directory inside the checkpoint exports too, and knows the checkpoint's env.
    module_dir = checkpoint / "learner_group" / "learner" / "rl_module" / "default_policy"
    meta = export_checkpoint(module_dir, tmp_path / "from-module").metadata
    assert (meta["checkpoint"], meta["env"]) == (str(checkpoint), "StatelessCartPole")


def _dqn_module_dir(tmp_path: Path) -> Path:
    """RLlib's own DQN module, saved as an RLModule directory: not a DRQN."""
    from ray.rllib.algorithms.dqn.dqn_catalog import DQNCatalog
    from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import (
        DefaultDQNTorchRLModule,
    )

    dqn_defaults = {"double_q": True, "dueling": False, "num_atoms": 1, "epsilon": [(0, 1.0)]}
    module = DefaultDQNTorchRLModule(
        observation_space=gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
        action_space=gym.spaces.Discrete(2),
        model_config={"fcnet_hiddens": [8], "v_min": -1.0, "v_max": 1.0, **dqn_defaults},
        inference_only=True,
        catalog_class=DQNCatalog,
    )
    return Path(module.save_to_path(tmp_path / "dqn_module"))


BAD_INPUTS = [
    # id, checkpoint (in tmp_path, or a function of tmp_path making it), --format, --out, fragments
    ("missing", "nowhere", "onnx", "out", ["no such directory"]),
    ("empty-dir", "empty", "onnx", "out", ["not an Algorithm checkpoint", "module.save_to_path"]),
    ("a-file", "file.txt", "onnx", "out", ["not a directory"]),
    ("dqn-module", _dqn_module_dir, "onnx", "out", ["DefaultDQNTorchRLModule", "not a DRQN"]),
    ("unknown-format", "drqn", "tflite", "out", ["unknown export format 'tflite'"]),
    ("out-exists", "drqn", "onnx", "existing", ["already exists", "never overwrites"]),
    ("out-is-a-file", "drqn", "torchscript", "file.txt", ["output file", "already exists"]),
    ("out-inside-checkpoint", "drqn", "onnx", "drqn/exported", ["inside the checkpoint"]),
]


@pytest.mark.parametrize(
    ("checkpoint", "fmt", "out", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    checkpoint: str | Callable[[Path], Path],
    fmt: str,
    out: str,
    fragments: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("not a checkpoint")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("an earlier export")
    make_module(gym.spaces.Discrete(3), tmp_path, **SMALL)[1].rename(tmp_path / "drqn")
    path = checkpoint(tmp_path) if callable(checkpoint) else tmp_path / checkpoint
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}

    status = main(["export", str(path), "--format", fmt, "--out", str(tmp_path / out)])

    assert status == 2
    _one_line_error(capsys, *fragments)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert (tmp_path / "existing" / "keep.txt").read_text() == "an earlier export"


def test_missing_export_extra_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, module_dir = make_module(gym.spaces.Discrete(3), tmp_path, **SMALL)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails.

    assert main(["export", str(module_dir), "--out", str(tmp_path / "out")]) == 2

    _one_line_error(capsys, "needs onnxruntime", EXPORT_EXTRA)
    assert not (tmp_path / "out").exists()
    # TorchScript needs neither onnx nor onnxruntime.
    out = tmp_path / "torchscript"
    assert main(["export", str(module_dir), "--format", "torchscript", "--out", str(out)]) == 0


def test_export_module_rejects_what_is_not_drqn(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="takes a DRQNTorchRLModule, got Linear"):
        export_module(torch.nn.Linear(2, 2), tmp_path / "out")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()

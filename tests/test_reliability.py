"""Long runs survive: checkpoint -> fresh process -> continue, replay in checkpoints, env runner
restarts, the non-finite guard, and the soak script.

Training is tiny (StatelessCartPole, LSTM(8), a few hundred env steps); the fresh-process
restore and the soak script run in subprocesses with their own Ray instance, as a user's next
session would.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch
from ray.rllib.core import DEFAULT_MODULE_ID

from rllib_drqn import DRQNConfig
from rllib_drqn.checkpoints import REPLAY_STATE_KEY, load_algorithm
from rllib_drqn.resumable import SAMPLING_STATE_KEY

# Two shared cores: intra-op threads only oversubscribe them (measured 30x slower).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
STEPS_LIFETIME = "num_env_steps_sampled_lifetime"


def tiny_config(**training: Any) -> DRQNConfig:
    return (
        DRQNConfig()
        .environment("StatelessCartPole")
        .env_runners(num_env_runners=0, rollout_fragment_length=16)
        .training(
            num_sequences_per_batch=4, num_steps_sampled_before_learning_starts=64, **training
        )
        .rl_module(model_config={"lstm_cell_size": 8, "fcnet_hiddens": [8], "max_seq_len": 5})
        .reporting(min_sample_timesteps_per_iteration=64)
        .debugging(seed=0)
    )


@pytest.fixture
def build(ray_session: None) -> Iterator[Any]:
    """Builds algorithms and stops them all at the end of the test."""
    algos = []

    def _build(config: DRQNConfig) -> Any:
        algos.append(config.build_algo())
        return algos[-1]

    yield _build
    for algo in algos:
        algo.stop()


def module_weights(algo: Any) -> dict[str, np.ndarray]:
    module = algo.learner_group._learner.module[DEFAULT_MODULE_ID]
    return {key: value.detach().cpu().numpy() for key, value in module.state_dict().items()}


def fresh_process_env() -> dict[str, str]:
    """The environment of a new session: its own Ray instance, not this session's."""
    return {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory`` with its size and mtime: proof that nothing changed."""
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


# The fresh process: plain RLlib, no `import rllib_drqn` before the restore. Unpickling the
# DRQN class imports the package, which registers its envs.
RESTORE_SCRIPT = textwrap.dedent(
    """\
    import json, sys
    import numpy as np
    import torch
    torch.set_num_threads(1)
    import ray
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.tune.registry import ENV_CREATOR, _global_registry

    checkpoint, weights_file = sys.argv[1], sys.argv[2]
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    imported_before = "rllib_drqn" in sys.modules
    algo = Algorithm.from_checkpoint(checkpoint)
    module = algo.learner_group._learner.module["default_policy"]
    saved = np.load(weights_file)
    restored = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    report = {
        "imported_before": imported_before,
        "env_registered": _global_registry.contains(ENV_CREATOR, "StatelessCartPole"),
        "algorithm": type(algo).__name__,
        "same_keys": sorted(saved.files) == sorted(restored),
        "max_weight_diff": max(float(np.abs(saved[k] - restored[k]).max()) for k in saved.files),
        "training_iteration": algo.training_iteration,
        "steps": algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime")),
        "replay_steps": algo.local_replay_buffer.get_num_timesteps(),
    }
    result = algo.train()
    report["next_iteration"] = result["training_iteration"]
    report["next_steps"] = result["num_env_steps_sampled_lifetime"]
    report["trained"] = result["learners"]["default_policy"]["num_module_steps_trained"]
    algo.stop()
    ray.shutdown()
    print("REPORT " + json.dumps(report, default=lambda value: value.item()))  # numpy scalars
    """
)


def test_checkpoint_restores_in_a_fresh_process_and_training_continues(
    build: Any, tmp_path: Path
) -> None:
    algo = build(tiny_config())
    for _ in range(2):
        result = algo.train()
    steps = result[STEPS_LIFETIME]
    checkpoint = Path(algo.save_to_path(tmp_path / "checkpoint"))
    weights_file = tmp_path / "weights.npz"
    np.savez(weights_file, **module_weights(algo))
    before = snapshot(checkpoint)

    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", RESTORE_SCRIPT, str(checkpoint), str(weights_file)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=fresh_process_env(),
    )
    print(f"fresh-process restore + 1 iteration: {time.perf_counter() - started:.1f} s")
    assert completed.returncode == 0, completed.stderr[-4000:]
    (line,) = [line for line in completed.stdout.splitlines() if line.startswith("REPORT ")]
    report = json.loads(line.removeprefix("REPORT "))
    print(report)

    assert report["imported_before"] is False
    assert report["env_registered"] is True
    assert report["algorithm"] == "DRQN"
    assert report["same_keys"] and report["max_weight_diff"] == 0.0
    assert report["training_iteration"] == 2
    assert report["steps"] == steps
    assert report["next_iteration"] == 3
    assert report["next_steps"] > steps
    assert report["trained"] > 0
    # Off by default: no replay in the checkpoint, which stays small.
    assert report["replay_steps"] == 0
    with (checkpoint / "algorithm_state.pkl").open("rb") as stream:
        assert REPLAY_STATE_KEY not in pickle.load(stream)
    assert (checkpoint / "algorithm_state.pkl").stat().st_size < 64_000
    # Restoring only reads the checkpoint.
    assert snapshot(checkpoint) == before


def test_replay_comes_back_with_store_buffer_in_checkpoints(build: Any, tmp_path: Path) -> None:
    algo = build(tiny_config(store_buffer_in_checkpoints=True))
    algo.train()
    buffer = algo.local_replay_buffer
    stored_steps = buffer.get_num_timesteps()
    assert stored_steps >= 64
    checkpoint = Path(algo.save_to_path(tmp_path / "with_replay"))
    before = snapshot(checkpoint)
    with (checkpoint / "algorithm_state.pkl").open("rb") as stream:
        assert REPLAY_STATE_KEY in pickle.load(stream)

    restored = load_algorithm(checkpoint)
    try:
        replay = restored.local_replay_buffer
        assert type(replay) is type(buffer)
        assert replay.get_num_timesteps() == stored_steps
        assert [len(e) for e in replay.episodes] == [len(e) for e in buffer.episodes]
        np.testing.assert_array_equal(
            replay.episodes[0].get_observations(), buffer.episodes[0].get_observations()
        )
        result = restored.train()  # Samples from the restored replay from the first update.
        assert result["learners"][DEFAULT_MODULE_ID]["num_module_steps_trained"] > 0
        assert replay.get_num_timesteps() > stored_steps
    finally:
        restored.stop()
    assert snapshot(checkpoint) == before


def test_sequential_cursors_and_sampling_generator_come_back(build: Any) -> None:
    """A resumed sequential run trains on the chunks the uninterrupted one would have."""
    algo = build(tiny_config(update_mode="sequential", store_buffer_in_checkpoints=True))
    for _ in range(2):
        algo.train()
    buffer = algo.local_replay_buffer
    cursors = [(c.episode_id, c.position) if c else None for c in buffer._cursors]
    assert any(cursor is not None and cursor[1] > 0 for cursor in cursors), cursors
    state = algo.get_state()
    assert len(state[SAMPLING_STATE_KEY]["cursors"]) == len(cursors)

    restored = build(tiny_config(update_mode="sequential", store_buffer_in_checkpoints=True))
    restored.set_state(state)
    replay = restored.local_replay_buffer
    assert [(c.episode_id, c.position) if c else None for c in replay._cursors] == cursors
    # The same generator and cursors: both buffers now cut the same chunks.
    seq_len = 5  # tiny_config's max_seq_len.
    drawn = []
    for replay_buffer in (buffer, replay):
        chunks = replay_buffer.sample(
            num_items=len(cursors) * seq_len, batch_length_T=seq_len, sample_episodes=True
        )
        drawn.append(
            (replay_buffer.last_sampled_source_ids, [(c.t_started, len(c)) for c in chunks])
        )
    print(f"cursors {cursors}; next chunks {drawn[0]}")
    assert drawn[1] == drawn[0]


def test_killed_env_runner_is_replaced_and_training_goes_on(build: Any) -> None:
    config = (
        tiny_config()
        # The session's Ray has 2 CPUs: half a CPU each fits both runners.
        .env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5)
        .fault_tolerance(restart_failed_env_runners=True)
    )
    algo = build(config)
    group = algo.env_runner_group
    steps = [algo.train()[STEPS_LIFETIME]]
    pids = group.foreach_env_runner(lambda _: os.getpid(), local_env_runner=False)
    victim = group._worker_manager.healthy_actor_ids()[0]
    ray.kill(group._worker_manager._actors[victim], no_restart=False)  # A crash, not a stop.

    # The iteration after the kill samples with the survivor; the next ones probe the
    # restarted actor, restore its state and sample with both again.
    for _ in range(8):
        steps.append(algo.train()[STEPS_LIFETIME])
        if len(steps) >= 3 and group.num_healthy_remote_workers() == 2:
            break
    print("env steps per iteration:", steps, "restored:", algo._counters)
    assert group.num_healthy_remote_workers() == 2
    assert algo._counters["total_num_restored_workers"] >= 1
    assert np.all(np.diff(steps) > 0)
    new_pids = group.foreach_env_runner(lambda _: os.getpid(), local_env_runner=False)
    assert len(new_pids) == 2 and set(new_pids) != set(pids)


def test_diverging_run_stops_naming_the_quantity_before_nan_reaches_the_weights(
    build: Any, tmp_path: Path
) -> None:
    # Adam moves each weight by about lr per update; at 1e37 the Q-values and the loss
    # overflow float32 within a few updates (1e6 only makes them huge: the LSTM bounds them).
    algo = build(tiny_config(lr=1e37, grad_clip=None))
    checkpoint = Path(algo.save_to_path(tmp_path / "before"))
    before = snapshot(checkpoint)

    with pytest.raises(FloatingPointError) as error:
        for _ in range(5):
            algo.train()
    message = str(error.value)
    print(message)
    assert (
        "qf_loss (the TD loss) is inf" in message
        or "qf_loss (the TD loss) is nan" in message
        or "qf_preds (the online Q-values) holds" in message
    )
    assert "at learner update" in message and "Lower lr (now 1e+37)" in message
    assert "grad_clip (now None)" in message

    # The guard raised before the optimizer step: the live weights are finite...
    assert all(np.isfinite(value).all() for value in module_weights(algo).values())
    # ...and the checkpoint saved before is intact.
    assert snapshot(checkpoint) == before
    module_state_file = checkpoint / "learner_group/learner/rl_module/default_policy"
    with (module_state_file / "module_state.pkl").open("rb") as stream:
        saved = pickle.load(stream)
    assert all(np.isfinite(np.asarray(value)).all() for value in saved.values())

    # Non-finite gradients (RLlib would zero them and step) are refused too.
    learner = algo.learner_group._learner
    gradients = {
        learner.get_param_ref(param): torch.full_like(param, float("nan"))
        for param in learner.module[DEFAULT_MODULE_ID].parameters()
    }
    with pytest.raises(FloatingPointError, match=r"the gradients of \d+ of \d+ parameter"):
        learner.apply_gradients(gradients)


def test_soak_script_records_rss_while_training(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    started = time.perf_counter()
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "soak.py"),
            "--seconds",
            "30",
            "--sample-every",
            "5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
        env=fresh_process_env(),
    )
    print(f"soak --seconds 30: {time.perf_counter() - started:.1f} s")
    print(completed.stdout[-3000:])
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(out.read_text())
    samples = report["samples"]
    assert len(samples) >= 3
    assert all(sample["rss_mb"] > 0 for sample in samples)
    assert samples[-1]["env_steps"] > samples[0]["env_steps"]
    assert samples[-1]["replay_timesteps"] > 0
    assert {"rss_growth_mb_per_hour_after_fill", "replay_filled_at_s"} <= set(report["summary"])
    assert "RSS MB" in completed.stdout


def test_gradient_check_finds_one_bad_value_and_tolerates_an_overflowing_norm() -> None:
    """The guard's fused norm: one NaN/inf anywhere fails; huge finite values still pass."""
    from rllib_drqn.learner import _all_finite

    grads = [torch.randn(64, 32), torch.randn(2048, 3136), torch.randn(6)]
    assert _all_finite(grads)
    for bad in (float("nan"), float("inf"), -float("inf")):
        damaged = [g.clone() for g in grads]
        damaged[1][1000, 17] = bad
        assert not _all_finite(damaged), bad
    # Finite, but the sum of squares overflows float32: the exact check decides.
    huge = [torch.full((1000,), 3e37), torch.ones(3)]
    assert not torch.isfinite(torch.nn.utils.get_total_norm(huge))
    assert _all_finite(huge)

"""The return window (``env_runners/episode_return_window_mean``) and the per-episode log.

The acceptance checks train for real: on two remote env runners, in RLlib's synchronous loop
and in the asynchronous one, the window metric must be the mean (min, max) of the last N rows
of ``episodes.csv`` at every iteration, with every episode RLlib counted written down once;
RLlib's own ``episode_return_mean`` must fail that check on the same run. A saved and
restored algorithm must carry the window on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from async_cluster_checks import small_async_config
from conftest import tiny_drqn_config
from ray.rllib.algorithms.algorithm import Algorithm

from rllib_drqn import DRQNConfig
from rllib_drqn.baselines import BaselineDQN, memoryless_dqn
from rllib_drqn.reporting import (
    EPISODES_CSV,
    EPISODES_KEY,
    RETURN_WINDOW_MAX,
    RETURN_WINDOW_MEAN,
    RETURN_WINDOW_MIN,
    RETURN_WINDOW_NUM_EPISODES,
    WINDOW_STATE_KEY,
    Episode,
    EpisodeLog,
    ReturnWindow,
    log_episode,
    read_episodes,
    with_episode_logging,
)

#: Larger than the episodes one iteration ends, so the window spans several reports.
WINDOW = 25
ITERATIONS = 4


def two_runner_config(log_dir: Path) -> DRQNConfig:
    """A tiny StatelessCartPole DRQN on two remote env runners (half a CPU each)."""
    return (
        tiny_drqn_config(learning_starts=200, steps_per_iteration=200)
        .env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5)
        .reporting(episode_return_window=WINDOW, episode_log_dir=log_dir)
        .callbacks(
            # A user's own callback (a lambda: pickled by value for the remote runners).
            on_episode_end=lambda metrics_logger, **kwargs: metrics_logger.log_value(
                "user_episodes", 1, reduce="sum"
            ),
        )
        .debugging(seed=0, log_level="ERROR")
    )


def train(config: Any, iterations: int) -> dict[str, Any]:
    """Trains; after each iteration keeps the result and the episode log as it stands."""
    torch.set_num_threads(1)
    algo = config.build_algo()
    results, logs = [], []
    try:
        for _ in range(iterations):
            results.append(algo.train())
            logs.append(read_episodes(algo.episode_log.path))
    finally:
        algo.stop()
    return {"results": results, "logs": logs}


def check_window_against_log(run: dict[str, Any]) -> None:
    """Every iteration: the window is the last N rows; the rows are every episode, once."""
    previous_steps, previous_rows = 0, 0
    for result, rows in zip(run["results"], run["logs"], strict=True):
        runners = result["env_runners"]
        assert EPISODES_KEY not in runners  # Popped: no list goes to Tune's loggers.
        assert len(rows) == runners["num_episodes_lifetime"]  # RLlib's own count.
        last = [row.episode_return for row in rows[-WINDOW:]]
        assert runners[RETURN_WINDOW_NUM_EPISODES] == len(last)
        assert runners[RETURN_WINDOW_MEAN] == pytest.approx(sum(last) / len(last), rel=1e-12)
        assert runners[RETURN_WINDOW_MIN] == min(last)
        assert runners[RETURN_WINDOW_MAX] == max(last)
        # This iteration's rows carry env steps of this iteration, in order.
        steps = runners["num_env_steps_sampled_lifetime"]
        new = rows[previous_rows:]
        assert all(previous_steps < row.env_steps <= steps for row in new)
        assert [row.env_steps for row in rows] == sorted(row.env_steps for row in rows)
        previous_steps, previous_rows = steps, len(rows)


@pytest.fixture(scope="module")
def sync_run(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return train(two_runner_config(tmp_path_factory.mktemp("sync")), ITERATIONS)


def test_window_is_the_mean_of_the_last_n_logged_episodes_on_two_runners(
    sync_run: dict[str, Any],
) -> None:
    check_window_against_log(sync_run)
    rows = sync_run["logs"][-1]
    assert {row.env_runner for row in rows} == {1, 2}
    # Episodes ended in several iterations, and the window spans more than the last one.
    final = sync_run["results"][-1]["env_runners"]
    ended_last = len(rows) - len(sync_run["logs"][-2])
    assert 0 < ended_last < WINDOW <= len(rows)
    assert final["user_episodes"] == ended_last  # The user's callback ran beside ours.


def test_rllibs_episode_return_mean_fails_the_same_check(sync_run: dict[str, Any]) -> None:
    """RLlib's key covers the episodes since the last report, not the last N."""
    rows = sync_run["logs"][-1]
    final = sync_run["results"][-1]["env_runners"]
    last_n = [row.episode_return for row in rows[-WINDOW:]]
    assert not math.isclose(final["episode_return_mean"], sum(last_n) / len(last_n))
    ended_last = len(rows) - len(sync_run["logs"][-2])
    since_report = [row.episode_return for row in rows[-ended_last:]]
    assert final["episode_return_mean"] == pytest.approx(sum(since_report) / len(since_report))


@pytest.mark.usefixtures("ray_session")
def test_window_in_the_async_loop(tmp_path: Path) -> None:
    config = small_async_config(num_env_runners=2).reporting(
        episode_return_window=WINDOW, episode_log_dir=tmp_path
    )
    run = train(config, 3)
    check_window_against_log(run)
    assert {row.env_runner for row in run["logs"][-1]} == {1, 2}


@pytest.mark.usefixtures("ray_session")
def test_window_survives_save_and_restore(tmp_path: Path) -> None:
    """Restored from a checkpoint, the run continues the same window and the same log."""
    torch.set_num_threads(1)
    log_dir, checkpoint = tmp_path / "log", tmp_path / "checkpoint"
    config = tiny_drqn_config().reporting(episode_return_window=WINDOW, episode_log_dir=log_dir)
    log = log_dir / EPISODES_CSV
    algo = config.build_algo()
    try:
        for _ in range(2):
            algo.train()
        saved_window = list(algo.return_window.episodes)
        saved_count = algo.return_window.num_episodes_lifetime
        saved_rows = read_episodes(log)
        assert WINDOW_STATE_KEY in algo.get_state()
        algo.save_to_path(checkpoint)
        algo.train()  # A stretch the restored run replaces, as after a crash.
        assert len(read_episodes(log)) > len(saved_rows)
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(checkpoint)
    try:
        assert list(restored.return_window.episodes) == saved_window
        assert restored.return_window.num_episodes_lifetime == saved_count == len(saved_rows)
        result = restored.train()["env_runners"]
    finally:
        restored.stop()
    rows = read_episodes(log)
    assert rows[: len(saved_rows)] == saved_rows  # The replaced stretch's rows are gone ...
    assert len(rows) == result["num_episodes_lifetime"]  # ... and each episode is there once.
    last = [row.episode_return for row in rows[-WINDOW:]]
    assert result[RETURN_WINDOW_MEAN] == pytest.approx(sum(last) / len(last), rel=1e-12)


@pytest.mark.usefixtures("ray_session")
def test_memoryless_baseline_reports_the_window_too(tmp_path: Path) -> None:
    config = (
        memoryless_dqn("StatelessCartPole")
        .reporting(min_sample_timesteps_per_iteration=100, episode_log_dir=tmp_path)
        .debugging(seed=0, log_level="ERROR")
    )
    assert config.algo_class is BaselineDQN
    run = train(config, 1)
    result, rows = run["results"][0]["env_runners"], run["logs"][0]
    assert len(rows) == result["num_episodes_lifetime"] > 0
    last = [row.episode_return for row in rows[-100:]]
    assert result[RETURN_WINDOW_MEAN] == pytest.approx(sum(last) / len(last))
    assert any(tmp_path.glob("events.out.tfevents.*.episodes"))


# ---- The pieces, without Ray ---------------------------------------------------------------


def test_return_window_keeps_the_last_n_and_is_nan_when_empty() -> None:
    window = ReturnWindow(2)
    empty = window.metrics()
    assert math.isnan(empty[RETURN_WINDOW_MEAN]) and math.isnan(empty[RETURN_WINDOW_MAX])
    assert empty[RETURN_WINDOW_NUM_EPISODES] == 0
    window.extend([Episode(10, 1.0, 10, 0), Episode(30, 3.0, 20, 1), Episode(40, 6.0, 10, 2)])
    assert window.metrics() == {
        RETURN_WINDOW_MEAN: 4.5,
        RETURN_WINDOW_MIN: 3.0,
        RETURN_WINDOW_MAX: 6.0,
        RETURN_WINDOW_NUM_EPISODES: 2,
    }
    smaller = ReturnWindow(1)
    smaller.set_state(window.get_state())
    assert list(smaller.episodes) == [Episode(40, 6.0, 10, 2)]
    assert smaller.num_episodes_lifetime == 3


def user_callback(**kwargs: Any) -> None:
    """A user's on_episode_end."""


def test_users_on_episode_end_is_combined_with_the_plugins() -> None:
    config = DRQNConfig()
    assert config.callbacks_on_episode_end == [log_episode]
    config.callbacks(on_episode_end=user_callback)
    assert config.callbacks_on_episode_end == [log_episode, user_callback]
    config.callbacks(on_episode_end=[user_callback, log_episode])
    assert config.callbacks_on_episode_end == [log_episode, user_callback]
    # Assigned directly, or through update_from_dict (Tune's path): validate() puts it back.
    config.environment("StatelessCartPole")
    config.callbacks_on_episode_end = user_callback
    config.validate()
    assert config.callbacks_on_episode_end == [log_episode, user_callback]
    config.update_from_dict({"callbacks_on_episode_end": None})
    config.validate()
    assert config.callbacks_on_episode_end == [log_episode]
    assert with_episode_logging(None) == [log_episode]


class _Chunk:
    def __init__(self, rewards: list[float]) -> None:
        self.rewards = rewards

    def get_return(self) -> float:
        return sum(self.rewards)

    def __len__(self) -> int:
        return len(self.rewards)


class _Logger:
    def __init__(self) -> None:
        self.logged: list[tuple[Any, ...]] = []

    def log_value(self, key: str, value: Any, **kwargs: Any) -> None:
        self.logged.append((key, value, kwargs))


class _Runner:
    def __init__(self, worker_index: int, in_evaluation: bool = False) -> None:
        self.worker_index = worker_index
        self.config = type("Config", (), {"in_evaluation": in_evaluation})()


def test_log_episode_adds_up_the_chunks_and_skips_evaluation() -> None:
    logger = _Logger()
    log_episode(
        episode=_Chunk([1.0, 0.5]),
        env_runner=_Runner(2),
        metrics_logger=logger,
        prev_episode_chunks=[_Chunk([2.0] * 3)],
    )
    assert logger.logged == [
        (EPISODES_KEY, {"return": 7.5, "length": 5, "env_runner": 2}, {"reduce": "item_series"})
    ]
    log_episode(episode=_Chunk([1.0]), env_runner=_Runner(1, True), metrics_logger=logger)
    assert len(logger.logged) == 1


def test_episode_log_appends_and_drops_rows_past_a_restored_checkpoint(tmp_path: Path) -> None:
    log = EpisodeLog(tmp_path)
    log.write([Episode(10, 1.0, 10, 0), Episode(20, 2.0, 10, 0)])
    log.write([Episode(30, 3.0, 10, 1)])
    assert read_episodes(tmp_path / EPISODES_CSV) == [
        Episode(10, 1.0, 10, 0),
        Episode(20, 2.0, 10, 0),
        Episode(30, 3.0, 10, 1),
    ]
    log.close()
    resumed = EpisodeLog(tmp_path)
    resumed.resume_at(20)
    resumed.write([Episode(25, 4.0, 5, 0)])
    resumed.close()
    assert [row.env_steps for row in read_episodes(tmp_path / EPISODES_CSV)] == [10, 20, 25]
    assert any(tmp_path.glob("events.out.tfevents.*.episodes"))


def test_read_episodes_rejects_a_file_of_another_kind(tmp_path: Path) -> None:
    path = tmp_path / EPISODES_CSV
    path.write_text("step,reward\n1,2\n")
    with pytest.raises(ValueError, match=r"header \['step', 'reward'\] is not an episode log"):
        read_episodes(path)
    path.write_text("env_steps,return,length,env_runner\n1,2.0,x,0\n")
    with pytest.raises(ValueError, match=r"episodes.csv:2: .* is not a row of"):
        read_episodes(path)

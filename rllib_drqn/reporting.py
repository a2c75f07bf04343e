"""Episode reporting: the mean return of the last N episodes, and every episode written down.

RLlib 2.60's ``env_runners/episode_return_mean`` is the mean of the episodes that ended since
the previous report: ``MeanStats.reduce`` (``ray/rllib/utils/metrics/stats/mean.py``) empties
its values at every reduce, and the window each env runner keeps
(``SingleAgentEnvRunner._log_episode_metrics``: ``metrics_num_episodes_for_smoothing /
num_env_runners``) only caps how many of them count. Near a stop threshold an iteration ends one
or two episodes, so a stop on that key is a stop on one or two episodes. This module adds,
beside it (RLlib's key stays as it is):

- ``env_runners/episode_return_window_mean``, ``_min`` and ``_max``: the return over the last
  ``episode_return_window`` (N, default 100 as Stable-Baselines3's ``ep_rew_mean``) completed
  training episodes, across reports and every env runner, in the synchronous loop and the
  asynchronous one (``rllib_drqn.async_training``); ``episode_return_window_num_episodes``:
  how many episodes it holds (fewer than N early on). NaN before the first episode, so a Tune
  stop criterion on it always finds the key. The window is in the algorithm's state, so it
  survives ``save_to_path``/``restore_from_path`` and Tune's resume.
- ``episodes.csv`` in the trial directory (columns :data:`EPISODE_COLUMNS`): one row per
  completed training episode, in the order the window received them, so the window mean is
  the mean of the last N rows; the same values as TensorBoard scalars ``episodes/return`` and
  ``episodes/length`` (tensorboardX, step = env steps) in the same directory.

How it is put together:

1. On each training env runner, :func:`log_episode` (an ``on_episode_end`` callback function)
   logs the finished episode as one item ``{return, length, env_runner}`` with
   ``reduce="item_series"``: ``ItemSeriesStats.merge``
   (``ray/rllib/utils/metrics/stats/item_series.py``) concatenates the items of all runners
   when the driver aggregates their metrics under ``env_runners`` (DQN's ``training_step`` and
   ``AsyncDRQNLoop._collect_samples`` both do), and its ``reduce`` hands the list over at the
   end of the iteration and clears it. Evaluation runners log nothing.
2. :class:`EpisodeReporting` (mixed into the algorithm) notes, after every ``training_step``,
   the driver's global env-step count at which new items arrived; ``step()`` pops the list out
   of the results, appends it to a ``collections.deque(maxlen=N)``, writes the rows and the
   window's metrics.

``env_steps`` of an episode is that driver count: the env steps sampled by all runners up to
the training step in which the driver received the episode. It runs late by less than what
one training step samples (``rollout_fragment_length * num_envs_per_env_runner`` per runner
and sample round in the sync loop; what one fetch collects in the async loop), never early,
and never decreases from row to row. A runner-side count is not available: in Ray 2.60
``env_runner.num_env_steps_sampled_lifetime`` is not advanced by sampling (``EnvRunner.__init__``
sets it to 0 and only ``SingleAgentEnvRunner.set_state`` changes it, when the driver's
``Algorithm.step`` re-syncs it to the global count once per iteration through
``EnvRunnerGroup.sync_env_runner_states``), so inside a runner it is the count at the end of
the previous iteration.

Mix :class:`EpisodeReportingConfig` into the config class and :class:`EpisodeReporting` into
the algorithm class (``rllib_drqn.config.DRQN``, ``rllib_drqn.baselines.BaselineDQN``). This
module imports no other plugin module.
"""

from __future__ import annotations

import collections
import csv
import math
import os
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.utils import force_list
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME
from ray.rllib.utils.typing import ResultDict, StateDict

__all__ = [
    "DEFAULT_EPISODE_RETURN_WINDOW",
    "EPISODES_CSV",
    "EPISODES_KEY",
    "EPISODE_COLUMNS",
    "RETURN_WINDOW_MAX",
    "RETURN_WINDOW_MEAN",
    "RETURN_WINDOW_MIN",
    "RETURN_WINDOW_NUM_EPISODES",
    "WINDOW_STATE_KEY",
    "Episode",
    "EpisodeLog",
    "EpisodeReporting",
    "EpisodeReportingConfig",
    "ReturnWindow",
    "local_trial_dir",
    "log_episode",
    "read_episodes",
    "with_episode_logging",
]

#: Episodes in the reported window by default: Stable-Baselines3's ``ep_rew_mean`` (and the
#: old RLlib API stack's ``episode_reward_mean``) average the last 100.
DEFAULT_EPISODE_RETURN_WINDOW: Final[int] = 100

#: The per-episode items under ``env_runners`` while an iteration runs; ``step()`` pops them.
EPISODES_KEY: Final[str] = "drqn_episodes"
#: Keys under ``env_runners`` in each result.
RETURN_WINDOW_MEAN: Final[str] = "episode_return_window_mean"
RETURN_WINDOW_MIN: Final[str] = "episode_return_window_min"
RETURN_WINDOW_MAX: Final[str] = "episode_return_window_max"
RETURN_WINDOW_NUM_EPISODES: Final[str] = "episode_return_window_num_episodes"

#: The per-episode file in the trial directory, and its columns.
EPISODES_CSV: Final[str] = "episodes.csv"
EPISODE_COLUMNS: Final[tuple[str, ...]] = ("env_steps", "return", "length", "env_runner")
#: Key of the window in ``Algorithm.get_state()``.
WINDOW_STATE_KEY: Final[str] = "episode_return_window"
#: Suffix of the TensorBoard event file, apart from the one Tune's logger writes there.
_TENSORBOARD_SUFFIX: Final[str] = ".episodes"


class Episode(NamedTuple):
    """One completed training episode, as the window and ``episodes.csv`` hold it.

    Attributes:
        env_steps: The driver's global env-step count when it received the episode (see the
            module docstring: late by less than one training step's sampling).
        episode_return: The sum of the episode's rewards, over all its sampled chunks.
        length: Its env steps.
        env_runner: The runner that sampled it: ``worker_index``, 0 for the driver's own.
    """

    env_steps: int
    episode_return: float
    length: int
    env_runner: int


# ---- On the env runners ------------------------------------------------------------------------


def log_episode(
    *,
    episode: Any,
    env_runner: Any,
    metrics_logger: Any,
    prev_episode_chunks: Sequence[Any] | None = None,
    **kwargs: Any,
) -> None:
    """``on_episode_end`` callback: logs the finished episode as one item for the driver.

    The return and length add up the chunks that earlier ``sample()`` calls already returned
    (``prev_episode_chunks``), in the order RLlib's own ``SingleAgentEnvRunner.get_metrics``
    adds them for ``episode_return_mean``. Evaluation runners log nothing: the window follows
    training episodes, as ``env_runners/episode_return_mean`` does.
    """
    if env_runner.config.in_evaluation:
        return
    episode_return, length = episode.get_return(), len(episode)
    for chunk in prev_episode_chunks or ():
        episode_return += chunk.get_return()
        length += len(chunk)
    metrics_logger.log_value(
        EPISODES_KEY,
        {
            "return": float(episode_return),
            "length": int(length),
            "env_runner": int(env_runner.worker_index or 0),
        },
        reduce="item_series",
    )


def with_episode_logging(callbacks: Callable | Iterable[Callable] | None) -> list[Callable]:
    """``callbacks`` (a function, a list of them or None) with :func:`log_episode` first, once."""
    functions = [fn for fn in force_list(callbacks) if fn is not log_episode]
    return [log_episode, *functions]


# ---- On the driver -----------------------------------------------------------------------------


class ReturnWindow:
    """The last ``size`` completed episodes; their mean, min and max return.

    Example::

        window = ReturnWindow(2)
        window.extend([Episode(10, 1.0, 10, 0), Episode(30, 3.0, 20, 1), Episode(40, 5.0, 10, 1)])
        assert window.metrics()["episode_return_window_mean"] == 4.0
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.episodes: collections.deque[Episode] = collections.deque(maxlen=size)
        #: Completed episodes received since the run started (resumes included).
        self.num_episodes_lifetime = 0

    def extend(self, episodes: Sequence[Episode]) -> None:
        self.episodes.extend(episodes)
        self.num_episodes_lifetime += len(episodes)

    def metrics(self) -> dict[str, float | int]:
        """The keys written under ``env_runners``; NaN return statistics while it is empty."""
        returns = [episode.episode_return for episode in self.episodes]
        return {
            RETURN_WINDOW_MEAN: math.fsum(returns) / len(returns) if returns else math.nan,
            RETURN_WINDOW_MIN: min(returns, default=math.nan),
            RETURN_WINDOW_MAX: max(returns, default=math.nan),
            RETURN_WINDOW_NUM_EPISODES: len(returns),
        }

    def get_state(self) -> dict[str, Any]:
        """Plain lists and numbers (pickle and msgpack both take them)."""
        return {
            "episodes": [list(episode) for episode in self.episodes],
            "num_episodes_lifetime": self.num_episodes_lifetime,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores the episodes; a window saved with another size keeps the newest ``size``."""
        episodes = [Episode(int(s), float(r), int(n), int(i)) for s, r, n, i in state["episodes"]]
        self.episodes = collections.deque(episodes, maxlen=self.size)
        self.num_episodes_lifetime = int(state["num_episodes_lifetime"])


class EpisodeLog:
    """``episodes.csv`` and the TensorBoard scalars of one run, appended once per iteration.

    The file is opened, appended to and closed at each write, so a killed run leaves every
    row of its finished iterations. After a restore, :meth:`resume_at` drops the rows a
    lost stretch of the run wrote after the checkpoint (the resumed run writes them again);
    TensorBoard hides those steps through ``purge_step``.

    Args:
        directory: Where both go; ``None`` writes nothing.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._writer: Any = None
        self._resume_env_steps: int | None = None

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / EPISODES_CSV

    def resume_at(self, env_steps: int) -> None:
        """The run continues from a checkpoint taken at ``env_steps``; applied at the next write."""
        self._resume_env_steps = int(env_steps)

    def write(self, episodes: Sequence[Episode]) -> None:
        if self.path is None or not episodes:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._resume_env_steps is not None and self.path.is_file():
            kept = [e for e in read_episodes(self.path) if e.env_steps <= self._resume_env_steps]
            self._write_rows(kept, mode="w")
        self._write_rows(episodes, mode="a")
        writer = self._tensorboard()
        for episode in episodes:
            writer.add_scalar("episodes/return", episode.episode_return, episode.env_steps)
            writer.add_scalar("episodes/length", episode.length, episode.env_steps)
        writer.flush()
        self._resume_env_steps = None

    def _write_rows(self, episodes: Sequence[Episode], mode: str) -> None:
        assert self.path is not None
        new = mode == "w" or not self.path.is_file() or self.path.stat().st_size == 0
        with self.path.open(mode, newline="", encoding="utf-8") as file:
            rows = csv.writer(file)
            if new:
                rows.writerow(EPISODE_COLUMNS)
            rows.writerows(episodes)

    def _tensorboard(self) -> Any:
        if self._writer is None:
            from tensorboardX import SummaryWriter

            purge = None if self._resume_env_steps is None else self._resume_env_steps + 1
            self._writer = SummaryWriter(
                logdir=str(self.directory), filename_suffix=_TENSORBOARD_SUFFIX, purge_step=purge
            )
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def local_trial_dir(storage: Any) -> Path | None:
    """The trial directory of Tune's ``StorageContext`` if it is on the local filesystem.

    Under Tune, a class trainable's ``logdir`` and a function trainable's
    ``tune.get_context().get_trial_dir()`` are staging directories in the Ray session's temp
    dir (``Trainable._setup_logdir`` in ``ray/tune/trainable/trainable.py``,
    ``FunctionTrainable.setup`` in ``function_trainable.py``), which Tune copies to the trial
    directory only with ``SyncConfig(sync_artifacts=True)``. On a local filesystem the
    storage's ``trial_fs_path`` is the trial directory itself, next to ``params.json``.
    """
    if storage is None or storage.storage_filesystem.type_name != "local":
        return None
    return Path(storage.trial_fs_path)


def read_episodes(path: str | os.PathLike[str]) -> list[Episode]:
    """The rows of an ``episodes.csv``, in order.

    Raises:
        ValueError: If the file's header is not :data:`EPISODE_COLUMNS` or a row is malformed.
    """
    with Path(path).open(newline="", encoding="utf-8") as file:
        rows = csv.reader(file)
        header = next(rows, None)
        if header is None:
            return []
        if tuple(header) != EPISODE_COLUMNS:
            raise ValueError(
                f"{path}: header {header} is not an episode log's {list(EPISODE_COLUMNS)}."
            )
        episodes = []
        for line, row in enumerate(rows, start=2):
            try:
                steps, ret, length, runner = row
                episodes.append(Episode(int(steps), float(ret), int(length), int(runner)))
            except ValueError:
                raise ValueError(
                    f"{path}:{line}: {row} is not a row of {list(EPISODE_COLUMNS)}."
                ) from None
        return episodes


# ---- The config and algorithm mixins -----------------------------------------------------------


class EpisodeReportingConfig(AlgorithmConfig):
    """Config mixin: the window size, where the episode log goes, and the callback installed.

    Mix in before RLlib's config class (``class DRQNConfig(EpisodeReportingConfig,
    DQNConfig)``). :func:`log_episode` is installed as an ``on_episode_end`` callback function
    and stays installed: ``callbacks(on_episode_end=...)`` adds a user's functions after it,
    and ``validate()`` puts it back if ``callbacks_on_episode_end`` was assigned directly.
    """

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class)
        #: Episodes in ``env_runners/episode_return_window_*``.
        self.episode_return_window = DEFAULT_EPISODE_RETURN_WINDOW
        #: Where ``episodes.csv`` goes; None: the trial directory under Tune (local storage),
        #: else the algorithm's ``logdir``.
        self.episode_log_dir: str | None = None
        self.callbacks_on_episode_end = with_episode_logging(self.callbacks_on_episode_end)

    @override(AlgorithmConfig)
    def reporting(
        self,
        *,
        episode_return_window: int | None = NotProvided,
        episode_log_dir: str | os.PathLike[str] | None = NotProvided,
        **kwargs: Any,
    ) -> EpisodeReportingConfig:
        """RLlib's ``reporting()`` settings plus the episode window's.

        Args:
            episode_return_window: N of ``env_runners/episode_return_window_mean`` (and
                ``_min``, ``_max``): the mean return of the last N completed training
                episodes, over all env runners and across reports. RLlib's own
                ``episode_return_mean`` (the episodes since the previous report, at most
                ``metrics_num_episodes_for_smoothing``) is reported beside it.
            episode_log_dir: The directory of ``episodes.csv`` and its TensorBoard scalars;
                None (the default): the trial directory under Tune with local storage, else
                the algorithm's ``logdir``.
            **kwargs: Any ``AlgorithmConfig.reporting()`` argument.
        """
        super().reporting(**kwargs)
        if episode_return_window is not NotProvided:
            self.episode_return_window = episode_return_window
        if episode_log_dir is not NotProvided:
            # A str keeps the config JSON-friendly (Tune writes it to params.json).
            self.episode_log_dir = (
                os.fspath(episode_log_dir)
                if isinstance(episode_log_dir, os.PathLike)
                else episode_log_dir
            )
        return self

    @override(AlgorithmConfig)
    def callbacks(
        self,
        callbacks_class: Any = NotProvided,
        *,
        on_episode_end: Callable | list[Callable] | None = NotProvided,
        **kwargs: Any,
    ) -> EpisodeReportingConfig:
        """RLlib's ``callbacks()``; a user's ``on_episode_end`` runs after the plugin's own."""
        super().callbacks(callbacks_class, **kwargs)
        if on_episode_end is not NotProvided:
            self.callbacks_on_episode_end = with_episode_logging(on_episode_end)
        return self

    @override(AlgorithmConfig)
    def validate(self) -> None:
        super().validate()
        window = self.episode_return_window
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                f"episode_return_window must be an int >= 1 (the completed episodes averaged in "
                f"env_runners/episode_return_window_mean), got {window!r}. Set e.g. "
                "config.reporting(episode_return_window=100), Stable-Baselines3's window."
            )
        log_dir = self.episode_log_dir
        if log_dir is not None and not isinstance(log_dir, str | os.PathLike):
            raise TypeError(
                f"episode_log_dir must be a directory path or None, got {log_dir!r} "
                f"({type(log_dir).__name__}); None writes episodes.csv into the trial directory."
            )
        installed = with_episode_logging(self.callbacks_on_episode_end)
        if force_list(self.callbacks_on_episode_end) != installed:
            self.callbacks_on_episode_end = installed


class EpisodeReporting(Algorithm):
    """Algorithm mixin: the return window in each result and state, and the episode log.

    Mix in before RLlib's algorithm class (``class BaselineDQN(EpisodeReporting, DQN)``); its
    config class mixes in :class:`EpisodeReportingConfig`. An algorithm that overrides
    ``training_step`` without calling ``super().training_step()`` calls
    :meth:`note_episode_arrivals` after its own step.
    """

    @override(Algorithm)
    def setup(self, config: AlgorithmConfig) -> None:
        size = getattr(config, "episode_return_window", DEFAULT_EPISODE_RETURN_WINDOW)
        #: The last N completed training episodes.
        self.return_window = ReturnWindow(size)
        #: The global env-step count at which each item of this iteration arrived, in order.
        self._arrival_env_steps: list[int] = []
        self.episode_log = EpisodeLog(self._episode_log_dir(config))
        super().setup(config)

    def _episode_log_dir(self, config: AlgorithmConfig) -> Path:
        log_dir = getattr(config, "episode_log_dir", None)
        if log_dir is not None:
            return Path(log_dir).expanduser()
        # Trainable.__init__ keeps Tune's StorageContext as `_storage` (None without Tune).
        return local_trial_dir(getattr(self, "_storage", None)) or Path(self.logdir)

    def _env_steps_sampled(self) -> int:
        key = (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)
        return int(self.metrics.peek(key, default=0))

    def note_episode_arrivals(self) -> None:
        """Stamps the episodes that arrived in this training step with the global env steps."""
        received = self.metrics.peek((ENV_RUNNER_RESULTS, EPISODES_KEY), compile=False, default=[])
        new = len(received) - len(self._arrival_env_steps)
        if new > 0:
            self._arrival_env_steps.extend([self._env_steps_sampled()] * new)

    @override(Algorithm)
    def training_step(self) -> None:
        super().training_step()
        self.note_episode_arrivals()

    @override(Algorithm)
    def step(self) -> ResultDict:
        """RLlib's iteration, then the new episodes into the window, the log and the result."""
        results = super().step()
        runner_results = results.setdefault(ENV_RUNNER_RESULTS, {})
        items = _as_items(runner_results.pop(EPISODES_KEY, None))
        stamps = self._arrival_env_steps[: len(items)]
        # Items that arrived outside a training step (none in RLlib 2.60's loops) get the
        # count at the iteration's end.
        stamps += [self._env_steps_sampled()] * (len(items) - len(stamps))
        self._arrival_env_steps = []
        episodes = [
            Episode(steps, float(item["return"]), int(item["length"]), int(item["env_runner"]))
            for steps, item in zip(stamps, items, strict=True)
        ]
        self.return_window.extend(episodes)
        self.episode_log.write(episodes)
        runner_results.update(self.return_window.metrics())
        return results

    @override(Algorithm)
    def get_state(
        self,
        components: str | Collection[str] | None = None,
        *,
        not_components: str | Collection[str] | None = None,
        **kwargs: Any,
    ) -> StateDict:
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self._check_component(WINDOW_STATE_KEY, components, not_components):
            state[WINDOW_STATE_KEY] = {
                **self.return_window.get_state(),
                "env_steps": self._env_steps_sampled(),
            }
        return state

    @override(Algorithm)
    def set_state(self, state: StateDict) -> None:
        super().set_state(state)
        if WINDOW_STATE_KEY in state:
            self.return_window.set_state(state[WINDOW_STATE_KEY])
            self._arrival_env_steps = []
            self.episode_log.resume_at(state[WINDOW_STATE_KEY]["env_steps"])

    @override(Algorithm)
    def cleanup(self) -> None:
        if hasattr(self, "episode_log"):
            self.episode_log.close()
        super().cleanup()


def _as_items(reduced: Any) -> list[dict[str, Any]]:
    """The reduced item series as a list of items.

    ``MetricsLogger.compile`` returns a one-item list as the item itself, and an empty series
    as ``[]`` (``ray/rllib/utils/metrics/metrics_logger.py``, ``compile``).
    """
    if reduced is None:
        return []
    if isinstance(reduced, dict):
        return [reduced]
    if isinstance(reduced, list):
        return reduced
    return []  # NaN: ItemSeriesStats.peek's "nothing logged".

"""Evaluate a trained checkpoint across observability: mean return against flicker probability.

Hausknecht & Stone (2015), https://arxiv.org/abs/1507.06527 (Section 6, Figure 5), train on
one flicker probability and then evaluate the same network while the probability of blanking
a frame sweeps from 0 (fully observed) to 1 (nothing observed). This module is that sweep::

    rllib evaluate results/stateless-cartpole-drqn/DRQN_.../checkpoint_000000 \\
        --flicker-probs 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0 --episodes 10

or, from Python::

    from rllib_drqn.evaluate import evaluate

    report = evaluate("path/to/checkpoint", flicker_probs=[0.0, 0.5, 1.0], num_episodes=10)
    print(report.json_path, [result.mean for result in report.results])

Only the RLModule is loaded (:mod:`rllib_drqn.inspection` reads the checkpoint, re-exported
here): no ``Algorithm``, no env runners, no Ray. Episodes are played
in this process by :func:`play_episodes`, epsilon-greedily (0.05 as in the paper's
evaluation) with the LSTM state carried from step to step and reset at every episode start.
An episode is cut after ``max_episode_steps`` (default 27,000, ALE's own cap), so that envs
without a time limit end too.

Episode ``i`` at every flicker probability resets its env with ``seed + i`` and draws its
exploration coins from a generator seeded with ``seed``: the points of the curve share their
initial states (common random numbers), so they differ by the flicker and not by luck of the
draw, and one seed reproduces the whole table.

Outputs, in ``out_dir`` (default ``./evaluation/<checkpoint name>``; never the checkpoint):
``evaluation.csv`` and ``evaluation.json`` (per probability: mean, std, episodes, returns)
and ``observability.png`` (mean return +- std against the flicker probability).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import gymnasium as gym
import numpy as np
import torch
import tree
from gymnasium.wrappers import TimeLimit
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.env.env_context import EnvContext
from ray.tune.registry import ENV_CREATOR, _global_registry

from rllib_drqn.envs import FLICKERING_ATARI, FLICKERING_GYM, STATELESS_CARTPOLE, FlickerObservation
from rllib_drqn.inspection import (
    MODULE_SUBDIR,
    CheckpointSpec,
    EvaluationError,
    default_out_dir,
    inspect_checkpoint,
    load_module,
)
from rllib_drqn.messages import one_line
from rllib_drqn.module import (
    NO_PREV_ACTION,
    NO_PREV_REWARD,
    PREV_ACTIONS,
    PREV_REWARDS,
    uses_prev_inputs,
)

__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_MAX_EPISODE_STEPS",
    "MODULE_SUBDIR",
    "CheckpointSpec",
    "EvaluationError",
    "EvaluationReport",
    "FlickerResult",
    "GifRecorder",
    "check_epsilon",
    "check_flicker_prob",
    "check_max_episode_steps",
    "check_num_episodes",
    "default_out_dir",
    "evaluate",
    "inspect_checkpoint",
    "load_module",
    "make_env",
    "parse_flicker_probs",
    "play_episodes",
    "plot_observability",
    "write_results",
]

#: The paper evaluates with epsilon = 0.05 (as DQN does), not greedily.
DEFAULT_EPSILON: Final[float] = 0.05

#: Evaluation cuts an episode after this many agent steps: ALE v5's own cap (108,000 frames at
#: frameskip 4), so Atari episodes end as in training. Envs without a time limit, such as
#: RLlib's StatelessCartPole (a CartPoleEnv with no TimeLimit), would otherwise play a good
#: policy for ever.
DEFAULT_MAX_EPISODE_STEPS: Final[int] = 27_000

CSV_NAME: Final[str] = "evaluation.csv"
JSON_NAME: Final[str] = "evaluation.json"
PLOT_NAME: Final[str] = "observability.png"

#: A GIF of one episode holds at most this many frames (an Atari episode can last 27,000
#: steps; 2,000 palette frames of 210x160 take ~70 MB while recording).
MAX_VIDEO_FRAMES: Final[int] = 2_000


# ---------------------------------------------------------------------------------------------
# Checking the inputs.
# ---------------------------------------------------------------------------------------------


def parse_flicker_probs(text: str) -> tuple[float, ...]:
    """Parses ``"0,0.1,...,1.0"`` into probabilities, each a number in ``[0, 1]``.

    Raises:
        EvaluationError: On an empty list, a token that is not a number, or one outside
            ``[0, 1]``; the message names the token.
    """
    tokens = [token.strip() for token in str(text).split(",")]
    if not any(tokens):
        raise EvaluationError(
            f"--flicker-probs {text!r} holds no probability; pass comma-separated numbers in "
            "[0, 1], e.g. --flicker-probs 0,0.25,0.5,0.75,1"
        )
    return tuple(check_flicker_prob(token) for token in tokens)


def check_flicker_prob(value: Any) -> float:
    """Returns ``value`` (a number or its text) as a float in ``[0, 1]``."""
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        raise EvaluationError(
            f"--flicker-probs: {value!r} is not a number; pass comma-separated numbers in "
            "[0, 1], e.g. --flicker-probs 0,0.5,1"
        ) from None
    # `0 <= x <= 1` is False for NaN, so NaN fails here too.
    if (
        isinstance(number, bool)
        or not isinstance(number, int | float | np.number)
        or not 0.0 <= float(number) <= 1.0
    ):
        raise EvaluationError(
            f"--flicker-probs: {value!r} is not a probability in [0, 1] (the probability of "
            "blanking a frame); pass numbers such as 0,0.5,1"
        )
    return float(number)


def check_num_episodes(value: Any) -> int:
    """Returns ``value`` as an int >= 1 (``"10"`` is accepted, ``1.5`` and ``True`` are not)."""
    return _positive_int(value, "--episodes", 10)


def check_max_episode_steps(value: Any) -> int:
    """Returns ``value`` as an int >= 1 (``"500"`` is accepted, ``1.5`` and ``True`` are not)."""
    return _positive_int(value, "--max-episode-steps", DEFAULT_MAX_EPISODE_STEPS)


def _positive_int(value: Any, flag: str, example: int) -> int:
    try:
        number = int(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or not isinstance(number, int | np.integer) or number < 1:
        raise EvaluationError(
            f"{flag} must be an integer >= 1, got {value!r}; pass e.g. {flag} {example}"
        )
    return int(number)


def check_epsilon(value: Any) -> float:
    """Returns ``value`` as a float in ``[0, 1]`` (``"0.05"`` is accepted)."""
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if (
        isinstance(number, bool)
        or not isinstance(number, int | float | np.floating)
        or not 0.0 <= float(number) <= 1.0
    ):
        raise EvaluationError(
            f"--epsilon must be a probability in [0, 1], got {value!r}; pass e.g. --epsilon "
            f"{DEFAULT_EPSILON} (the paper's evaluation) or 0 to act greedily"
        )
    return float(number)


# ---------------------------------------------------------------------------------------------
# Envs and acting.
# ---------------------------------------------------------------------------------------------


def make_env(
    env: Any,
    env_config: Mapping[str, Any],
    flicker_prob: float,
    *,
    render_mode: str | None = None,
) -> gym.Env:
    """Builds the checkpoint's env with frames blanked at ``flicker_prob``.

    The env is created as RLlib's ``SingleAgentEnvRunner.make_env`` creates it (a name
    registered with Tune, an env class or a gymnasium id), then:

    - ``FlickeringAtari``: ``env_config["flicker_prob"] = flicker_prob``;
    - ``StatelessCartPole`` and ``FlickeringGym``: their ``flicker_prob`` key, likewise (in
      ``FlickeringGym`` before its frame stack);
    - any other env: wrapped in :class:`~rllib_drqn.envs.FlickerObservation` (not at all for
      ``flicker_prob == 0``, so that 0 is exactly the env the checkpoint trained on). Only a
      ``Box`` observation can be blanked: zeros are "nothing seen" for pixels or a vector,
      but a valid value of a ``Discrete``/``MultiDiscrete``/``MultiBinary`` space (and of a
      ``Dict``/``Tuple`` holding one), so those envs evaluate at ``flicker_prob == 0`` only.

    Args:
        env: A Tune-registered name, a gymnasium id or an env class (``config.env``).
        env_config: The checkpoint's ``env_config``; the other keys are kept as trained.
        flicker_prob: The probability in ``[0, 1]`` of blanking each frame.
        render_mode: ``"rgb_array"`` to record a video.

    Raises:
        EvaluationError: For ``flicker_prob > 0`` on an env of the last kind whose observation
            space is not a ``Box``.
    """
    config = dict(env_config)
    builtin_flicker = env in (FLICKERING_ATARI, FLICKERING_GYM, STATELESS_CARTPOLE)
    if builtin_flicker:
        config["flicker_prob"] = flicker_prob
    context = EnvContext(config, worker_index=0, num_workers=0)
    # The lookup SingleAgentEnvRunner.make_env does (Tune's registry has no public getter).
    if isinstance(env, str) and _global_registry.contains(ENV_CREATOR, env):
        made = _global_registry.get(ENV_CREATOR, env)(context)
    elif callable(env):
        made = env(context)
    else:
        made = gym.make(env, **config, **({"render_mode": render_mode} if render_mode else {}))
    if render_mode is not None and made.render_mode != render_mode:
        # The plugin's factories take no render_mode (their env_config rejects unknown keys),
        # and ALE's and CartPole's render() read the attribute at call time, so setting it on
        # the base env after construction is enough.
        made.unwrapped.render_mode = render_mode
    if not builtin_flicker and flicker_prob > 0.0:
        if not isinstance(made.observation_space, gym.spaces.Box):
            made.close()
            raise EvaluationError(
                f"flicker_prob={flicker_prob:g}: the env observes {made.observation_space}, and "
                "only Box observations can flicker (a blanked Discrete, MultiDiscrete or "
                "MultiBinary value, or a Dict/Tuple of them, would be a real observation, "
                "not a missing one); pass --flicker-probs 0, or wrap the env so that it "
                "flickers by itself and train on that."
            )
        made = FlickerObservation(made, flicker_prob=flicker_prob)
    return made


def play_episodes(
    module: RLModule,
    env: gym.Env,
    num_episodes: int,
    epsilon: float,
    seed: int,
    record: Callable[[np.ndarray], None] | None = None,
) -> list[float]:
    """Plays ``num_episodes`` episodes epsilon-greedily with ``module``; returns their returns.

    The one place that plays episodes with a module, CleanRL style: the module sees one
    observation at a time as a ``[1, 1, ...]`` batch (``[1, ...]`` for a memory-less module
    such as RLlib's DQN; ``Dict``/``Tuple`` observations leaf by leaf, each in the dtype of the
    module's space), its ``STATE_OUT`` is fed back as the next step's ``STATE_IN``, and
    the state restarts from ``module.get_initial_state()`` at every episode start. The module
    runs at every step, also when the action is random, so its memory sees every frame.

    A module trained with ``lstm_use_prev_action``/``lstm_use_prev_reward`` also gets the
    ``PREV_ACTIONS`` (int64) and ``PREV_REWARDS`` (float32) ``[1, 1]`` columns that DRQN's
    env-to-module connector gives it while training acts: the action taken (random or not)
    and the reward received at the step before, and ``-1`` and ``0`` at an episode's first
    step (:data:`~rllib_drqn.module.NO_PREV_ACTION`, :data:`~rllib_drqn.module.NO_PREV_REWARD`).

    Args:
        module: A trained RLModule with ``forward_inference`` returning greedy ``ACTIONS``.
        env: A gymnasium env with a ``Discrete`` action space.
        num_episodes: Episodes to play, >= 1.
        epsilon: Probability in ``[0, 1]`` of a uniformly random action at each step.
        seed: Episode ``i`` resets the env with ``seed + i``; the exploration coins come from
            ``numpy.random.default_rng(seed)``. The same seed gives the same returns.
        record: Called with ``env.render()`` after the reset and after every step (the env
            must render ``"rgb_array"``).

    Returns:
        The undiscounted return of each episode, in order.
    """
    num_episodes = check_num_episodes(num_episodes)
    epsilon = check_epsilon(epsilon)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise EvaluationError(
            f"play_episodes needs a Discrete action space, got {env.action_space}."
        )
    rng = np.random.default_rng(seed)
    num_actions = int(env.action_space.n)
    stateful = module.is_stateful()
    feeds_prev = stateful and _reads_prev_inputs(module)
    returns = []
    for episode in range(num_episodes):
        obs, _ = env.reset(seed=seed + episode)
        state = (
            tree.map_structure(lambda s: torch.as_tensor(s)[None], module.get_initial_state())
            if stateful
            else None
        )
        prev_action, prev_reward = NO_PREV_ACTION, NO_PREV_REWARD
        if record is not None:
            record(env.render())
        episode_return, done = 0.0, False
        while not done:
            frame = _obs_tensors(obs, module.observation_space)
            batch: dict[str, Any] = {
                Columns.OBS: tree.map_structure(
                    lambda leaf: leaf[None, None] if stateful else leaf[None], frame
                )
            }
            if stateful:
                batch[Columns.STATE_IN] = state
            if feeds_prev:
                batch[PREV_ACTIONS] = torch.tensor([[prev_action]], dtype=torch.int64)
                batch[PREV_REWARDS] = torch.tensor([[prev_reward]], dtype=torch.float32)
            with torch.no_grad():
                out = module.forward_inference(batch)
            if stateful:
                state = out[Columns.STATE_OUT]
            greedy = int(out[Columns.ACTIONS].reshape(-1)[0])
            action = int(rng.integers(num_actions)) if rng.random() < epsilon else greedy
            obs, reward, terminated, truncated, _ = env.step(action)
            prev_action, prev_reward = action, float(reward)
            episode_return += float(reward)
            done = terminated or truncated
            if record is not None:
                record(env.render())
        returns.append(episode_return)
    return returns


def _reads_prev_inputs(module: RLModule) -> bool:
    """Whether DRQN's env-to-module connector would add the previous action and reward."""
    config = module.model_config
    return isinstance(config, Mapping) and uses_prev_inputs(dict(config))


def _obs_tensors(obs: Any, space: gym.Space | None) -> Any:
    """The env's observation as tensors in the dtypes of the module's space, leaf by leaf.

    The env runner's vector env hands the module numpy arrays in the space's dtypes (int64 for
    a ``Discrete``); a ``Dict``/``Tuple`` observation keeps its structure.
    """
    if isinstance(space, gym.spaces.Dict):
        return {key: _obs_tensors(obs[key], sub) for key, sub in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(_obs_tensors(leaf, sub) for leaf, sub in zip(obs, space.spaces, strict=True))
    return torch.as_tensor(np.asarray(obs, dtype=getattr(space, "dtype", None)))


class GifRecorder:
    """Collects ``rgb_array`` frames for :func:`play_episodes` and writes them as a GIF.

    Gymnasium's ``RecordVideo`` writes MP4 through moviepy, which neither this package nor
    RLlib depends on (and which is absent on the team's machines); Pillow is a dependency
    already, so episodes become GIFs, which also play inline in browsers and READMEs. Frames
    are reduced to a 256-colour palette as they arrive, a third of their RGB size.
    """

    def __init__(self, max_frames: int = MAX_VIDEO_FRAMES) -> None:
        self.max_frames = max_frames
        self.frames: list[Any] = []
        self.dropped = 0

    def __call__(self, frame: np.ndarray | None) -> None:
        from PIL import Image

        if frame is None:
            raise EvaluationError(
                "the env rendered no frame; build it with render_mode='rgb_array' "
                "(make_env(..., render_mode='rgb_array'))."
            )
        if len(self.frames) >= self.max_frames:
            self.dropped += 1
            return
        image = Image.fromarray(np.asarray(frame, dtype=np.uint8))
        self.frames.append(image.convert("P", palette=Image.Palette.ADAPTIVE))

    def save(self, path: str | os.PathLike[str], fps: float = 30.0) -> Path:
        if not self.frames:
            raise EvaluationError("no frames were recorded; play an episode with record=it.")
        path = Path(path)
        first, *rest = self.frames
        first.save(path, save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
        return path


# ---------------------------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlickerResult:
    """The returns of the episodes played at one flicker probability."""

    flicker_prob: float
    returns: tuple[float, ...]

    @property
    def fraction_shown(self) -> float:
        """The expected fraction of frames the agent sees, ``1 - flicker_prob``."""
        return 1.0 - self.flicker_prob

    @property
    def episodes(self) -> int:
        return len(self.returns)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        """Population standard deviation (``ddof=0``), so one episode gives 0, not NaN."""
        return float(np.std(self.returns))

    def as_dict(self) -> dict[str, Any]:
        return {
            "flicker_prob": self.flicker_prob,
            "fraction_shown": self.fraction_shown,
            "episodes": self.episodes,
            "mean": self.mean,
            "std": self.std,
            "min": float(np.min(self.returns)),
            "max": float(np.max(self.returns)),
            "returns": list(self.returns),
        }


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    """What :func:`evaluate` played and wrote."""

    spec: CheckpointSpec
    results: tuple[FlickerResult, ...]
    csv_path: Path
    json_path: Path
    plot_path: Path
    video_path: Path | None = None


def write_results(
    spec: CheckpointSpec,
    results: Sequence[FlickerResult],
    out_dir: Path,
    *,
    epsilon: float,
    seed: int,
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
) -> tuple[Path, Path, Path]:
    """Writes ``evaluation.csv``, ``evaluation.json`` and ``observability.png`` to ``out_dir``.

    Returns:
        The three paths, in that order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, plot_path = (out_dir / name for name in (CSV_NAME, JSON_NAME, PLOT_NAME))
    columns = ["flicker_prob", "fraction_shown", "episodes", "mean", "std", "min", "max"]
    with csv_path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.as_dict() for result in results)
    document = {
        "checkpoint": str(spec.path),
        "algorithm": spec.algorithm,
        "module_class": f"{spec.module_class.__module__}.{spec.module_class.__qualname__}",
        "env": spec.env_name,
        "env_config": spec.env_config,
        "trained_flicker_prob": spec.trained_flicker_prob,
        "epsilon": epsilon,
        "seed": seed,
        "max_episode_steps": max_episode_steps,
        "std": "population (ddof=0)",
        "results": [result.as_dict() for result in results],
    }
    json_path.write_text(json.dumps(document, indent=2, default=repr) + "\n", encoding="utf-8")
    figure = plot_observability(
        results,
        # Tune's trial names run to 60+ characters without a space: wrap rather than clip.
        title=f"{textwrap.fill(spec.name, 64)}\n{spec.algorithm} on {spec.env_name}, "
        f"epsilon={epsilon:g}",
        trained_flicker_prob=spec.trained_flicker_prob,
    )
    figure.savefig(plot_path, dpi=120)
    return csv_path, json_path, plot_path


def plot_observability(
    results: Sequence[FlickerResult],
    *,
    title: str,
    trained_flicker_prob: float | None = None,
) -> Any:
    """Mean return +- std against the flicker probability, one point per probability.

    Drawn on matplotlib's Agg canvas through the object-oriented API, so no GUI backend is
    needed and pyplot's global state is left alone. The bottom axis is the flicker
    probability ``p``; the top axis the fraction of frames shown, ``1 - p``.

    Returns:
        The ``matplotlib.figure.Figure``; ``figure.axes[0].containers[0]`` is the errorbar
        container whose ``lines[0]`` holds the points.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ordered = sorted(results, key=lambda result: result.flicker_prob)
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.errorbar(
        [result.flicker_prob for result in ordered],
        [result.mean for result in ordered],
        yerr=[result.std for result in ordered],
        marker="o",
        capsize=4,
        label=f"mean return \u00b1 std ({ordered[0].episodes} episodes per point)",
    )
    if trained_flicker_prob is not None:
        axes.axvline(
            trained_flicker_prob,
            color="grey",
            linestyle="--",
            label=f"trained at flicker probability {trained_flicker_prob:g}",
        )
    axes.set_xlim(-0.05, 1.05)
    axes.set_xlabel("flicker probability p (fraction of frames blanked)")
    axes.set_ylabel("episode return")
    top = axes.secondary_xaxis("top", functions=(_one_minus, _one_minus))
    top.set_xlabel("observability: fraction of frames shown, 1 \u2212 p")
    axes.set_title(title, fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def _one_minus(values: Any) -> Any:
    return 1 - np.asarray(values)


# ---------------------------------------------------------------------------------------------
# The whole evaluation.
# ---------------------------------------------------------------------------------------------


def evaluate(
    checkpoint: str | os.PathLike[str] | CheckpointSpec,
    flicker_probs: Iterable[float],
    num_episodes: int,
    *,
    epsilon: float = DEFAULT_EPSILON,
    seed: int = 0,
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
    out_dir: str | os.PathLike[str] | None = None,
    video_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[FlickerResult], None] | None = None,
) -> EvaluationReport:
    """Plays ``num_episodes`` at each flicker probability and writes the table and the plot.

    Every check runs before the first episode: the numbers, the output directories (never
    inside the checkpoint), the checkpoint, the module's weights, one env per probability
    (whose observations must fit the module) and, with ``video_dir``, a rendered frame.

    Args:
        checkpoint: An Algorithm checkpoint directory, or what :func:`inspect_checkpoint`
            read from one.
        flicker_probs: Probabilities in ``[0, 1]`` of blanking each frame.
        num_episodes: Episodes per probability, >= 1.
        epsilon: Probability of a random action per step (default 0.05, the paper's).
        seed: Seeds the envs and the exploration (see :func:`play_episodes`).
        max_episode_steps: An episode is cut (truncated) after this many steps, by
            gymnasium's ``TimeLimit``; its return so far counts.
        out_dir: Where the CSV, JSON and PNG go (default :func:`default_out_dir`).
        video_dir: If given, one episode at the first probability is saved there as a GIF
            (its first :data:`MAX_VIDEO_FRAMES` frames): the first evaluation episode played
            again (same seed, same actions).
        progress: Called with each probability's result as soon as it is played.

    Raises:
        EvaluationError: For any bad input, before an episode is played.
    """
    probs = tuple(check_flicker_prob(prob) for prob in flicker_probs)
    if not probs:
        raise EvaluationError("no flicker probability given; pass e.g. [0.0, 0.5, 1.0].")
    num_episodes = check_num_episodes(num_episodes)
    epsilon = check_epsilon(epsilon)
    max_episode_steps = check_max_episode_steps(max_episode_steps)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise EvaluationError(f"--seed must be an integer >= 0, got {seed!r}.")

    spec = checkpoint if isinstance(checkpoint, CheckpointSpec) else inspect_checkpoint(checkpoint)
    out = Path(out_dir) if out_dir is not None else default_out_dir(spec)
    _check_writable_dir(out, spec, "--out")
    video = Path(video_dir) if video_dir is not None else None
    if video is not None:
        _check_writable_dir(video, spec, "--video")
    module = load_module(spec)
    envs = [TimeLimit(_make_checked_env(spec, module, prob), max_episode_steps) for prob in probs]
    video_env = None
    if video is not None:
        video_env = TimeLimit(
            _make_checked_env(spec, module, probs[0], render_mode="rgb_array"), max_episode_steps
        )

    previous_threads = torch.get_num_threads()
    # Batch-1 inference gains nothing from intra-op threads, and on a shared machine they
    # oversubscribe the cores (runs 30x slower were seen on the team's 2-core machines).
    torch.set_num_threads(1)
    try:
        results = []
        for prob, env in zip(probs, envs, strict=True):
            returns = play_episodes(module, env, num_episodes, epsilon, seed)
            results.append(FlickerResult(prob, tuple(returns)))
            env.close()
            if progress is not None:
                progress(results[-1])
        video_path = None
        if video is not None and video_env is not None:
            recorder = GifRecorder()
            play_episodes(module, video_env, 1, epsilon, seed, record=recorder)
            video.mkdir(parents=True, exist_ok=True)
            video_path = recorder.save(
                video / f"{spec.name}_flicker{probs[0]:g}_seed{seed}.gif",
                fps=float(video_env.metadata.get("render_fps") or 30),
            )
            video_env.close()
    finally:
        torch.set_num_threads(previous_threads)

    csv_path, json_path, plot_path = write_results(
        spec, results, out, epsilon=epsilon, seed=seed, max_episode_steps=max_episode_steps
    )
    return EvaluationReport(spec, tuple(results), csv_path, json_path, plot_path, video_path)


def _check_writable_dir(path: Path, spec: CheckpointSpec, flag: str) -> None:
    resolved = path.expanduser().resolve()
    if resolved == spec.path or resolved.is_relative_to(spec.path):
        raise EvaluationError(
            f"{flag} {path} lies inside the checkpoint {spec.path}; evaluation never writes "
            f"into a checkpoint. Pass a directory outside it, e.g. {flag} "
            f"{default_out_dir(spec)}"
        )
    if resolved.exists() and not resolved.is_dir():
        raise EvaluationError(f"{flag} {path} is a file; pass a directory.")


def _make_checked_env(
    spec: CheckpointSpec, module: RLModule, flicker_prob: float, render_mode: str | None = None
) -> gym.Env:
    """Builds the env at ``flicker_prob`` and checks it against the module (and rendering)."""
    try:
        env = make_env(spec.env, spec.env_config, flicker_prob, render_mode=render_mode)
    except EvaluationError:
        raise
    except Exception as error:
        raise EvaluationError(
            f"cannot build the checkpoint's env {spec.env_name!r} with env_config "
            f"{spec.env_config} at flicker_prob={flicker_prob:g} ({type(error).__name__}: "
            f"{one_line(error)}); install what it needs, or evaluate a checkpoint whose env "
            "this machine can build."
        ) from None
    want, got = module.observation_space, env.observation_space
    mismatch = _space_mismatch(want, got)
    if mismatch is not None:
        env.close()
        raise EvaluationError(
            f"the env {spec.env_name!r} built from the checkpoint's config observes {got}, but "
            f"the module was trained on {want} ({mismatch}); the checkpoint is inconsistent. "
            "Evaluate it on the env it trained on."
        )
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise EvaluationError(
            f"the env {spec.env_name!r} has action space {env.action_space}; evaluation "
            "plays Q-networks, which need a Discrete one."
        )
    if render_mode is not None:
        try:
            env.reset(seed=0)
            frame = env.render()
        except Exception as error:  # DependencyNotInstalled (pygame for CartPole), ...
            raise EvaluationError(
                f"--video: the env {spec.env_name!r} cannot render frames "
                f"({type(error).__name__}: {one_line(error)}); install what it names, or "
                "leave out --video."
            ) from None
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise EvaluationError(
                f"--video: the env {spec.env_name!r} renders no rgb_array frames (got "
                f"{type(frame).__name__}); leave out --video."
            )
    return env


def _space_mismatch(want: gym.Space | None, got: gym.Space, path: str = "") -> str | None:
    """Where the env's space ``got`` does not fit the module's ``want``; ``None`` if it fits.

    ``Box`` spaces fit by shape (:func:`_obs_tensors` casts to the module's dtype, and bounds
    do not reach the network); ``Dict``/``Tuple`` spaces by their keys (or length) and then
    entry by entry; every other space only if equal (a ``Discrete(4)`` one-hot has 4 inputs).
    """
    where = f" at {path}" if path else ""
    if type(want) is not type(got):
        return f"{type(got).__name__} instead of {type(want).__name__}{where}"
    if isinstance(want, gym.spaces.Box):
        return None if want.shape == got.shape else f"shape {got.shape} != {want.shape}{where}"
    if isinstance(want, gym.spaces.Dict):
        if set(want.spaces) != set(got.spaces):
            return f"keys {sorted(got.spaces)} != {sorted(want.spaces)}{where}"
        pairs = [(f"{path}/{key}".lstrip("/"), want[key], got[key]) for key in want.spaces]
    elif isinstance(want, gym.spaces.Tuple):
        if len(want.spaces) != len(got.spaces):
            return f"{len(got.spaces)} entries != {len(want.spaces)}{where}"
        pairs = [
            (f"{path}/{i}".lstrip("/"), w, g)
            for i, (w, g) in enumerate(zip(want, got, strict=True))
        ]
    else:
        return None if want == got else f"{got} != {want}{where}"
    for sub_path, sub_want, sub_got in pairs:
        mismatch = _space_mismatch(sub_want, sub_got, sub_path)
        if mismatch is not None:
            return mismatch
    return None

"""The paper's three claims, reproduced: train, evaluate, report (``rllib reproduce``).

Hausknecht & Stone (2015), https://arxiv.org/abs/1507.06527, claim:

- **C1**: on a flickering task (p = 0.5), DRQN seeing one observation per step does as well as
  DQN seeing the last 10 (Table 1, Flickering Pong);
- **C2**: DRQN trained at p = 0.5 and evaluated at p from 0 to 1 scores higher the more it
  observes (Figure 5);
- **C3**: trained fully observed (p = 0) and evaluated flickered (p = 0.1 ... 0.9), DRQN keeps a
  larger percentage of its original score than DQN on the last 4 observations (Figure 6).

Three steps that pass files, so a report can be redrawn without training again
(``rllib reproduce --redraw DIR``):

1. **train** (:func:`run_training`): every contender x seed is one Tune trial, as many in
   parallel as the cluster's CPUs allow. A trial trains RLlib's DQN (with DRQN's module, or
   RLlib's own on the last k observations), evaluates it every ``eval_interval`` env steps for
   ``eval_episodes`` episodes at epsilon 0.05 as the paper did, and Tune keeps the best
   evaluated checkpoint (``CheckpointConfig(checkpoint_score_attribute=...)``).
2. **evaluate** (:func:`run_sweeps`): each trial's best checkpoint is swept over the flicker
   probabilities by :func:`rllib_drqn.evaluate.evaluate` (the code behind ``rllib
   evaluate``), one Ray task per checkpoint; each writes its ``evaluation.json``.
3. **report** (:func:`write_report`): reads only those files and writes ``report.md``,
   ``claims.json`` and the plots ``c1.png``, ``c2.png``, ``c3.png``.

The paper's fairness rule holds in every trial: the same env steps, one update of 32 samples
every ``update_interval`` env steps, and every sample covers 10 observations (DRQN: a sequence
of 10 steps, unrolled from a zero state, the paper's bootstrapped random updates; DQN: one
transition whose observation is the last 10 frames; 4 in C3, as in the paper).

The verdicts follow mechanically from the numbers by rules fixed here, before any run
(:data:`RULES`); a claim that does not hold is reported as such.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import gymnasium as gym
import numpy as np

from rllib_drqn.envs import FLICKERING_ATARI, FLICKERING_GYM
from rllib_drqn.messages import one_line

__all__ = [
    "CLAIMS",
    "RULES",
    "Contender",
    "Protocol",
    "ReproduceError",
    "TrialRecord",
    "build_contender_config",
    "contenders_for",
    "decide_claims",
    "load_records",
    "run_reproduction",
    "run_sweeps",
    "run_training",
    "train_with_evaluations",
    "write_report",
]

CLAIMS: Final[tuple[str, ...]] = ("C1", "C2", "C3")

CLAIM_TEXT: Final[Mapping[str, str]] = {
    "C1": "on flickering observations (p = 0.5), DRQN on 1 observation per step does as well "
    "as DQN on the last 10",
    "C2": "trained at p = 0.5, DRQN's score rises with observability (1 - p)",
    "C3": "trained fully observed (p = 0), DRQN keeps a larger percentage of its original "
    "score than DQN on the last 4 observations at every p in 0.1 ... 0.9",
}

#: Significance level of every test.
ALPHA: Final[float] = 0.05
#: C1's non-inferiority margin: "as well as" means not worse by more than 10% of DQN's mean.
C1_MARGIN: Final[float] = 0.10
#: The flicker probabilities at which C3 compares percentages of the original score.
C3_PROBS: Final[tuple[float, ...]] = tuple(round(0.1 * i, 1) for i in range(1, 10))

#: The decision rules, stated before any run and copied into every claims.json.
RULES: Final[Mapping[str, str]] = {
    "C1": "Each seed's score is the mean return of its best checkpoint over the sweep's "
    "episodes at p = 0.5. C1 holds if a one-sided Welch t-test rejects, at 5%, that DRQN's "
    "mean score is lower than DQN-10's by 10% of DQN-10's mean or more (non-inferiority: "
    "H0 mu_DRQN <= 0.9 mu_DQN). Fewer than 2 seeds per contender: it does not hold (no test).",
    "C2": "DRQN (trained at p = 0.5) is scored at every p of the sweep, averaged over seeds. "
    "C2 holds if Spearman's rank correlation between observability 1 - p and that mean score "
    "is positive with a one-sided p-value below 5%.",
    "C3": "Each seed's percentage of original score at p is 100 x its mean return at p / its "
    "mean return at p = 0 (both from the sweep). C3 holds if DRQN's mean percentage over seeds "
    "exceeds DQN-4's at every p in 0.1 ... 0.9 and a one-sided Welch t-test of the per-seed "
    "percentages averaged over those p finds DRQN's higher at 5%. An original score <= 0 "
    "leaves the percentage undefined: it does not hold.",
}

SMALL_SCALE_ENV: Final[str] = "CartPole-v1"
#: The paper's observability grid (Figure 5): p = 0, 0.1, ..., 1.
SWEEP_PROBS: Final[tuple[float, ...]] = tuple(round(0.1 * i, 1) for i in range(11))
#: Seed of the sweep's episodes, apart from the training seeds (PFRL keeps them apart too).
SWEEP_SEED: Final[int] = 10_000

SCORE_ATTRIBUTE: Final[str] = "eval_return_mean"

TRIALS_FILE: Final[str] = "trials.json"
PROTOCOL_FILE: Final[str] = "protocol.json"
CLAIMS_FILE: Final[str] = "claims.json"
REPORT_FILE: Final[str] = "report.md"
PLOT_FILES: Final[Mapping[str, str]] = {"C1": "c1.png", "C2": "c2.png", "C3": "c3.png"}


class ReproduceError(ValueError):
    """A bad input to ``rllib reproduce``; raised before anything trains."""


# ---------------------------------------------------------------------------------------------
# The protocol and its contenders.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What one reproduction runs; saved as ``protocol.json`` next to the report.

    Attributes:
        claims: Any of :data:`CLAIMS`.
        env_id: A gymnasium id (Discrete actions, Box observations), or ``FlickeringAtari``.
        game: The ALE game with ``FlickeringAtari`` (the paper's scale), else None.
        seeds: Training seeds; every contender trains once per seed.
        env_steps: Env steps per trial.
        eval_interval: Env steps between two of a trial's periodic evaluations.
        eval_episodes: Episodes per periodic evaluation (the paper: 10).
        sweep_episodes: Episodes per flicker probability in the sweep.
        epsilon: Exploration while evaluating (the paper: 0.05).
        flicker_prob: The training flicker probability of C1 and C2 (the paper: 0.5).
        sweep_probs: The flicker probabilities of the sweep; must hold 0 and C3's.
        update_interval: Env steps per update of 32 samples.
        smoke: A few iterations of the paper-scale settings, to check the set-up.
        num_gpus_per_learner: GPUs of each trial's learner (the paper's scale wants 1).
    """

    claims: tuple[str, ...] = CLAIMS
    env_id: str = SMALL_SCALE_ENV
    game: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    env_steps: int = 30_000
    eval_interval: int = 5_000
    eval_episodes: int = 10
    sweep_episodes: int = 10
    epsilon: float = 0.05
    flicker_prob: float = 0.5
    sweep_probs: tuple[float, ...] = SWEEP_PROBS
    update_interval: int = 4
    smoke: bool = False
    num_gpus_per_learner: float = 0.0

    @property
    def paper_scale(self) -> bool:
        return self.env_id == FLICKERING_ATARI

    @property
    def task(self) -> str:
        return f"Flickering {self.game}" if self.paper_scale else f"flickering {self.env_id}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Protocol:
        fields = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in fields}
        for key in ("claims", "seeds", "sweep_probs"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Contender:
    """One agent of the protocol: DRQN on 1 observation, or DQN on the last ``frames``."""

    algorithm: str  # "DRQN" or "DQN"
    frames: int
    flicker_prob: float  # The flicker probability it trains at.

    @property
    def name(self) -> str:
        return "DRQN" if self.algorithm == "DRQN" else f"DQN-{self.frames}"

    @property
    def key(self) -> str:
        """Unique among a protocol's contenders, e.g. ``DRQN@p0.5``."""
        return f"{self.name}@p{self.flicker_prob:g}"


def contenders_for(protocol: Protocol) -> tuple[Contender, ...]:
    """The contenders the claims need, each trained once per seed.

    C1 and C2 share DRQN and DQN-10 at the training flicker probability (C2's plot shows
    DQN-10 beside DRQN); C3 trains DRQN and DQN-4 fully observed.
    """
    wanted: list[Contender] = []
    if {"C1", "C2"} & set(protocol.claims):
        wanted += [
            Contender("DRQN", 1, protocol.flicker_prob),
            Contender("DQN", 10, protocol.flicker_prob),
        ]
    if "C3" in protocol.claims:
        wanted += [Contender("DRQN", 1, 0.0), Contender("DQN", 4, 0.0)]
    return tuple(dict.fromkeys(wanted))


def _env_settings(protocol: Protocol, contender: Contender) -> tuple[str, dict[str, Any]]:
    if protocol.paper_scale:
        from rllib_drqn.presets import _atari_env

        return FLICKERING_ATARI, _atari_env(
            str(protocol.game), contender.flicker_prob, contender.frames
        )
    return FLICKERING_GYM, {
        "env_id": protocol.env_id,
        "flicker_prob": contender.flicker_prob,
        "frame_stack": contender.frames,
    }


def build_contender_config(protocol: Protocol, contender: Contender, seed: int) -> Any:
    """The ``AlgorithmConfig`` a trial trains: the paper's presets on Atari, else a small one.

    Small scale (any vector task): both contenders share every setting they have in common:
    Adam lr 1e-3, 3-step double-Q targets, a target copy every 500 env steps, learning from
    1,000 steps, epsilon 1 -> 0.02 over the first sixth of the budget, a uniform replay of 50k
    steps, and one update of 32 samples per ``update_interval`` env steps. DRQN: a 64-unit
    layer, LSTM(128), 32 sequences of 10 steps (the paper's random updates); DQN: the same
    64-unit layer, a dense 128 where DRQN has its LSTM (the paper's DQN is DRQN with
    ``unroll=1``), 32 transitions of the last k observations.
    """
    from rllib_drqn import presets
    from rllib_drqn.baselines import FrameStackDQNConfig
    from rllib_drqn.config import DRQNConfig

    if protocol.paper_scale:
        game = str(protocol.game)
        if contender.algorithm == "DRQN":
            config = presets.drqn_paper(game, contender.flicker_prob)
        else:
            config = presets.dqn_frame_stack(contender.frames, game, contender.flicker_prob)
        if protocol.smoke:
            # A few updates in minutes on a CPU: learning from 200 steps, a small replay, and
            # the presets' 4 envs sampled in the trial's own process (one update per 4 steps).
            config = config.training(
                num_steps_sampled_before_learning_starts=200,
                replay_buffer_config={**config.replay_buffer_config, "capacity": 5_000},
            ).env_runners(num_env_runners=0)
        if protocol.num_gpus_per_learner:
            config = config.learners(num_gpus_per_learner=protocol.num_gpus_per_learner)
        return config.debugging(seed=seed).reporting(
            min_sample_timesteps_per_iteration=min(protocol.eval_interval, 1_000)
        )

    env, env_config = _env_settings(protocol, contender)
    shared: dict[str, Any] = {
        "lr": 1e-3,
        "gamma": 0.99,
        "n_step": 3,
        "double_q": True,
        "dueling": False,
        "grad_clip": 10.0,
        "target_network_update_freq": 500,
        "num_steps_sampled_before_learning_starts": min(1_000, protocol.env_steps // 4),
        "epsilon": [(0, 1.0), (max(1, protocol.env_steps // 6), 0.02)],
    }
    if contender.algorithm == "DRQN":
        config = (
            DRQNConfig()
            .training(update_mode="random", num_sequences_per_batch=32, **shared)
            .rl_module(
                model_config={"fcnet_hiddens": [64], "lstm_cell_size": 128, "max_seq_len": 10}
            )
        )
        config.replay_buffer_config = {**config.replay_buffer_config, "capacity": 50_000}
    else:
        config = (
            FrameStackDQNConfig()
            .training(
                train_batch_size_per_learner=32,
                replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": 50_000},
                **shared,
            )
            .rl_module(model_config={"fcnet_hiddens": [64], "head_fcnet_hiddens": [128]})
        )
    return (
        config.environment(env, env_config=env_config)
        # RLlib's DQN samples one fragment, then trains once (dqn.py, calculate_rr_weights with
        # training_intensity None): one update per fragment for both contenders.
        .env_runners(
            num_env_runners=0,
            num_envs_per_env_runner=1,
            rollout_fragment_length=protocol.update_interval,
        )
        .reporting(
            min_sample_timesteps_per_iteration=min(protocol.eval_interval, 1_000),
            metrics_num_episodes_for_smoothing=10,
            # train_return_mean: the mean return of the last 10 training episodes.
            episode_return_window=10,
        )
        .debugging(seed=seed)
    )


# ---------------------------------------------------------------------------------------------
# Checking the inputs (all before Ray starts).
# ---------------------------------------------------------------------------------------------


def check_protocol(protocol: Protocol) -> Protocol:
    """Returns ``protocol`` if every value is usable; raises :class:`ReproduceError` if not."""
    unknown = [claim for claim in protocol.claims if claim not in CLAIMS]
    if unknown or not protocol.claims:
        raise ReproduceError(
            f"unknown claim(s) {unknown or list(protocol.claims)}; pass --claims with any of "
            f"{', '.join(CLAIMS)} (comma-separated), or all."
        )
    if not protocol.seeds:
        raise ReproduceError("no seeds: pass --seeds 5 (or more) for a test over seeds.")
    if len(set(protocol.seeds)) != len(protocol.seeds) or min(protocol.seeds) < 0:
        raise ReproduceError(f"seeds must be distinct integers >= 0, got {list(protocol.seeds)}.")
    for name in ("env_steps", "eval_interval", "eval_episodes", "sweep_episodes"):
        value = getattr(protocol, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            flag = "--" + name.replace("_", "-")
            raise ReproduceError(f"{flag} must be an integer >= 1, got {value!r}.")
    if protocol.eval_interval > protocol.env_steps:
        raise ReproduceError(
            f"--eval-interval {protocol.eval_interval} exceeds --env-steps "
            f"{protocol.env_steps}: no periodic evaluation would run. Lower it, e.g. to "
            f"{max(1, protocol.env_steps // 5)}."
        )
    for name, probs in (
        ("--flicker-prob", (protocol.flicker_prob,)),
        ("--flicker-probs", protocol.sweep_probs),
        ("--epsilon", (protocol.epsilon,)),
    ):
        for prob in probs:
            if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0 <= prob <= 1:
                raise ReproduceError(f"{name} must lie in [0, 1], got {prob!r}.")
    needed = {0.0} | ({protocol.flicker_prob} if "C1" in protocol.claims else set())
    if "C3" in protocol.claims:
        needed |= set(C3_PROBS)
    missing = sorted(needed - set(protocol.sweep_probs))
    if missing:
        raise ReproduceError(
            f"--flicker-probs lacks {missing}, which the claims need; use the default grid "
            "0,0.1,...,1."
        )
    if protocol.paper_scale:
        if not protocol.game:
            raise ReproduceError("--env FlickeringAtari needs --game, e.g. --game Pong.")
        from rllib_drqn.envs import validate_flickering_atari_config

        try:
            validate_flickering_atari_config({"game": protocol.game})
        except ValueError as error:
            raise ReproduceError(str(error)) from None
    else:
        if protocol.game is not None:
            raise ReproduceError(
                f"--game {protocol.game} needs --env FlickeringAtari (got --env "
                f"{protocol.env_id}); leave out --game for a gymnasium task."
            )
        _check_gym_env(protocol.env_id)
    return protocol


def _check_gym_env(env_id: str) -> None:
    if env_id not in gym.registry:
        import difflib

        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ReproduceError(
            f"unknown env {env_id!r}.{hint} Pass --env with a gymnasium id that has a Discrete "
            "action space and a Box observation (e.g. CartPole-v1, Acrobot-v1), or "
            "--env FlickeringAtari --game Pong."
        )
    env = gym.make(env_id)
    try:
        action_space, obs_space = env.action_space, env.observation_space
    finally:
        env.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ReproduceError(
            f"--env {env_id} has the action space {action_space}; DQN and DRQN need a Discrete "
            "one. Pick a discrete-action task (e.g. CartPole-v1, Acrobot-v1, MountainCar-v0)."
        )
    if not isinstance(obs_space, gym.spaces.Box):
        raise ReproduceError(
            f"--env {env_id} observes {obs_space}; the flicker protocol blanks a Box "
            "observation. Pick a task with a Box observation."
        )
    if np.any(obs_space.low > 0) or np.any(obs_space.high < 0):
        raise ReproduceError(
            f"--env {env_id}'s observation space {obs_space} excludes zero, the blank frame; "
            "pick a task whose observations can be 0."
        )


def check_out_dir(out: Path) -> Path:
    """A new report directory: an existing one (another run's results) is never overwritten."""
    if out.exists():
        raise ReproduceError(
            f"the report directory {out} exists; pass a new --out, or remove it first (redraw "
            f"its report with: rllib reproduce --redraw {out})."
        )
    return out


# ---------------------------------------------------------------------------------------------
# Step 1: training (Tune trials).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """What a trial left: its contender, seed, whether it finished, its best checkpoint.

    ``evaluations`` holds every periodic evaluation as ``[env_steps, mean return]``, in order;
    its last entry is the trial's final evaluation.
    """

    contender: Contender
    seed: int
    finished: bool
    env_steps: int
    updates: int | None
    best_eval_return: float | None
    checkpoint: str | None
    error: str | None = None
    evaluation: str | None = None  # Its sweep's evaluation.json, once swept.
    evaluations: tuple[tuple[int, float], ...] = ()

    @property
    def final_eval_return(self) -> float | None:
        return self.evaluations[-1][1] if self.evaluations else None

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "contender_key": self.contender.key}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        values = {k: v for k, v in data.items() if k != "contender_key"}
        values["evaluations"] = tuple(
            (int(steps), float(score)) for steps, score in values.get("evaluations", ())
        )
        return cls(**{**values, "contender": Contender(**data["contender"])})


def _trial_spec(protocol: Protocol, contender: Contender, seed: int) -> dict[str, Any]:
    return {
        "protocol": protocol.as_dict(),
        "contender": dataclasses.asdict(contender),
        "seed": seed,
        "name": f"{contender.key}_seed{seed}",
    }


def _updates_in(calls: Any, before: int, after: int, config: Any) -> int:
    """Learner updates in one iteration of ``calls`` DQN training steps, from ``before`` env steps.

    RLlib 2.60's DQN logs no update counter, but its ``training_step`` (dqn.py,
    ``_training_step_new_api_stack``, training_intensity None) samples once, then updates once
    if the env steps sampled so far reach ``num_steps_sampled_before_learning_starts``; the
    samples of one iteration's calls are equal.
    """
    if not calls:
        return 0
    per_call = (after - before) / calls
    start = config.num_steps_sampled_before_learning_starts
    return sum(before + per_call * (call + 1) >= start for call in range(int(calls)))


def train_with_evaluations(
    algo: Any, env: Any, protocol: Protocol, seed: int
) -> Iterator[tuple[dict[str, Any], int, float | None]]:
    """Trains ``algo`` for ``protocol.env_steps`` env steps, evaluating it periodically.

    Yields, after every training iteration, its result, the env steps sampled so far and the
    mean return of the periodic evaluation that fell due then (None when none did). One falls
    due every ``eval_interval`` env steps and at the end: ``eval_episodes`` episodes of
    :func:`rllib_drqn.evaluate.play_episodes` on ``env`` at ``epsilon``, the i-th seeded
    ``SWEEP_SEED + 1000 (seed + 1) + i``, so every caller (the Tune trials here, the reference
    bench, tests) plays the same evaluation episodes. Stopping the iteration early is fine;
    stopping ``algo`` is the caller's.
    """
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

    from rllib_drqn.evaluate import play_episodes

    steps, evaluations = 0, 0
    while steps < protocol.env_steps:
        result = algo.train()
        steps = int(result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME])
        due = steps >= protocol.env_steps or steps >= (evaluations + 1) * protocol.eval_interval
        if not due:
            yield result, steps, None
            continue
        evaluations = steps // protocol.eval_interval
        returns = play_episodes(
            algo.get_module(),
            env,
            protocol.eval_episodes,
            protocol.epsilon,
            seed=SWEEP_SEED + 1_000 * (seed + 1) + evaluations,
        )
        yield result, steps, float(np.mean(returns))


def train_trial(param_space: Mapping[str, Any]) -> None:
    """One Tune trial: train a contender, evaluating it every ``eval_interval`` env steps.

    A function trainable rather than the Algorithm itself, so that the periodic evaluation is
    :func:`rllib_drqn.evaluate.play_episodes` (the code ``rllib evaluate`` plays with, at the
    paper's epsilon 0.05) and a checkpoint is reported only with an evaluation: Tune's
    ``CheckpointConfig`` then keeps the best one by :data:`SCORE_ATTRIBUTE`.
    """
    import torch
    from gymnasium.wrappers import TimeLimit
    from ray import tune
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_TRAINING_STEP_CALLS_PER_ITERATION

    import rllib_drqn
    from rllib_drqn.evaluate import DEFAULT_MAX_EPISODE_STEPS, make_env
    from rllib_drqn.reporting import RETURN_WINDOW_MEAN, local_trial_dir

    rllib_drqn.register()
    trial = param_space["trial"]
    # One CPU per trial: intra-op threads would only oversubscribe it.
    torch.set_num_threads(1)
    protocol = Protocol.from_dict(trial["protocol"])
    contender = Contender(**trial["contender"])
    seed = int(trial["seed"])
    # The algorithm is built inside this function trainable, so its own logdir is not the
    # trial's: episodes.csv goes to the trial directory by name (for `rllib plot`).
    context = tune.get_context()
    log_dir = local_trial_dir(context.get_storage()) or context.get_trial_dir()
    config = build_contender_config(protocol, contender, seed).reporting(
        episode_log_dir=str(log_dir)
    )
    env = TimeLimit(
        make_env(config.env, config.env_config, contender.flicker_prob),
        DEFAULT_MAX_EPISODE_STEPS,
    )
    algo = config.build_algo()
    try:
        before, updates, best = 0, 0, -math.inf
        for result, steps, score in train_with_evaluations(algo, env, protocol, seed):
            updates += _updates_in(
                result.get(NUM_TRAINING_STEP_CALLS_PER_ITERATION), before, steps, config
            )
            before = steps
            metrics = {
                "env_steps": steps,
                "updates": updates,
                # The training curve: the mean return of the last episode_return_window
                # training episodes (10 at small scale, 100 with the Atari presets), not
                # RLlib's per-report episode_return_mean.
                "train_return_mean": float(result[ENV_RUNNER_RESULTS][RETURN_WINDOW_MEAN]),
            }
            if best > -math.inf:  # Tune's TensorBoard logger warns on -inf.
                metrics["best_eval_return_mean"] = best
            if score is None:
                tune.report(metrics)
                continue
            best = max(best, score)
            metrics |= {SCORE_ATTRIBUTE: score, "best_eval_return_mean": best}
            with tempfile.TemporaryDirectory() as checkpoint_dir:
                algo.save_to_path(checkpoint_dir)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
    finally:
        algo.stop()
        env.close()


def _check_cluster_fits(protocol: Protocol, specs: Sequence[Mapping[str, Any]]) -> None:
    """Fails fast if no trial could ever start (Tune would wait for ever, PENDING)."""
    import ray

    have = ray.cluster_resources()
    bundles = _trial_resources({"trial": specs[0]}).bundles
    for resource in ("CPU", "GPU"):
        need = sum(bundle.get(resource, 0) for bundle in bundles)
        if need > have.get(resource, 0):
            fix = (
                "pass --num-gpus-per-learner 0 to train on the CPU (slow), or run on a "
                "machine or cluster with a GPU"
                if resource == "GPU"
                else "lower num_env_runners, or add CPUs (a Ray cluster: RAY_ADDRESS)"
            )
            raise ReproduceError(
                f"one trial needs {need:g} {resource}(s) but the Ray cluster has "
                f"{have.get(resource, 0):g}; {fix}."
            )


def _trial_resources(trial: Mapping[str, Any]) -> Any:
    """The Algorithm's own resource request (learner, env runners) for a trial."""
    protocol = Protocol.from_dict(trial["trial"]["protocol"])
    contender = Contender(**trial["trial"]["contender"])
    config = build_contender_config(protocol, contender, int(trial["trial"]["seed"]))
    return config.algo_class.default_resource_request(config)


def _plain(value: Any, kind: type) -> Any:
    """A Python number for JSON (Tune hands metrics back as numpy scalars), or None."""
    if value is None or (kind is float and not math.isfinite(float(value))):
        return None
    return kind(value)


def _trial_name(trial: Any) -> str:
    return str(trial.config["trial"]["name"]).replace("@", "_")


def run_training(protocol: Protocol, out: Path, verbose: int = 1) -> list[TrialRecord]:
    """Trains every contender x seed as Tune trials; returns one record per trial."""
    from ray import tune

    specs = [
        _trial_spec(protocol, contender, seed)
        for contender in contenders_for(protocol)
        for seed in protocol.seeds
    ]
    tuner = tune.Tuner(
        tune.with_resources(train_trial, _trial_resources),
        param_space={"trial": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name
        ),
        run_config=tune.RunConfig(
            name="train",
            storage_path=str((out / "runs").resolve()),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1,
                checkpoint_score_attribute=SCORE_ATTRIBUTE,
                checkpoint_score_order="max",
            ),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=verbose,
        ),
    )
    grid = tuner.fit()
    records = []
    for result in grid:
        spec = result.config["trial"]
        contender, seed = Contender(**spec["contender"]), int(spec["seed"])
        metrics = result.metrics or {}
        steps = int(metrics.get("env_steps", 0))
        best = (
            result.get_best_checkpoint(SCORE_ATTRIBUTE, "max") if result.best_checkpoints else None
        )
        records.append(
            TrialRecord(
                contender=contender,
                seed=seed,
                finished=result.error is None and steps >= protocol.env_steps,
                env_steps=steps,
                updates=_plain(metrics.get("updates"), int),
                best_eval_return=_plain(metrics.get("best_eval_return_mean"), float),
                checkpoint=best.path if best is not None else None,
                error=None if result.error is None else f"{type(result.error).__name__}",
                evaluations=_evaluations_of(result),
            )
        )
    return sorted(records, key=lambda record: (record.contender.key, record.seed))


def _evaluations_of(result: Any) -> tuple[tuple[int, float], ...]:
    """``(env_steps, mean return)`` of each periodic evaluation a Tune trial reported."""
    frame = result.metrics_dataframe
    if frame is None or SCORE_ATTRIBUTE not in frame:
        return ()
    rows = frame[["env_steps", SCORE_ATTRIBUTE]].dropna()
    return tuple(
        (int(steps), float(score))
        for steps, score in zip(rows["env_steps"], rows[SCORE_ATTRIBUTE], strict=True)
    )


# ---------------------------------------------------------------------------------------------
# Step 2: the observability sweep of every finished trial's best checkpoint.
# ---------------------------------------------------------------------------------------------


def _sweep(checkpoint: str, probs: Sequence[float], episodes: int, epsilon: float, out: str) -> str:
    import rllib_drqn
    from rllib_drqn.evaluate import evaluate

    rllib_drqn.register()
    report = evaluate(checkpoint, probs, episodes, epsilon=epsilon, seed=SWEEP_SEED, out_dir=out)
    return str(report.json_path)


def run_sweeps(protocol: Protocol, records: Sequence[TrialRecord], out: Path) -> list[TrialRecord]:
    """Sweeps each finished trial's best checkpoint over ``protocol.sweep_probs`` in parallel."""
    import ray

    sweep = ray.remote(num_cpus=1)(_sweep)
    pending = {}
    for record in records:
        if record.finished and record.checkpoint:
            target = out / "evaluations" / f"{record.contender.key}_seed{record.seed}"
            pending[record] = sweep.remote(
                record.checkpoint,
                list(protocol.sweep_probs),
                protocol.sweep_episodes,
                protocol.epsilon,
                str(target),
            )
    swept = []
    for record in records:
        if record in pending:
            path = ray.get(pending[record])
            record = dataclasses.replace(record, evaluation=os.path.relpath(path, out))
        swept.append(record)
    return swept


def save_records(out: Path, protocol: Protocol, records: Sequence[TrialRecord]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / PROTOCOL_FILE).write_text(json.dumps(protocol.as_dict(), indent=2) + "\n")
    document = [record.as_dict() for record in records]
    (out / TRIALS_FILE).write_text(json.dumps(document, indent=2) + "\n")


def load_records(out: Path) -> tuple[Protocol, list[TrialRecord]]:
    """Reads what steps 1 and 2 wrote (``--redraw`` starts here)."""
    try:
        protocol = Protocol.from_dict(json.loads((out / PROTOCOL_FILE).read_text()))
        records = [TrialRecord.from_dict(r) for r in json.loads((out / TRIALS_FILE).read_text())]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ReproduceError(
            f"{out} holds no readable reproduction ({type(error).__name__}: {error}); pass "
            "the --out directory of an earlier rllib reproduce run."
        ) from None
    return protocol, records


# ---------------------------------------------------------------------------------------------
# Step 3: the claims and the report (files in, files out).
# ---------------------------------------------------------------------------------------------


def _sweep_returns(out: Path, record: TrialRecord) -> dict[float, float]:
    """Mean return per flicker probability from a record's ``evaluation.json``."""
    document = json.loads((out / str(record.evaluation)).read_text())
    return {round(r["flicker_prob"], 6): float(r["mean"]) for r in document["results"]}


def _scores(out: Path, records: Sequence[TrialRecord]) -> dict[str, dict[int, dict[float, float]]]:
    """contender key -> seed -> flicker probability -> mean return (swept records only)."""
    table: dict[str, dict[int, dict[float, float]]] = {}
    for record in records:
        if record.evaluation:
            table.setdefault(record.contender.key, {})[record.seed] = _sweep_returns(out, record)
    return table


def _welch_greater(a: Sequence[float], b: Sequence[float]) -> float | None:
    """One-sided Welch t-test p-value for mean(a) > mean(b); None below 2 samples each."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    if np.std(a) == 0 and np.std(b) == 0:
        return 0.0 if np.mean(a) > np.mean(b) else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


def _p(pvalue: float) -> str:
    """``= 0.0123``, or ``< 1e-04`` where the test's p-value underflows to 0."""
    return "< 1e-04" if pvalue < 1e-4 else f"= {pvalue:.3g}"


def _summary(values: Sequence[float]) -> dict[str, Any]:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "n": len(values), "values": list(values)}


def _at(table: Mapping[int, Mapping[float, float]], prob: float) -> list[float]:
    return [by_prob[round(prob, 6)] for _, by_prob in sorted(table.items())]


def decide_claims(protocol: Protocol, out: Path, records: Sequence[TrialRecord]) -> dict[str, Any]:
    """Each claim's verdict, the numbers behind it and the rule that decided it."""
    from scipy import stats

    scores = _scores(out, records)
    p = protocol.flicker_prob
    drqn, dqn10 = f"DRQN@p{p:g}", f"DQN-10@p{p:g}"
    drqn0, dqn4 = "DRQN@p0", "DQN-4@p0"
    claims: dict[str, Any] = {}

    def verdict(holds: bool, why: str, numbers: dict[str, Any], claim: str) -> dict[str, Any]:
        return {
            "claim": CLAIM_TEXT[claim],
            "verdict": "holds" if holds else "does not hold",
            "why": why,
            "rule": RULES[claim],
            "numbers": numbers,
        }

    if "C1" in protocol.claims:
        a, b = _at(scores.get(drqn, {}), p), _at(scores.get(dqn10, {}), p)
        numbers: dict[str, Any] = {"DRQN": _summary(a) if a else None}
        numbers["DQN-10"] = _summary(b) if b else None
        if a and b:
            margin = C1_MARGIN * abs(float(np.mean(b)))
            pvalue = _welch_greater([x + margin for x in a], b)
            numbers |= {"margin": margin, "p_value": pvalue}
            holds = pvalue is not None and pvalue < ALPHA
            why = (
                "fewer than 2 seeds per contender: no test"
                if pvalue is None
                else f"non-inferiority p {_p(pvalue)} {'<' if holds else '>='} {ALPHA}"
            )
        else:
            holds, why = False, "a contender has no evaluated seed"
        claims["C1"] = verdict(holds, why, numbers, "C1")

    if "C2" in protocol.claims:
        table = scores.get(drqn, {})
        probs = sorted(protocol.sweep_probs)
        means = [float(np.mean(_at(table, q))) for q in probs] if table else []
        numbers = {"flicker_probs": probs, "DRQN_mean": means, "seeds": len(table)}
        if len(means) >= 3 and np.ptp(means) > 0:
            rho, pvalue = stats.spearmanr([1 - q for q in probs], means, alternative="greater")
            numbers |= {"spearman_rho": float(rho), "p_value": float(pvalue)}
            holds = bool(rho > 0 and pvalue < ALPHA)
            why = f"Spearman rho = {rho:.3f}, one-sided p {_p(pvalue)}"
        else:
            holds, why = False, "DRQN has no evaluated seed, or a flat curve"
        if scores.get(dqn10):
            numbers["DQN-10_mean"] = [float(np.mean(_at(scores[dqn10], q))) for q in probs]
        claims["C2"] = verdict(holds, why, numbers, "C2")

    if "C3" in protocol.claims:
        percentages = {}
        undefined = []
        for key, name in ((drqn0, "DRQN"), (dqn4, "DQN-4")):
            per_seed = {}
            for seed, by_prob in sorted(scores.get(key, {}).items()):
                original = by_prob[0.0]
                if original <= 0:
                    undefined.append(f"{name} seed {seed}")
                    continue
                per_seed[seed] = [100.0 * by_prob[round(q, 6)] / original for q in C3_PROBS]
            percentages[name] = per_seed
        d, q4 = percentages["DRQN"], percentages["DQN-4"]
        numbers = {"flicker_probs": list(C3_PROBS)}
        if d and q4 and not undefined:
            d_mean = np.mean(list(d.values()), axis=0)
            q_mean = np.mean(list(q4.values()), axis=0)
            above = [bool(x > y) for x, y in zip(d_mean, q_mean, strict=True)]
            pvalue = _welch_greater(
                [float(np.mean(v)) for v in d.values()], [float(np.mean(v)) for v in q4.values()]
            )
            numbers |= {
                "DRQN_percent_mean": d_mean.tolist(),
                "DQN-4_percent_mean": q_mean.tolist(),
                "DRQN_above_at": above,
                "p_value": pvalue,
            }
            holds = all(above) and pvalue is not None and pvalue < ALPHA
            why = f"DRQN above DQN-4 at {sum(above)} of {len(above)} p; averaged over p, " + (
                "fewer than 2 seeds: no test" if pvalue is None else f"p {_p(pvalue)}"
            )
        else:
            holds = False
            why = (
                f"original score <= 0 ({', '.join(undefined)}): percentage undefined"
                if undefined
                else "a contender has no evaluated seed"
            )
        claims["C3"] = verdict(holds, why, numbers, "C3")
    return claims


def _plot_c1(scores: Mapping[str, Any], protocol: Protocol, path: Path) -> None:
    figure, axes = _figure()
    p = protocol.flicker_prob
    names = [f"DRQN@p{p:g}", f"DQN-10@p{p:g}"]
    for i, key in enumerate(names):
        values = _at(scores.get(key, {}), p) if key in scores else []
        if values:
            axes.bar(i, np.mean(values), yerr=_summary(values)["std"], capsize=6, alpha=0.7)
            axes.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    axes.set_xticks(range(len(names)), ["DRQN (1 obs.)", "DQN (10 obs.)"])
    axes.set_ylabel(f"return at p = {p:g} (mean \u00b1 std over seeds)")
    axes.set_title(f"C1: {protocol.task}, p = {p:g}", fontsize="medium")
    figure.savefig(path, dpi=120)


def _plot_curves(
    series: Mapping[str, Mapping[int, Sequence[float]]],
    xs: Sequence[float],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    path: Path,
) -> None:
    figure, axes = _figure()
    for label, per_seed in series.items():
        if not per_seed:
            continue
        values = np.array(list(per_seed.values()))
        mean = values.mean(axis=0)
        std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
        axes.plot(xs, mean, marker="o", label=f"{label} ({len(values)} seeds)")
        axes.fill_between(xs, mean - std, mean + std, alpha=0.2)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def _figure() -> tuple[Any, Any]:
    """A figure on matplotlib's Agg canvas (no GUI backend, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def write_report(out: Path, protocol: Protocol, records: Sequence[TrialRecord]) -> dict[str, Any]:
    """Writes ``claims.json``, ``report.md`` and the plots from the saved records and sweeps."""
    scores = _scores(out, records)
    claims = decide_claims(protocol, out, records)
    unfinished = [r for r in records if not r.finished]
    document = {
        "task": protocol.task,
        "complete": not unfinished,
        "unfinished_trials": [f"{r.contender.key} seed {r.seed}" for r in unfinished],
        "alpha": ALPHA,
        "claims": claims,
    }
    (out / CLAIMS_FILE).write_text(json.dumps(document, indent=2) + "\n")

    probs = sorted(protocol.sweep_probs)
    p = protocol.flicker_prob
    if "C1" in protocol.claims:
        _plot_c1(scores, protocol, out / PLOT_FILES["C1"])
    if "C2" in protocol.claims:
        _plot_curves(
            {
                name: {s: [v[q] for q in probs] for s, v in scores.get(key, {}).items()}
                for name, key in (("DRQN", f"DRQN@p{p:g}"), ("DQN-10", f"DQN-10@p{p:g}"))
            },
            [1 - q for q in probs],
            xlabel="observability 1 \u2212 p (fraction of observations shown)",
            ylabel="return (mean \u00b1 std over seeds)",
            title=f"C2: trained on {protocol.task} at p = {p:g}",
            path=out / PLOT_FILES["C2"],
        )
    if "C3" in protocol.claims:
        c3 = claims["C3"]["numbers"]
        series = {}
        for name, key in (("DRQN", "DRQN@p0"), ("DQN-4", "DQN-4@p0")):
            series[name] = {
                s: [100.0 * v[q] / v[0.0] if v[0.0] > 0 else float("nan") for q in C3_PROBS]
                for s, v in scores.get(key, {}).items()
            }
        _plot_curves(
            series,
            list(c3["flicker_probs"]),
            xlabel="flicker probability p at evaluation",
            ylabel="percentage of original score (p = 0)",
            title=f"C3: trained on {protocol.task} at p = 0",
            path=out / PLOT_FILES["C3"],
        )
    (out / REPORT_FILE).write_text(_markdown(protocol, records, scores, document))
    return document


def _fmt(values: Sequence[float]) -> str:
    if not values:
        return "-"
    summary = _summary(values)
    return f"{summary['mean']:.1f} \u00b1 {summary['std']:.1f}"


def _best_and_final_lines(records: Sequence[TrialRecord]) -> list[str]:
    """Per contender: median (min - max) best and final periodic evaluation, and their ratio."""
    lines = [
        "Periodic evaluations per contender, median (min - max) over seeds:",
        "",
        "| contender | best | final | median final / median best |",
        "|---|---|---|---|",
    ]
    for key in sorted({r.contender.key for r in records}):
        ours = [r for r in records if r.contender.key == key]
        bests = [r.best_eval_return for r in ours if r.best_eval_return is not None]
        finals = [r.final_eval_return for r in ours if r.final_eval_return is not None]
        if not bests or not finals:
            continue
        best, final = float(np.median(bests)), float(np.median(finals))
        ratio = f"{final / best:.2f}" if best > 0 else "-"
        lines.append(
            f"| {key} | {best:.1f} ({min(bests):.1f} - {max(bests):.1f}) | "
            f"{final:.1f} ({min(finals):.1f} - {max(finals):.1f}) | {ratio} |"
        )
    return lines


def _markdown(
    protocol: Protocol,
    records: Sequence[TrialRecord],
    scores: Mapping[str, Mapping[int, Mapping[float, float]]],
    document: Mapping[str, Any],
) -> str:
    lines = [f"# Reproducing Hausknecht & Stone (2015) on {protocol.task}", ""]
    if not document["complete"]:
        lines += [
            f"**Incomplete**: {len(document['unfinished_trials'])} of {len(records)} trials did "
            "not finish (interrupted or failed): "
            + ", ".join(document["unfinished_trials"])
            + ". The tables and verdicts use the finished ones only.",
            "",
        ]
    lines += [
        f"Protocol: {len(protocol.seeds)} seeds, {protocol.env_steps:,} env steps per trial, one "
        f"update of 32 samples (each of 10 observations) per {protocol.update_interval} env "
        f"steps; the best of the evaluations every {protocol.eval_interval:,} env steps "
        f"({protocol.eval_episodes} episodes at epsilon {protocol.epsilon:g}) is swept over "
        f"p = {', '.join(f'{q:g}' for q in sorted(protocol.sweep_probs))} "
        f"({protocol.sweep_episodes} episodes each). Mean \u00b1 std (ddof 1) over seeds.",
        "",
        "## Verdicts",
        "",
        "| claim | verdict | why |",
        "|---|---|---|",
    ]
    for claim, result in document["claims"].items():
        lines.append(f"| {claim}: {result['claim']} | **{result['verdict']}** | {result['why']} |")
    lines += ["", "Rules (fixed before the run):", ""]
    lines += [f"- **{claim}**: {RULES[claim]}" for claim in document["claims"]]
    lines += [
        "",
        "## Trials",
        "",
        "| contender | seed | env steps | updates | best periodic evaluation | final periodic "
        "evaluation | periodic evaluations | finished |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        best = "-" if r.best_eval_return is None else f"{r.best_eval_return:.1f}"
        final = "-" if r.final_eval_return is None else f"{r.final_eval_return:.1f}"
        curve = " / ".join(f"{score:.0f}" for _, score in r.evaluations) or "-"
        lines.append(
            f"| {r.contender.key} | {r.seed} | {r.env_steps:,} | {r.updates or '-'} | {best} | "
            f"{final} | {curve} | "
            f"{'yes' if r.finished else 'no' + (f' ({r.error})' if r.error else '')} |"
        )
    lines += ["", *_best_and_final_lines(records)]
    probs = sorted(protocol.sweep_probs)
    lines += ["", "## Return against the flicker probability p (sweep)", ""]
    lines += ["| contender | " + " | ".join(f"p={q:g}" for q in probs) + " |"]
    lines += ["|---|" + "---|" * len(probs)]
    for key, table in sorted(scores.items()):
        lines.append(f"| {key} | " + " | ".join(_fmt(_at(table, q)) for q in probs) + " |")
    if "C3" in document["claims"] and "DRQN_percent_mean" in document["claims"]["C3"]["numbers"]:
        numbers = document["claims"]["C3"]["numbers"]
        lines += ["", "## C3: percentage of original score", ""]
        lines += ["| contender | " + " | ".join(f"p={q:g}" for q in C3_PROBS) + " |"]
        lines += ["|---|" + "---|" * len(C3_PROBS)]
        for name in ("DRQN", "DQN-4"):
            row = numbers[f"{name}_percent_mean"]
            lines.append(f"| {name} | " + " | ".join(f"{v:.0f}%" for v in row) + " |")
    lines += ["", "## Plots", ""]
    lines += [f"![{claim}]({PLOT_FILES[claim]})" for claim in document["claims"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The whole reproduction.
# ---------------------------------------------------------------------------------------------


def run_reproduction(
    protocol: Protocol,
    out: Path,
    *,
    log: Callable[[str], None] = print,
    verbose: int = 1,
) -> dict[str, Any]:
    """Checks everything, then trains, sweeps and reports; returns ``claims.json``'s content.

    Every check (the protocol, the report directory, every trial's ``AlgorithmConfig``) runs
    before Ray starts. An interrupted run (Ctrl-C) still writes the report of the trials that
    finished, marked incomplete.
    """
    import ray

    check_protocol(protocol)
    check_out_dir(out)
    for contender in contenders_for(protocol):
        try:
            build_contender_config(protocol, contender, protocol.seeds[0]).validate()
        except Exception as error:
            raise ReproduceError(
                f"the {contender.key} config is invalid for {protocol.task}: {one_line(error)}"
            ) from None
    # Each evaluation reports a checkpoint and Tune keeps one: its "snapshotting triggered
    # multiple times" warning would then print every few seconds (0 turns it off).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = time.monotonic()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}})
    contender = contenders_for(protocol)[0]
    _check_cluster_fits(protocol, [_trial_spec(protocol, contender, protocol.seeds[0])])
    out.mkdir(parents=True)
    records: list[TrialRecord] = []
    try:
        records = run_training(protocol, out, verbose=verbose)
        save_records(out, protocol, records)
        log(
            f"trained {sum(r.finished for r in records)} of {len(records)} trials in "
            f"{time.monotonic() - started:.0f} s; sweeping their best checkpoints"
        )
        records = run_sweeps(protocol, records, out)
    except KeyboardInterrupt:
        log("interrupted: writing the report of what finished")
        if not records:  # Interrupted inside Tune: no trial is known to have finished.
            records = [
                TrialRecord(contender, seed, False, 0, None, None, None, error="interrupted")
                for contender in contenders_for(protocol)
                for seed in protocol.seeds
            ]
    save_records(out, protocol, records)
    document = write_report(out, protocol, records)
    log(f"report: {out / REPORT_FILE} ({time.monotonic() - started:.0f} s in all)")
    return document

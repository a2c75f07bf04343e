"""Asynchronous DRQN training: env runners sample while the learner trains (R2D2 / Ape-X).

RLlib 2.60's DQN ``training_step`` (``ray/rllib/algorithms/dqn/dqn.py``,
``_training_step_new_api_stack``) samples, stores, trains and syncs weights one after another:
the learner waits while the env runners sample, and the runners wait while it trains. RLlib
dropped its asynchronous Ape-X and R2D2 from the new API stack (ray PR 48565). This module is
the loop that R2D2 (Kapturowski et al. 2019, https://openreview.net/forum?id=r1lyTjAqYX) and
Ape-X (Horgan et al. 2018, https://arxiv.org/abs/1803.00933) describe, built from the pieces
RLlib's own IMPALA/APPO ``training_step`` uses (``ray/rllib/algorithms/impala/impala.py``):

- **Actors.** Every remote env runner always has sample requests in flight
  (``EnvRunnerGroup.foreach_env_runner_async``, up to ``max_requests_in_flight_per_env_runner``
  each), acting with the newest weights it has been sent.
- **Replay.** Whatever samples are ready (``EnvRunnerGroup.fetch_ready_async_reqs``) go into
  the algorithm's replay buffer as they arrive; the episodes come back by value, so a runner
  that dies later takes nothing that was already delivered with it.
- **Rate limiter.** :class:`ReplayRatioLimiter` (Reverb's ``SampleToInsertRatio``) holds the
  timesteps trained per env step sampled at ``replay_ratio``. It pauses training when the
  learner is ahead and stops sending sample requests when the actors are ahead, so an async
  run replays each step as often as a sync run at the same ratio. Timesteps trained are what
  RLlib's learner counts (``num_module_steps_trained``: every step of a replayed sequence but
  its padding, burn-in and n-step lookahead steps included), so the limiter's ratio and
  RLlib's reported counters are one unit.
- **Learner.** Trains whenever the limiter allows, on the same replay sampling, learner update,
  TD-error priorities and metrics as RLlib's DQN step.
- **Weight broadcast.** Every ``broadcast_interval`` updates, one ``ray.put`` of the weights for
  all runners and a fire-and-forget ``set_state`` per runner (the shape of RLlib's own
  ``EnvRunnerGroup.sync_weights``), never waiting for a runner.
- **Faults.** A runner that dies is taken out of service by RLlib's actor manager; Ray restarts
  it (``restart_failed_env_runners``). Its replacement is probed without blocking and synced
  before it samples again; meanwhile the survivors keep sampling and the learner keeps training.

Each ``training_step`` call does at most one learner update; RLlib's ``Algorithm.train`` calls
it until the iteration's ``min_*_per_iteration`` settings are met, as for IMPALA.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED,
    REPLAY_BUFFER_ADD_DATA_TIMER,
    REPLAY_BUFFER_RESULTS,
    REPLAY_BUFFER_SAMPLE_TIMER,
    REPLAY_BUFFER_UPDATE_PRIOS_TIMER,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TD_ERROR_KEY,
    TIMERS,
    WEIGHTS_SEQ_NO,
)
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.replay_buffers.utils import update_priorities_in_episode_replay_buffer
from ray.rllib.utils.schedules.scheduler import Scheduler

__all__ = [
    "RATE_LIMITER_RESULTS",
    "AsyncDRQNLoop",
    "ReplayRatioLimiter",
    "apex_epsilon",
    "apply_runner_epsilons",
    "check_runner_epsilon",
    "sync_updates_per_env_step",
]

#: Results key of the rate limiter's numbers (achieved and target replay ratio, pauses).
RATE_LIMITER_RESULTS = "rate_limiter"

# Tags of the async requests, so each kind is fetched (and capped in flight) on its own.
_SAMPLE_TAG = "drqn_async_sample"
_WEIGHTS_TAG = "drqn_async_weights"
_PROBE_TAG = "drqn_async_probe"
_RESTORE_TAG = "drqn_async_restore"
_EPSILON_TAG = "drqn_async_epsilon"

#: Longest one ``training_step`` waits for samples while the limiter pauses training; the
#: call then returns so RLlib can end the iteration, report, and probe failed runners.
_MAX_WAIT_S = 0.1
_POLL_S = 0.002


# ---- The rate limiter ------------------------------------------------------------------------


@dataclass
class ReplayRatioLimiter:
    """Timesteps trained per env step sampled, held at ``replay_ratio`` (Reverb's limiter).

    Like Reverb's ``SampleToInsertRatio(samples_per_insert, min_size_to_sample,
    error_buffer)``: nothing trains before ``min_size_to_train`` env steps are in replay (RLlib's
    ``num_steps_sampled_before_learning_starts``); from then on the timesteps trained may run at
    most ``error_buffer`` ahead of or behind ``replay_ratio`` times the env steps sampled since.
    Training pauses at the upper bound, sampling at the lower one, so the ratio cannot drift:
    it is within ``error_buffer / (replay_ratio * (env steps - min_size_to_train))`` of the
    target, which shrinks as the run goes on.

    Example::

        limiter = ReplayRatioLimiter(replay_ratio=2.0, min_size_to_train=10, error_buffer=8)
        limiter.record_sampled(10)
        assert not limiter.can_train(4)     # 0 steps since learning started
        limiter.record_sampled(4)
        assert limiter.can_train(4)         # 8 trained timesteps allowed, +8 of buffer
    """

    replay_ratio: float
    min_size_to_train: int
    error_buffer: float
    env_steps_sampled: int = 0
    timesteps_trained: float = 0.0

    def __post_init__(self) -> None:
        if not self.replay_ratio > 0:
            raise ValueError(f"replay_ratio must be > 0, got {self.replay_ratio!r}.")
        if self.error_buffer < 0:
            raise ValueError(f"error_buffer must be >= 0, got {self.error_buffer!r}.")

    def _target(self, env_steps: float) -> float:
        return self.replay_ratio * max(0.0, env_steps - self.min_size_to_train)

    def can_train(self, batch_timesteps: float) -> bool:
        """Whether one more update of ``batch_timesteps`` keeps training within the buffer."""
        if self.env_steps_sampled < max(1, self.min_size_to_train):
            return False
        trained_after = self.timesteps_trained + batch_timesteps
        return trained_after <= self._target(self.env_steps_sampled) + self.error_buffer

    def can_sample(self, env_steps_in_flight: float, request_env_steps: float) -> bool:
        """Whether one more sample request keeps sampling within the buffer.

        Requests already in flight cannot be called back, so they count as sampled.
        """
        after = self.env_steps_sampled + env_steps_in_flight + request_env_steps
        if after <= self.min_size_to_train:
            return True
        return self._target(after) - self.timesteps_trained <= self.error_buffer

    def record_sampled(self, env_steps: int) -> None:
        self.env_steps_sampled += int(env_steps)

    def record_trained(self, timesteps: float) -> None:
        self.timesteps_trained += float(timesteps)

    @property
    def achieved_ratio(self) -> float:
        """Timesteps trained per env step sampled since learning started (NaN before)."""
        since_start = self.env_steps_sampled - self.min_size_to_train
        return self.timesteps_trained / since_start if since_start > 0 else math.nan


def sync_updates_per_env_step(config: Any) -> float:
    """Learner updates per env step sampled in RLlib's synchronous DQN loop on this config.

    ``DQN.training_step`` alternates ``store_weight`` sample rounds with
    ``sample_and_train_weight`` updates (``calculate_rr_weights`` in
    ``ray/rllib/algorithms/dqn/dqn.py``). A round collects ``rollout_fragment_length *
    num_envs_per_env_runner`` env steps from each remote runner (or from the local one when
    there are none). ``calculate_rr_weights`` divides by ``num_env_runners + 1`` although the
    local runner does not sample when there are remote ones, so with remote runners the sync
    loop trains more than ``training_intensity`` asks; this returns what it does.
    """
    from ray.rllib.algorithms.dqn.dqn import calculate_rr_weights

    store_weight, train_weight = calculate_rr_weights(config)
    round_env_steps = (
        config.get_rollout_fragment_length()
        * config.num_envs_per_env_runner
        * max(config.num_env_runners, 1)
    )
    return train_weight / (store_weight * round_env_steps)


# ---- Per-actor exploration (Ape-X) -------------------------------------------------------------


def apex_epsilon(index: int, num_runners: int, base: float = 0.4, alpha: float = 7.0) -> float:
    """Ape-X's epsilon of actor ``index`` of ``num_runners``: ``base ** (1 + alpha i/(N-1))``.

    Horgan et al. 2018 (section 4, base 0.4, alpha 7), kept by R2D2. One actor gets ``base``.
    """
    if not 0 <= index < num_runners:
        raise ValueError(f"Actor index {index} is outside 0..{num_runners - 1}.")
    exponent = 1.0 + (alpha * index / (num_runners - 1) if num_runners > 1 else 0.0)
    return float(base**exponent)


def _acting_module(env_runner: Any) -> Any:
    module = env_runner.module
    return module[DEFAULT_MODULE_ID] if isinstance(module, MultiRLModule) else module


def _set_runner_epsilon(env_runner: Any) -> float:
    """On a remote env runner: fixes its module's epsilon at its Ape-X value."""
    config = env_runner.config
    epsilon = apex_epsilon(
        env_runner.worker_index - 1,
        config.num_env_runners,
        config.per_runner_epsilon_base,
        config.per_runner_epsilon_alpha,
    )
    # The module reads its schedule at every exploration step
    # (DRQNTorchRLModule._forward_exploration, like RLlib's DefaultDQNTorchRLModule); a
    # constant schedule is a fixed epsilon.
    _acting_module(env_runner).epsilon_schedule = Scheduler(
        fixed_value_or_schedule=epsilon, framework="torch"
    )
    return epsilon


def check_runner_epsilon(env_runner_group: Any) -> None:
    """Fails in the driver if the acting module has no epsilon schedule to replace.

    Checked on one runner, synchronously: an exception inside a fire-and-forget call would
    only kill that runner (``FaultAwareApply.apply`` exits the actor).
    """
    has_schedule = env_runner_group.foreach_env_runner(
        lambda env_runner: hasattr(_acting_module(env_runner), "epsilon_schedule"),
        remote_worker_ids=[1],
        local_env_runner=False,
    )
    if not all(has_schedule):
        raise TypeError(
            "per_runner_epsilon=True replaces the acting module's `epsilon_schedule` "
            "(DRQNTorchRLModule and RLlib's DQN modules have one); this module has none. "
            "Set config.training(per_runner_epsilon=False)."
        )


def apply_runner_epsilons(
    env_runner_group: Any, runner_ids: list[int] | None = None, *, wait: bool = False
) -> list[float]:
    """Gives each remote env runner (or those in ``runner_ids``) its Ape-X epsilon.

    Without ``wait`` it is fire-and-forget: Ray runs an actor's calls in order, so the epsilon
    is set before the runner's next sample request. Evaluation runners are another group and
    keep the config's ``explore`` settings. Returns the epsilons when ``wait`` is set.
    """
    if wait:
        return env_runner_group.foreach_env_runner(
            _set_runner_epsilon, remote_worker_ids=runner_ids, local_env_runner=False
        )
    env_runner_group.foreach_env_runner_async(
        _set_runner_epsilon, tag=_EPSILON_TAG, remote_worker_ids=runner_ids
    )
    return []


# ---- The loop ----------------------------------------------------------------------------------


def _sample_with_metrics(env_runner: Any) -> tuple[list[Any], dict[str, Any]]:
    """On a remote env runner: one rollout and its metrics, returned by value.

    RLlib's ``EnvRunner.sample_get_state_and_metrics`` returns the episodes as an object the
    runner owns (``ray.put`` inside the actor), which is lost if that runner dies before the
    driver reads it; returned by value they belong to the driver.
    """
    episodes = env_runner.sample()
    return episodes, env_runner.get_metrics()


class AsyncDRQNLoop:
    """The asynchronous training loop of one ``DRQN`` algorithm (see the module docstring).

    Args:
        algo: The algorithm; its config has ``async_training=True`` and remote env runners.
    """

    def __init__(self, algo: Any) -> None:
        self.algo = algo
        config = algo.config
        #: Env steps one sample request returns (at least; a vector env can add a few).
        self.request_env_steps = float(
            config.get_rollout_fragment_length() * config.num_envs_per_env_runner
        )
        #: With ``replay_ratio=None``: the sync loop's updates per env step, which the target
        #: ratio follows (times the mean timesteps an update has trained so far).
        self.sync_updates_per_env_step = (
            sync_updates_per_env_step(config) if config.replay_ratio is None else None
        )
        # Resume the counts from a restored checkpoint's metrics (0 in a fresh run).
        self.num_updates = int(
            algo.metrics.peek((RATE_LIMITER_RESULTS, "num_updates_lifetime"), default=0)
        )
        timesteps_trained = algo.metrics.peek(
            (RATE_LIMITER_RESULTS, "num_timesteps_trained_lifetime"), default=0
        )
        self.limiter = ReplayRatioLimiter(
            replay_ratio=self._target_ratio(timesteps_trained),
            min_size_to_train=int(config.num_steps_sampled_before_learning_starts),
            error_buffer=0.0,
        )
        self.limiter.error_buffer = self._error_buffer()
        self.limiter.record_sampled(
            algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
        )
        self.limiter.record_trained(timesteps_trained)
        self.updates_since_broadcast = 0
        self.num_broadcasts = 0

    @property
    def timesteps_per_update(self) -> float:
        """Timesteps RLlib's learner counted per update so far: the next update's estimate.

        Before the first update it is the padded batch, ``total_train_batch_size``.
        """
        return self._mean_update(self.limiter.timesteps_trained)

    def _mean_update(self, timesteps_trained: float) -> float:
        if self.num_updates == 0:
            return float(self.algo.config.total_train_batch_size)
        return timesteps_trained / self.num_updates

    def _target_ratio(self, timesteps_trained: float) -> float:
        """``replay_ratio``, or the sync loop's updates per env step times the mean update."""
        if self.sync_updates_per_env_step is None:
            return float(self.algo.config.replay_ratio)
        return self.sync_updates_per_env_step * self._mean_update(timesteps_trained)

    def _error_buffer(self) -> float:
        """Acme's error buffer (``tolerance * ratio * min replay size``), never too small.

        It must hold one update plus the requests all runners have in flight, or the limiter
        would pause both sides at once (deadlock) or keep runners idle while the learner
        trains (no overlap).
        """
        config, limiter = self.algo.config, self.limiter
        num_requests = max(1, config.num_env_runners) * config.max_requests_in_flight_per_env_runner
        in_flight = self.request_env_steps * num_requests
        # The padded batch bounds an update's count only without lookahead; take the larger.
        floor = max(self.timesteps_per_update, config.total_train_batch_size) + (
            limiter.replay_ratio * in_flight
        )
        tolerance_steps = (
            config.replay_ratio_tolerance * limiter.replay_ratio * limiter.min_size_to_train
        )
        return max(tolerance_steps, floor)

    # ---- one step -------------------------------------------------------------------------

    def training_step(self) -> None:
        """Collects ready samples, tops up sample requests, trains once if allowed."""
        algo = self.algo
        self._collect_samples(timeout_s=0.0)
        self._request_samples()
        if not self.limiter.can_train(self.timesteps_per_update):
            # Training paused: wait for samples (the runners are at work meanwhile).
            self._wait_for_samples()
        if self.limiter.can_train(self.timesteps_per_update):
            self._train_once()
            self._request_samples()
        self._discard_finished(_WEIGHTS_TAG, _RESTORE_TAG, _EPSILON_TAG)
        algo.metrics.log_dict(
            {
                "replay_ratio": self.limiter.achieved_ratio,
                "target_replay_ratio": self.limiter.replay_ratio,
                "timesteps_per_update": self.timesteps_per_update,
                "error_buffer": self.limiter.error_buffer,
                "num_env_steps_in_replay_lifetime": self.limiter.env_steps_sampled,
                "num_healthy_env_runners": algo.env_runner_group.num_healthy_remote_workers(),
                "num_sample_requests_in_flight": algo.env_runner_group.num_in_flight_async_reqs(
                    tag=_SAMPLE_TAG
                ),
                "num_weight_broadcasts": self.num_broadcasts,
            },
            key=RATE_LIMITER_RESULTS,
            window=1,
        )

    def _wait_for_samples(self) -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < _MAX_WAIT_S:
            if self._collect_samples(timeout_s=_POLL_S):
                self._request_samples()
                if self.limiter.can_train(self.timesteps_per_update):
                    break
            elif self.algo.env_runner_group.num_in_flight_async_reqs(tag=_SAMPLE_TAG) == 0:
                self._request_samples()
                if self.algo.env_runner_group.num_in_flight_async_reqs(tag=_SAMPLE_TAG) == 0:
                    break  # No healthy runner to wait for; RLlib probes them between steps.
        self.algo.metrics.log_value(
            (RATE_LIMITER_RESULTS, "learner_wait_s"), time.perf_counter() - start, reduce="sum"
        )

    # ---- actors -> replay -----------------------------------------------------------------

    def _request_samples(self) -> None:
        """Sends sample requests to runners with a free slot, as far as the limiter allows."""
        group = self.algo.env_runner_group
        for _ in range(self.algo.config.max_requests_in_flight_per_env_runner):
            for runner_id in group.healthy_env_runner_ids():
                in_flight = group.num_in_flight_async_reqs(tag=_SAMPLE_TAG) * self.request_env_steps
                if not self.limiter.can_sample(in_flight, self.request_env_steps):
                    self.algo.metrics.log_value(
                        (RATE_LIMITER_RESULTS, "num_sampling_paused"), 1, reduce="sum"
                    )
                    return
                # 0 if that runner already has its maximum of requests in flight.
                group.foreach_env_runner_async(
                    _sample_with_metrics, tag=_SAMPLE_TAG, remote_worker_ids=[runner_id]
                )

    def _collect_samples(self, timeout_s: float) -> int:
        """Adds every ready rollout to replay; returns the env steps added."""
        algo = self.algo
        ready = algo.env_runner_group.fetch_ready_async_reqs(
            tags=_SAMPLE_TAG, timeout_seconds=timeout_s
        )
        if not ready:
            return 0
        episodes = [episode for _, (rollout, _) in ready for episode in rollout]
        env_steps = sum(len(episode) for episode in episodes)
        with algo.metrics.log_time((TIMERS, REPLAY_BUFFER_ADD_DATA_TIMER)):
            algo.local_replay_buffer.add(episodes)
        self.limiter.record_sampled(env_steps)
        algo.metrics.aggregate([metrics for _, (_, metrics) in ready], key=ENV_RUNNER_RESULTS)
        return env_steps

    def _discard_finished(self, *tags: str) -> None:
        """Frees the in-flight slots of finished fire-and-forget calls (their results are None)."""
        self.algo.env_runner_group.fetch_ready_async_reqs(tags=list(tags), timeout_seconds=0.0)

    # ---- learner ------------------------------------------------------------------------------

    def _train_once(self) -> None:
        """One update as RLlib's DQN makes it: replay sample, learner, priorities, metrics."""
        algo = self.algo
        config = algo.config
        with algo.metrics.log_time((TIMERS, REPLAY_BUFFER_SAMPLE_TIMER)):
            episodes = algo.local_replay_buffer.sample(
                num_items=config.total_train_batch_size,
                n_step=config.n_step,
                batch_length_T=algo._module_is_stateful * config.model_config.get("max_seq_len", 0),
                lookback=int(algo._module_is_stateful),
                min_batch_length_T=config.burn_in_len,
                gamma=config.gamma,
                beta=config.replay_buffer_config.get("beta"),
                sample_episodes=True,
            )
            algo.metrics.aggregate(
                [algo.local_replay_buffer.get_metrics()], key=REPLAY_BUFFER_RESULTS
            )
        with algo.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = algo.learner_group.update(
                episodes=episodes,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: algo.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0
                    ),
                    NUM_AGENT_STEPS_SAMPLED_LIFETIME: algo.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_AGENT_STEPS_SAMPLED_LIFETIME), default={}
                    ),
                },
            )
            # As DQN's step: TD errors out of the results (too large to log), into priorities.
            td_errors: dict[str, list[np.ndarray]] = defaultdict(list)
            # What RLlib's learners counted for this update (each learner its shard).
            timesteps_trained = sum(
                float(result[ALL_MODULES][NUM_MODULE_STEPS_TRAINED].peek())
                for result in learner_results
            )
            for result in learner_results:
                for module_id, module_results in result.items():
                    if TD_ERROR_KEY in module_results:
                        td_errors[module_id].extend(
                            convert_to_numpy(module_results.pop(TD_ERROR_KEY).peek())
                        )
            algo.metrics.aggregate(learner_results, key=LEARNER_RESULTS)
        with algo.metrics.log_time((TIMERS, REPLAY_BUFFER_UPDATE_PRIOS_TIMER)):
            update_priorities_in_episode_replay_buffer(
                replay_buffer=algo.local_replay_buffer,
                td_errors={
                    module_id: {TD_ERROR_KEY: np.concatenate(errors, axis=0)}
                    for module_id, errors in td_errors.items()
                },
            )
        self.limiter.record_trained(timesteps_trained)
        self.num_updates += 1
        if self.sync_updates_per_env_step is not None:
            self.limiter.replay_ratio = self._target_ratio(self.limiter.timesteps_trained)
            self.limiter.error_buffer = self._error_buffer()
        algo.metrics.log_dict(
            {"num_timesteps_trained_lifetime": timesteps_trained, "num_updates_lifetime": 1},
            key=RATE_LIMITER_RESULTS,
            reduce="lifetime_sum",
        )
        self.updates_since_broadcast += 1
        if self.updates_since_broadcast >= config.broadcast_interval:
            self.broadcast_weights()

    # ---- learner -> actors --------------------------------------------------------------------

    def broadcast_weights(self) -> None:
        """One ``ray.put`` of the weights for all runners; sent without waiting for any."""
        algo = self.algo
        group = algo.env_runner_group
        with algo.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            state = algo.learner_group.get_state(
                components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}", inference_only=True
            )[COMPONENT_LEARNER]
            state = {key: state[key] for key in (COMPONENT_RL_MODULE, WEIGHTS_SEQ_NO)}
            # A top-level ObjectRef argument is resolved by Ray in each runner: one copy in
            # the object store for all of them (as EnvRunnerGroup.sync_weights does).
            state_ref = ray.put(state)
            self._discard_finished(_WEIGHTS_TAG)
            # A runner still busy with the previous broadcast skips this one (its slot is
            # full) and gets the next: stale by one broadcast, never blocking the learner.
            group.foreach_env_runner_async(
                "set_state", tag=_WEIGHTS_TAG, kwargs={"state": state_ref}
            )
            # The driver's env runner holds the weights for algo.get_module(), evaluation in
            # the driver and for syncing restarted runners (Algorithm.restore_env_runners).
            if group.local_env_runner is not None:
                group.local_env_runner.set_state(state)
        self.updates_since_broadcast = 0
        self.num_broadcasts += 1

    # ---- faults -------------------------------------------------------------------------------

    def restore_env_runners(self, env_runner_group: Any) -> list[int]:
        """Brings restarted runners back without waiting for them; returns their ids.

        RLlib's ``Algorithm.restore_env_runners`` pings unhealthy runners and waits up to
        ``env_runner_health_probe_timeout_s`` (30 s) for the answer, which would stall the
        learner while Ray restarts an actor. Here the ping is an async request like the
        samples: a runner is back once its ping has answered, and is then synced with the
        latest weights and its epsilon before any new sample request reaches it.
        """
        algo = self.algo
        # EnvRunnerGroup numbers its remote runners 1..N (FaultTolerantActorManager init_id=1).
        healthy = set(env_runner_group.healthy_env_runner_ids())
        unhealthy = [
            runner_id
            for runner_id in range(1, env_runner_group.num_remote_env_runners() + 1)
            if runner_id not in healthy
        ]
        # One ping at a time: Ray 2.60 answers a restarting actor's calls at once with
        # ActorUnavailableError, so pings are resent until one gets through.
        if unhealthy and env_runner_group.num_in_flight_async_reqs(tag=_PROBE_TAG) == 0:
            env_runner_group.foreach_env_runner_async(
                "ping", tag=_PROBE_TAG, healthy_only=False, remote_worker_ids=unhealthy
            )
        restored = [
            runner_id
            for runner_id, _ in env_runner_group.fetch_ready_async_reqs(
                tags=_PROBE_TAG, timeout_seconds=0.0, mark_healthy=True
            )
        ]
        if not restored:
            return []
        algo._counters["total_num_restored_workers"] += len(restored)
        local = env_runner_group.local_env_runner
        if local is not None:
            env_runner_group.foreach_env_runner_async(
                "set_state",
                tag=_RESTORE_TAG,
                kwargs={"state": ray.put(local.get_state())},
                remote_worker_ids=restored,
            )
        if algo.config.per_runner_epsilon:
            apply_runner_epsilons(env_runner_group, restored)
        algo.metrics.log_value(
            (RATE_LIMITER_RESULTS, "num_env_runners_restored"),
            len(restored),
            reduce="lifetime_sum",
        )
        return restored

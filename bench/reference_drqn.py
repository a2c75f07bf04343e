"""A single-file DRQN (CleanRL style): the plugin's correctness anchor, no Ray.

Run (from the repository root)::

    python bench/reference_drqn.py --seed 0 --out ref.json       # flickering CartPole, p = 0.5
    python bench/reference_drqn.py --env-id StatelessCartPole
    python bench/reference_drqn.py --env-id DelayedRecall --env-steps 6000 --eval-interval 500

Hausknecht & Stone (2015), https://arxiv.org/abs/1507.06527, with their "bootstrapped random
updates": windows drawn from uniformly random steps of stored episodes, unrolled from a zero
LSTM state. Every default is a knob of the plugin's small-scale reproduction
(``build_contender_config`` in ``rllib_drqn/reproduce.py``, DRQN contender): Adam lr 1e-3,
gamma 0.99, 3-step double-Q targets, Huber loss, gradients clipped to a global norm of 10, a
target copy every 500 env steps, learning from 1,000 env steps, epsilon 1 -> 0.02 over a sixth
of the budget, 50k steps of replay, one update of 32 windows of 10 trained steps per 4 env
steps, 30k env steps, and 10 evaluation episodes at epsilon 0.05 every 5k env steps (seeded as
``train_trial`` seeds them). The network is the plugin's vector one (``rllib_drqn/module.py``):
Linear(64) + ReLU, LSTM(128), one linear layer out to the Q-values.

Each window holds ``n_step - 1`` steps of lookahead past its trained steps, so every trained
step gets its full n-step target unless its episode ends first (:func:`n_step_targets`).
Where the plugin differs on purpose: replay here is one ring of steps, overwritten step by step
(RLlib evicts whole episodes); at 30k steps into 50k of replay nothing is ever evicted.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import random
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.classic_control import CartPoleEnv
from torch import nn

__all__ = ["ENV_IDS", "QNetwork", "Result", "Settings", "n_step_targets", "train"]

ENV_IDS = ("CartPole-v1", "StatelessCartPole", "DelayedRecall")
#: ``rllib_drqn.evaluate.DEFAULT_MAX_EPISODE_STEPS``: the plugin's evaluation cap on an episode.
MAX_EVAL_EPISODE_STEPS = 27_000
#: ``rllib_drqn.reproduce.SWEEP_SEED``: evaluation ``i`` of seed ``s`` plays from
#: ``SWEEP_SEED + 1000 (s + 1) + i``, as ``train_trial`` does.
SWEEP_SEED = 10_000
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


@dataclass(frozen=True)
class Settings:
    """Every knob, with the reproduction's defaults; each is a CLI flag (``--env-steps``)."""

    env_id: str = "CartPole-v1"
    #: None: 0.5 on CartPole-v1 (the reproduction's C1 task), 0 on the others.
    flicker_prob: float | None = None
    num_cues: int = 2  # DelayedRecall
    delay: int = 4  # DelayedRecall
    seed: int = 0
    env_steps: int = 30_000
    lr: float = 1e-3
    gamma: float = 0.99
    n_step: int = 3
    double_q: bool = True
    grad_clip: float = 10.0
    target_update_interval: int = 500
    learning_starts: int = 1_000  # The reproduction lowers it to env_steps // 4 below 4k.
    epsilon_final: float = 0.02
    epsilon_decay_steps: int = 0  # 0: env_steps // 6
    replay_capacity: int = 50_000
    update_interval: int = 4
    batch_size: int = 32
    seq_len: int = 10
    eval_interval: int = 5_000  # 0: no evaluation
    eval_episodes: int = 10
    eval_epsilon: float = 0.05
    fcnet_hiddens: tuple[int, ...] = (64,)
    fcnet_activation: str = "relu"
    lstm_cell_size: int = 128
    torch_threads: int = 1

    def resolved(self) -> Settings:
        """The settings checked, with ``flicker_prob`` and ``epsilon_decay_steps`` filled in."""
        if self.env_id not in ENV_IDS or self.fcnet_activation not in ACTIVATIONS:
            raise ValueError(
                f"env_id must be one of {ENV_IDS}, fcnet_activation of {sorted(ACTIVATIONS)}."
            )
        if self.env_id == "DelayedRecall" and self.flicker_prob:
            raise ValueError("DelayedRecall observes Discrete values: set flicker_prob 0.")
        flicker = self.flicker_prob
        if flicker is None:
            flicker = 0.5 if self.env_id == "CartPole-v1" else 0.0
        decay = self.epsilon_decay_steps or max(1, self.env_steps // 6)
        return dataclasses.replace(self, flicker_prob=flicker, epsilon_decay_steps=decay)


@dataclass
class Result:
    """What a run did: evaluations ``(env_steps, mean_return)``, training episodes, timing."""

    settings: Settings
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    episodes: list[tuple[int, float]] = field(default_factory=list)  # (env step at end, return)
    env_steps: int = 0
    updates: int = 0
    wall_s: float = 0.0

    @property
    def best(self) -> float | None:
        return max((mean for _, mean in self.evaluations), default=None)

    @property
    def final(self) -> float | None:
        return self.evaluations[-1][1] if self.evaluations else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": dataclasses.asdict(self.settings),
            "evaluations": self.evaluations,
            "best_evaluation": self.best,
            "final_evaluation": self.final,
            "env_steps": self.env_steps,
            "updates": self.updates,
            "training_episodes": len(self.episodes),
            "wall_s": self.wall_s,
        }


# ---- Envs: each mirrors the plugin's (rllib_drqn/envs.py) ---------------------------------------


class FlickerObservation(gym.ObservationWrapper):
    """Mirrors ``rllib_drqn.envs.FlickerObservation``: zeros with probability ``flicker_prob``.

    The coin comes from ``self.np_random``, which a wrapper takes from the env it wraps, so
    ``reset(seed=...)`` reproduces the mask (and a flicker draw moves that env's generator).
    """

    def __init__(self, env: gym.Env, flicker_prob: float) -> None:
        super().__init__(env)
        self.flicker_prob = flicker_prob

    def observation(self, observation: np.ndarray) -> np.ndarray:
        if self.np_random.random() < self.flicker_prob:
            return np.zeros_like(observation)
        return observation


class StatelessCartPole(CartPoleEnv):
    """Mirrors RLlib's example env: cart position and pole angle only; like it, no time limit."""

    def __init__(self) -> None:
        super().__init__()
        high = np.array([self.x_threshold * 2, self.theta_threshold_radians * 2], np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        obs, info = super().reset(seed=seed, options=options)
        return np.array([obs[0], obs[2]]), info

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = super().step(action)
        return np.array([obs[0], obs[2]]), reward, terminated, truncated, info


class DelayedRecall(gym.Env):
    """Mirrors ``rllib_drqn.envs.DelayedRecall``: a cue, ``delay`` blanks, a query; name the cue."""

    def __init__(self, num_cues: int = 2, delay: int = 4) -> None:
        self.num_cues, self.delay = num_cues, delay
        self.observation_space = gym.spaces.Discrete(num_cues + 2)  # cues, blank, query
        self.action_space = gym.spaces.Discrete(num_cues)
        self._cue = self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        super().reset(seed=seed)
        self._cue, self._t = int(self.np_random.integers(self.num_cues)), 0
        return self._cue, {}

    def step(self, action: Any) -> Any:
        if self._t == self.delay + 1:  # The query: answer and end.
            return self.num_cues + 1, float(int(action) == self._cue), True, False, {}
        self._t += 1
        return self.num_cues + (self._t == self.delay + 1), 0.0, False, False, {}


def make_env(s: Settings) -> gym.Env:
    """The plugin's env for ``s.env_id``; Discrete observations one-hot (as its module does)."""
    if s.env_id == "DelayedRecall":
        env = DelayedRecall(s.num_cues, s.delay)
        eye = np.eye(env.observation_space.n, dtype=np.float32)
        space = gym.spaces.Box(0.0, 1.0, (len(eye),), np.float32)
        return gym.wrappers.TransformObservation(env, lambda obs: eye[obs], space)
    if s.env_id == "StatelessCartPole":  # make_stateless_cartpole: flickers if asked to.
        env = StatelessCartPole()
        return FlickerObservation(env, s.flicker_prob) if s.flicker_prob else env
    return FlickerObservation(gym.make(s.env_id), s.flicker_prob)  # FlickeringGym: always.


# ---- Network ----------------------------------------------------------------------------------


class LSTMState(NamedTuple):
    h: torch.Tensor  # [1, B, cell_size]
    c: torch.Tensor


class QNetwork(nn.Module):
    """MLP torso -> LSTM -> linear Q head: the plugin's ``_RecurrentQNet`` for vectors."""

    def __init__(self, obs_size: int, num_actions: int, s: Settings) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in s.fcnet_hiddens:
            layers += [nn.Linear(obs_size, width), ACTIVATIONS[s.fcnet_activation]()]
            obs_size = width
        self.torso = nn.Sequential(*layers)
        self.lstm = nn.LSTM(obs_size, s.lstm_cell_size, batch_first=True)
        self.head = nn.Linear(s.lstm_cell_size, num_actions)

    def forward(
        self, obs: torch.Tensor, state: LSTMState | None = None
    ) -> tuple[torch.Tensor, LSTMState]:
        """Q-values ``[B, T, A]`` of ``[B, T, D]`` observations; ``state`` None is zeros."""
        out, (h, c) = self.lstm(self.torso(obs), state)
        return self.head(out), LSTMState(h, c)


# ---- Replay: the steps of stored episodes, sampled as windows ---------------------------------


class Windows(NamedTuple):
    obs: torch.Tensor  # [B, W + 1, D]: o_0 .. o_W of each window
    actions: torch.Tensor  # [B, W]
    rewards: torch.Tensor  # [B, W], 0 past the window's length
    terminated: torch.Tensor  # [B, W] bool: o_{t+1} is terminal
    lengths: torch.Tensor  # [B]: steps up to the episode's end or the newest stored step


class EpisodeReplay:
    """A ring of steps; a window runs from a uniformly drawn stored step up to ``width`` steps."""

    def __init__(self, capacity: int, obs_size: int) -> None:
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.obs = np.zeros((capacity, obs_size), np.float32)
        self.next_obs = np.zeros((capacity, obs_size), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, bool)
        self.ended = np.zeros(capacity, bool)  # terminated or truncated

    def add(self, obs: Any, action: int, reward: float, next_obs: Any, term: bool, trunc: bool):
        i = self.pos
        self.obs[i], self.next_obs[i] = obs, next_obs
        self.actions[i], self.rewards[i] = action, reward
        self.terminated[i], self.ended[i] = term, term or trunc
        self.pos, self.size = (i + 1) % self.capacity, min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch_size: int, width: int) -> Windows:
        starts = rng.integers(self.size, size=batch_size)
        offsets = np.arange(width)
        idx = (starts[:, None] + offsets) % self.capacity  # [B, W]
        stored = offsets < ((self.pos - starts - 1) % self.capacity + 1)[:, None]
        ended = self.ended[idx] & stored
        # A window stops after its episode's last step, or at the newest stored step.
        valid = stored & (np.cumsum(ended, axis=1) - ended == 0)
        obs = np.concatenate([self.obs[idx[:, :1]], self.next_obs[idx]], axis=1)
        return Windows(
            torch.as_tensor(obs),
            torch.as_tensor(self.actions[idx]),
            torch.as_tensor(np.where(valid, self.rewards[idx], 0.0)),
            torch.as_tensor(valid & self.terminated[idx]),
            torch.as_tensor(valid.sum(axis=1)),
        )


# ---- Learning ---------------------------------------------------------------------------------


def n_step_targets(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    next_values: torch.Tensor,
    lengths: torch.Tensor,
    gamma: float,
    n_step: int,
    num_trained: int,
) -> torch.Tensor:
    """n-step targets ``[B, num_trained]`` of the first ``num_trained`` steps of each window.

    ``G_t = sum_{i<k} gamma^i r_{t+i} + gamma^k (1 - terminated_{t+k-1}) V(o_{t+k})`` with
    ``k = min(n_step, L - t)``: windows are ``num_trained + n_step - 1`` wide, so only an
    episode's end (or the newest stored step) shortens a horizon. A terminated step bootstraps
    nothing; a truncated one bootstraps from its final observation. ``next_values[:, j]`` is
    ``V(o_{j+1})``; rewards are 0 past ``L``. Steps ``t >= L`` get meaningless targets (mask them).
    """
    steps = torch.arange(num_trained)
    horizon = (lengths[:, None] - steps).clamp(1, n_step)  # [B, T]
    targets = torch.zeros(horizon.shape)
    for i in range(n_step):
        targets += gamma**i * (i < horizon) * rewards[:, i : i + num_trained]
    last = steps + horizon - 1  # the step whose next observation the target bootstraps from
    bootstrap = next_values.gather(1, last) * ~terminated.gather(1, last)
    return targets + gamma ** horizon.float() * bootstrap


def update(online: QNetwork, target: QNetwork, optimizer: Any, w: Windows, s: Settings) -> float:
    """One gradient step on windows unrolled from a zero state; loss on the trained steps only."""
    q, _ = online(w.obs)  # [B, W + 1, A]
    with torch.no_grad():
        next_q_target, _ = target(w.obs)
        chooser = q if s.double_q else next_q_target
        best = chooser[:, 1:].argmax(dim=-1, keepdim=True)
        next_values = next_q_target[:, 1:].gather(-1, best).squeeze(-1)  # V(o_{t+1}), [B, W]
        targets = n_step_targets(
            w.rewards, w.terminated, next_values, w.lengths, s.gamma, s.n_step, s.seq_len
        )
    taken = q[:, : s.seq_len].gather(-1, w.actions[:, : s.seq_len, None]).squeeze(-1)
    mask = (torch.arange(s.seq_len) < w.lengths[:, None]).float()
    loss = (nn.functional.huber_loss(taken, targets, reduction="none") * mask).sum() / mask.sum()
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(online.parameters(), s.grad_clip)
    optimizer.step()
    return float(loss.detach())


def greedy(net: QNetwork, obs: Any, state: LSTMState | None) -> tuple[int, LSTMState]:
    with torch.no_grad():
        q, state = net(torch.as_tensor(obs, dtype=torch.float32)[None, None], state)
    return int(q.argmax()), state


def evaluate(net: QNetwork, env: gym.Env, s: Settings, seed: int) -> float:
    """Mean return, played as ``rllib_drqn.evaluate.play_episodes`` plays (same seeding)."""
    rng, returns = np.random.default_rng(seed), []
    for episode in range(s.eval_episodes):
        (obs, _), state, done, total = env.reset(seed=seed + episode), None, False, 0.0
        while not done:
            action, state = greedy(net, obs, state)
            if rng.random() < s.eval_epsilon:
                action = int(rng.integers(env.action_space.n))
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def train(settings: Settings, stop: Callable[[Result], bool] | None = None) -> Result:
    """Trains one seed; ``stop(result)``, asked after every env step, may end it early."""
    s = settings.resolved()
    torch.set_num_threads(s.torch_threads)
    random.seed(s.seed)
    np.random.seed(s.seed)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    env = make_env(s)
    eval_env = gym.wrappers.TimeLimit(make_env(s), MAX_EVAL_EPISODE_STEPS)
    env.action_space.seed(s.seed)
    obs_size, num_actions = env.observation_space.shape[0], int(env.action_space.n)
    online = QNetwork(obs_size, num_actions, s)
    target = copy.deepcopy(online)
    optimizer = torch.optim.Adam(online.parameters(), lr=s.lr)
    replay = EpisodeReplay(s.replay_capacity, obs_size)
    result, started = Result(s), time.perf_counter()

    obs, _ = env.reset(seed=s.seed)
    state, episode_return = None, 0.0
    for step in range(1, s.env_steps + 1):
        fraction = min(1.0, (step - 1) / s.epsilon_decay_steps)
        epsilon = 1.0 + fraction * (s.epsilon_final - 1.0)
        action, state = greedy(online, obs, state)  # The LSTM sees every frame.
        if rng.random() < epsilon:
            action = int(env.action_space.sample())
        next_obs, reward, terminated, truncated, _ = env.step(action)
        replay.add(obs, action, float(reward), next_obs, terminated, truncated)
        episode_return += float(reward)
        obs = next_obs
        if terminated or truncated:
            result.episodes.append((step, episode_return))
            (obs, _), state, episode_return = env.reset(), None, 0.0

        if step >= s.learning_starts and step % s.update_interval == 0:
            windows = replay.sample(rng, s.batch_size, s.seq_len + s.n_step - 1)
            update(online, target, optimizer, windows, s)
            result.updates += 1
        if step >= s.learning_starts and step % s.target_update_interval == 0:
            target.load_state_dict(online.state_dict())
        result.env_steps, result.wall_s = step, time.perf_counter() - started
        if s.eval_interval and (step % s.eval_interval == 0 or step == s.env_steps):
            index = step // s.eval_interval
            mean = evaluate(online, eval_env, s, SWEEP_SEED + 1_000 * (s.seed + 1) + index)
            result.evaluations.append((step, mean))
            result.wall_s = time.perf_counter() - started
            print(
                f"env steps {step:>7,}: eval return {mean:8.2f}  (epsilon {epsilon:.3f}, "
                f"{result.updates:,} updates, {result.wall_s:.0f} s)",
                flush=True,
            )
        if stop is not None and stop(result):
            break
    return result


def parse_args(argv: list[str] | None = None) -> tuple[Settings, str | None]:
    """One flag per :class:`Settings` field, plus ``--out FILE``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = next(
            t for t in (*typing.get_args(hints[f.name]), hints[f.name]) if t is not type(None)
        )
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif isinstance(f.default, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=list(f.default))
        else:
            choices = ENV_IDS if f.name == "env_id" else None
            parser.add_argument(flag, type=kind, default=f.default, choices=choices)
    parser.add_argument("--out", help="Write the result as JSON to this file.")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    args["fcnet_hiddens"] = tuple(args["fcnet_hiddens"])
    return Settings(**args), out


def main(argv: list[str] | None = None) -> int:
    settings, out = parse_args(argv)
    result = train(settings)
    print(f"best {result.best}, final {result.final}, {result.wall_s:.1f} s")
    if out:
        with open(out, "w", encoding="utf-8") as file:
            json.dump(result.as_dict(), file, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

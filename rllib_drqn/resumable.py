"""What Tune cannot know about a DRQN run: its replay and the sequential cursors, in the state.

Tune keeps the bookkeeping of a long run (which checkpoints exist, the newest complete one,
the trial's iteration and time counters); RLlib's ``Algorithm.get_state()`` holds the weights,
optimizer and target net, and the env runners' lifetime step counter, from which the epsilon
schedule reads its position (``SingleAgentEnvRunner.get_state`` stores
``num_env_steps_sampled_lifetime`` and ``_sample`` passes it to ``forward_exploration`` as
``t``). What neither holds in RLlib 2.60 is the replay:

- ``store_buffer_in_checkpoints=True`` (a ``DQNConfig.training()`` setting) does nothing on
  the new API stack: only the old stack's ``Algorithm.__getstate__`` reads it, so the replay
  always comes back empty. :class:`ReplayCheckpointing` puts the buffer into
  ``Algorithm.get_state()`` (and so into ``algorithm_state.pkl``) when the setting is on, and
  restores it in ``set_state()``;
- the buffer's own ``get_state()`` leaves out DRQN's sampling state: the random generator and
  the cursors of ``update_mode="sequential"``, which are saved next to it here.

This module imports only ``rllib_drqn.replay``, so ``rllib_drqn.config`` (which mixes the class
into ``DRQN``) and ``rllib_drqn.checkpoints`` (which reads checkpoints) depend on it and not
on each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any, Final

from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.utils.annotations import override
from ray.rllib.utils.typing import StateDict

from rllib_drqn.replay import _Cursor  # The buffer's own record; replay imports no plugin.

__all__ = ["REPLAY_STATE_KEY", "SAMPLING_STATE_KEY", "ReplayCheckpointing"]

#: Key of the replay buffer's state in ``Algorithm.get_state()``: the old API stack's name.
REPLAY_STATE_KEY: Final[str] = "local_replay_buffer"
#: Key of DRQN's sampling state (random generator, sequential cursors) next to it.
SAMPLING_STATE_KEY: Final[str] = "drqn_replay_sampling"


class ReplayCheckpointing:
    """Algorithm mixin: with ``store_buffer_in_checkpoints=True`` the replay is checkpointed.

    Mix in before RLlib's algorithm class (``class DRQN(ReplayCheckpointing, DQN)``). The
    buffer's own ``get_state()`` (RLlib's: every stored episode, its index and counters) goes
    under :data:`REPLAY_STATE_KEY` into the algorithm's state, which ``save_to_path`` writes to
    ``algorithm_state.pkl``; ``set_state`` rebuilds the buffer from it. DRQN's buffers
    (``rllib_drqn.replay``) also have a random generator and, in sequential mode, one cursor
    per sequence slot; both go under :data:`SAMPLING_STATE_KEY`, so a resumed run draws the
    same chunks the uninterrupted one would have. A cursor whose episode is not in the
    restored buffer restarts, as after any eviction.

    The cost is the replay itself, pickled: the observations dominate (84x84 uint8 frames are
    7 KB a step, so a 100k-step Atari replay adds about 0.7 GB and its save time to every
    checkpoint). See the README's "Long runs" section for measured numbers.
    """

    config: Any
    local_replay_buffer: Any

    @override(Algorithm)
    def get_state(
        self,
        components: str | Collection[str] | None = None,
        *,
        not_components: str | Collection[str] | None = None,
        **kwargs: Any,
    ) -> StateDict:
        state = super().get_state(components, not_components=not_components, **kwargs)
        buffer = self.local_replay_buffer
        if (
            buffer is not None
            and self.config.get("store_buffer_in_checkpoints")
            and self._check_component(REPLAY_STATE_KEY, components, not_components)
        ):
            state[REPLAY_STATE_KEY] = buffer.get_state()
            sampling = _sampling_state(buffer)
            if sampling is not None:
                state[SAMPLING_STATE_KEY] = sampling
        return state

    @override(Algorithm)
    def set_state(self, state: StateDict) -> None:
        super().set_state(state)
        if REPLAY_STATE_KEY in state and self.local_replay_buffer is not None:
            # RLlib's `set_state` keeps the episodes of a non-empty buffer but replaces their
            # index; a fresh buffer makes restoring into a running algorithm safe too.
            self.local_replay_buffer = self._create_local_replay_buffer_if_necessary(self.config)
            self.local_replay_buffer.set_state(state[REPLAY_STATE_KEY])
            if SAMPLING_STATE_KEY in state:
                _set_sampling_state(self.local_replay_buffer, state[SAMPLING_STATE_KEY])


def _sampling_state(buffer: Any) -> dict[str, Any] | None:
    """The generator and cursors of a ``rllib_drqn.replay`` buffer; ``None`` for RLlib's own.

    Read through the attributes ``_SequenceSampling`` keeps (``rng``, ``_cursors``): the
    buffer's ``get_state`` is RLlib's and does not know them.
    """
    rng = getattr(buffer, "rng", None)
    cursors = getattr(buffer, "_cursors", None)
    if rng is None or cursors is None:
        return None
    return {
        "rng": rng.bit_generator.state,
        "cursors": [None if cursor is None else dataclasses.asdict(cursor) for cursor in cursors],
    }


def _set_sampling_state(buffer: Any, sampling: dict[str, Any]) -> None:
    if getattr(buffer, "rng", None) is None or not hasattr(buffer, "_cursors"):
        return
    buffer.rng.bit_generator.state = sampling["rng"]
    buffer._cursors = [
        None if cursor is None else _Cursor(**cursor) for cursor in sampling["cursors"]
    ]

"""DRQN's learner: RLlib's DQN torch learner plus the state carry of sequential updates.

The loss is RLlib's own (``DQNTorchLearner.compute_loss_for_module``: double-Q, Huber, the
sequence loss mask and its burn-in columns). What DRQN adds is the paper's *bootstrapped
sequential* update: the LSTM state the forward pass over one chunk of an episode ends with is
the initial state of that episode's next chunk. The buffer
(``rllib_drqn.replay.DRQNEpisodeReplayBuffer``) tags each chunk with its cursor slot and start
step; a learner-connector piece puts the carried state into the batch, and ``compute_losses``
keeps the states the forward pass ended with. Both run in the learner process, which is why the
carry lives here and not in the buffer (the states are torch tensors on the learner's device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner
from ray.rllib.connectors.common.numpy_to_tensor import NumpyToTensor
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.utils.annotations import override

from rllib_drqn.module import TARGET_STATE_IN
from rllib_drqn.replay import SEQ_SLOT, SEQ_START

__all__ = ["DRQNTorchLearner", "SequentialStateCarry"]


@dataclass
class _CarriedState:
    """The states one slot's last chunk ended with, valid for a chunk starting at ``start``."""

    start: int
    online: dict[str, np.ndarray]
    target: dict[str, np.ndarray]


class SequentialStateCarry(ConnectorV2):
    """Learner-connector piece: each chunk starts from the state its predecessor ended with.

    A chunk whose episode starts at t=0 starts from zero (the module's initial state). A chunk
    that continues an episode whose state is not at hand (after a restore, say) also starts
    from zero; ``num_restarted_from_zero`` counts those.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._carried: dict[str, dict[int, _CarriedState]] = {}
        self.num_restarted_from_zero = 0

    @override(ConnectorV2)
    def __call__(self, *, batch: dict[str, Any], **kwargs: Any) -> Any:
        for module_id, module_batch in batch.items():
            if SEQ_SLOT not in module_batch:
                continue
            slots = np.asarray(module_batch[SEQ_SLOT])[:, 0].astype(int)
            starts = np.asarray(module_batch[SEQ_START])[:, 0].astype(int)
            online = {k: np.array(v, copy=True) for k, v in module_batch[Columns.STATE_IN].items()}
            target = {k: np.zeros_like(v) for k, v in online.items()}
            for row, (slot, start) in enumerate(zip(slots, starts, strict=True)):
                for state in (online, target):
                    for value in state.values():
                        value[row] = 0.0
                if start == 0:
                    continue
                carried = self._carried.get(module_id, {}).get(slot)
                if carried is None or carried.start != start:
                    self.num_restarted_from_zero += 1
                    continue
                for key in online:
                    online[key][row] = carried.online[key]
                    target[key][row] = carried.target[key]
            module_batch[Columns.STATE_IN] = online
            module_batch[TARGET_STATE_IN] = target
        return batch

    def remember(self, fwd_out: dict[str, Any], batch: dict[str, Any]) -> None:
        """Keeps the final states of full-length chunks, keyed by slot and next start step."""
        for module_id, module_batch in batch.items():
            if SEQ_SLOT not in module_batch or module_id not in fwd_out:
                continue
            slots = module_batch[SEQ_SLOT][:, 0].long().tolist()
            starts = module_batch[SEQ_START][:, 0].long().tolist()
            seq_len = module_batch[SEQ_SLOT].shape[1]
            full = module_batch[Columns.LOSS_MASK].all(dim=1).tolist()
            online = _to_numpy(fwd_out[module_id][Columns.STATE_OUT])
            target = _to_numpy(fwd_out[module_id][Columns.NEXT_STATE_OUT])
            self._carried[module_id] = {
                slot: _CarriedState(
                    start + seq_len,
                    {k: v[row] for k, v in online.items()},
                    {k: v[row] for k, v in target.items()},
                )
                for row, (slot, start, is_full) in enumerate(zip(slots, starts, full, strict=True))
                if is_full
            }


def _to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


class DRQNTorchLearner(DQNTorchLearner):
    """``DQNTorchLearner`` with the sequential-update state carry switched on by config."""

    @override(DQNTorchLearner)
    def build(self) -> None:
        super().build()
        self.state_carry: SequentialStateCarry | None = None
        if getattr(self.config, "update_mode", "random") == "sequential":
            self.state_carry = SequentialStateCarry()
            # After batching (rows are final, one per chunk), before tensors are made.
            self._learner_connector.insert_before(NumpyToTensor, self.state_carry)

    @override(DQNTorchLearner)
    def compute_losses(self, *, fwd_out: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
        losses = super().compute_losses(fwd_out=fwd_out, batch=batch)
        if self.state_carry is not None:
            self.state_carry.remember(fwd_out, batch)
        return losses

"""DRQN's learner: RLlib's DQN torch learner, a non-finite guard and the sequential state carry.

The loss is RLlib's own (``DQNTorchLearner.compute_loss_for_module``: double-Q, Huber, the
sequence loss mask and its burn-in columns). DRQN adds two things, and puts its one-pass
batching (``rllib_drqn.batching.AddSequencesToBatch``) in place of RLlib's default
learner-connector pieces.

A non-finite guard: RLlib 2.60 turns NaN/inf gradients into zeros with a log warning
(``TorchLearner.apply_gradients``) and keeps going, so a diverging run trains on garbage for
hours. Here the Q-values, the loss and the gradients of every update are checked before the
optimizer step; the first non-finite one raises ``FloatingPointError`` naming the quantity, the
update number and the settings to change, and the weights stay as the last good update left
them.

The paper's *bootstrapped sequential* update: the LSTM state the forward pass over one chunk
of an episode ends with is the initial state of that episode's next chunk. The buffer
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
from ray.rllib.algorithms.dqn.default_dqn_rl_module import (
    QF_NEXT_PREDS,
    QF_PREDS,
    QF_TARGET_NEXT_PREDS,
)
from ray.rllib.algorithms.dqn.dqn_learner import QF_LOSS_KEY, QF_MEAN_KEY
from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner
from ray.rllib.connectors.common.numpy_to_tensor import NumpyToTensor
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import TD_ERROR_KEY
from ray.rllib.utils.typing import ModuleID, ParamDict

from rllib_drqn.batching import use_sequence_batching
from rllib_drqn.losses import sequence_td_loss
from rllib_drqn.module import TARGET_STATE_IN
from rllib_drqn.replay import LOOKAHEAD, SEQ_SLOT, SEQ_START, lookahead_steps

__all__ = ["DRQNTorchLearner", "SequentialStateCarry", "trained_steps"]


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

    def remember(self, fwd_out: dict[str, Any], batch: dict[str, Any], seq_len: int) -> None:
        """Keeps the states after full ``seq_len``-step chunks, keyed by slot and next start.

        The module returns the states after a chunk's ``seq_len`` trained steps, before its
        lookahead steps (which are the next chunk's first ones).
        """
        for module_id, module_batch in batch.items():
            if SEQ_SLOT not in module_batch or module_id not in fwd_out:
                continue
            slots = module_batch[SEQ_SLOT][:, 0].long().tolist()
            starts = module_batch[SEQ_START][:, 0].long().tolist()
            chunk_steps = trained_steps(module_batch, burn_in_len=0).sum(dim=1)
            full = (chunk_steps == seq_len).tolist()
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


#: What each checked quantity is, for the error message.
_CHECKED_QUANTITIES = {
    QF_PREDS: "the online Q-values",
    QF_TARGET_NEXT_PREDS: "the target network's Q-values",
    QF_LOSS_KEY: "the TD loss",
}


class DRQNTorchLearner(DQNTorchLearner):
    """``DQNTorchLearner`` plus the non-finite guard, sequential state carry, one-pass batching."""

    @override(DQNTorchLearner)
    def build(self) -> None:
        super().build()
        #: Updates started by this learner (the guard's error names the one that diverged).
        self.num_updates = 0
        self.state_carry: SequentialStateCarry | None = None
        if self._learner_connector is not None:
            # As many lookahead steps as replay gives each window.
            lookahead = lookahead_steps(self.config.n_step)
            use_sequence_batching(self._learner_connector, lookahead=lookahead)
        if getattr(self.config, "update_mode", "random") == "sequential":
            self.state_carry = SequentialStateCarry()
            # After batching (rows are final, one per chunk), before tensors are made.
            self._learner_connector.insert_before(NumpyToTensor, self.state_carry)

    @override(DQNTorchLearner)
    def compute_losses(self, *, fwd_out: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
        self.num_updates += 1
        losses = super().compute_losses(fwd_out=fwd_out, batch=batch)
        if self.state_carry is not None:
            self.state_carry.remember(fwd_out, batch, self.config.max_seq_len)
        return losses

    @override(DQNTorchLearner)
    def compute_loss_for_module(
        self,
        *,
        module_id: ModuleID,
        config: Any,
        batch: dict[str, Any],
        fwd_out: dict[str, Any],
    ) -> torch.Tensor:
        if config.n_step > 1 or getattr(config, "value_rescaling", False):
            loss = self._sequence_loss(module_id, config, batch, fwd_out)
        else:
            loss = super().compute_loss_for_module(
                module_id=module_id, config=config, batch=batch, fwd_out=fwd_out
            )
        checked = {key: fwd_out[key] for key in (QF_PREDS, QF_TARGET_NEXT_PREDS) if key in fwd_out}
        checked[QF_LOSS_KEY] = loss
        # One device sync per update; the details are only worked out on failure.
        if not bool(torch.stack([torch.isfinite(t).all() for t in checked.values()]).all()):
            found = [_describe_non_finite(key, value) for key, value in checked.items()]
            self._raise_diverged(module_id, [text for text in found if text])
        return loss

    def _sequence_loss(
        self, module_id: ModuleID, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        """R2D2's loss: n-step targets inside each sequence, optionally value-rescaled.

        RLlib's loss only knows 1-step targets for sequences (its replay asserts
        ``n_step == 1`` when it samples them), hence this branch; ``rllib_drqn.losses`` holds
        the arithmetic.
        """
        valid = batch[Columns.LOSS_MASK].bool()
        trained = trained_steps(batch, burn_in_len=config.burn_in_len)
        loss, td_error, q_selected = sequence_td_loss(
            q_values=fwd_out[QF_PREDS],
            next_online_q=fwd_out.get(QF_NEXT_PREDS) if config.double_q else None,
            next_target_q=fwd_out[QF_TARGET_NEXT_PREDS],
            actions=batch[Columns.ACTIONS],
            rewards=batch[Columns.REWARDS],
            terminateds=batch[Columns.TERMINATEDS],
            valid=valid,
            trained=trained,
            weights=batch["weights"],
            gamma=config.gamma,
            n_step=config.n_step,
            huber=config.td_error_loss_fn == "huber",
            rescale_eps=config.value_rescaling_epsilon if config.value_rescaling else None,
        )
        # Per-step TD errors (zero off the trained steps) feed the replay priorities, as
        # DQNTorchLearner logs them.
        self.metrics.log_value(key=(module_id, TD_ERROR_KEY), value=td_error, reduce="item_series")
        self.metrics.log_dict(
            {QF_LOSS_KEY: loss, QF_MEAN_KEY: q_selected[trained].mean()},
            key=module_id,
            window=1,
        )
        return loss

    @override(DQNTorchLearner)
    def apply_gradients(self, gradients_dict: ParamDict) -> None:
        """Refuses non-finite gradients, which RLlib would zero and step on regardless.

        Once this check passed, RLlib's own two per-tensor checks in
        ``TorchLearner.apply_gradients`` (when setting the gradients and again before
        ``optim.step()``) have nothing left to find; ``DRQNConfig`` sets
        ``torch_skip_nan_gradients=True``, which in Ray 2.60 does nothing but skip them.
        """
        grads = [grad for grad in gradients_dict.values() if grad is not None]
        if grads and not _all_finite(grads):
            names = {
                self.get_param_ref(param): f"{module_id}:{name}"
                for module_id, module in self.module.items()
                for name, param in module.named_parameters()
            }
            bad = [
                names.get(ref, str(ref))
                for ref, grad in gradients_dict.items()
                if grad is not None and not torch.isfinite(grad).all()
            ]
            self._raise_diverged(
                None,
                [f"the gradients of {len(bad)} of {len(grads)} parameter tensors ({bad[0]}, ...)"],
            )
        super().apply_gradients(gradients_dict)

    def _raise_diverged(self, module_id: ModuleID | None, found: list[str]) -> None:
        where = f" (module {module_id!r})" if module_id is not None else ""
        lr = self.config.lr
        lr_text = f"{lr:g}" if isinstance(lr, int | float) else repr(lr)
        raise FloatingPointError(
            f"{'; '.join(found)} at learner update {self.num_updates}{where}: training "
            f"diverged, so it stops here, before the optimizer step (the weights are those of "
            f"update {self.num_updates - 1}). Lower lr (now {lr_text}) or clip gradients with "
            f"grad_clip (now {self.config.grad_clip}), e.g. "
            "config.training(lr=1e-4, grad_clip=10.0), and restart from the last checkpoint."
        )


def trained_steps(batch: dict[str, Any], *, burn_in_len: int) -> torch.Tensor:
    """``[B, T]`` bool: the steps that carry loss.

    Those are a window's valid steps (``LOSS_MASK``) past its first ``burn_in_len`` and before
    its n-step lookahead (``LOOKAHEAD``), which only completes the trained steps' targets.
    """
    trained = batch[Columns.LOSS_MASK].bool().clone()
    trained[:, :burn_in_len] = False
    if LOOKAHEAD in batch:
        trained &= ~torch.as_tensor(batch[LOOKAHEAD]).bool()
    return trained


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every value is finite, from one fused norm over all tensors.

    A NaN or inf anywhere makes the total norm non-finite. This reads each gradient once
    (measured ~1 ms for Pong's 7.5M parameters on one CPU thread) where ``torch.isfinite``
    per tensor also writes a mask of the same size (~17 ms). Only when the norm itself is
    not finite, which a finite tensor can also cause by overflowing it, is each tensor
    checked exactly.
    """
    if bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors))):
        return True
    return all(bool(torch.isfinite(tensor).all()) for tensor in tensors)


def _describe_non_finite(key: str, value: torch.Tensor) -> str:
    """``"qf_loss is nan"`` or ``"qf_preds (the online Q-values) hold 3 nan, 5 inf"``."""
    nan = int(torch.isnan(value).sum())
    inf = int(torch.isinf(value).sum())
    if not (nan or inf):
        return ""
    if value.numel() == 1:
        return f"{key} ({_CHECKED_QUANTITIES[key]}) is {'nan' if nan else 'inf'}"
    counts = ", ".join(f"{n} {kind}" for n, kind in ((nan, "nan"), (inf, "inf")) if n)
    return f"{key} ({_CHECKED_QUANTITIES[key]}) holds {counts} of {value.numel()} values"

"""nnU-Net v2 trainer subclasses for the HaN-Seg OAR model (installed into nnunetv2 by ``training.install_trainers``).

This module is linked or copied into the installed ``nnunetv2/training/nnUNetTrainer/`` package as
``hanseg_trainers.py``, because nnU-Net finds trainers by class name inside that package (both ``nnUNetv2_train -tr``
and its predictor). It must therefore import nothing from this project: only torch, numpy and nnunetv2.

None of these trainers changes network construction: the network is rebuilt from plans.json alone at inference.

Trainers
--------
``nnUNetTrainerModalityDropout``
    nnU-Net's default recipe plus modality dropout: each training sample's T1-derived channels (channel 1, or every
    ``"source": "T1"`` channel of dataset.json's ``channel_recipes``) are replaced by zeros together with probability
    ``p_drop_mr``, otherwise its CT-derived channels (channel 0, or every ``"source": "CT"`` one: e.g. the soft and
    bone windows) with probability ``p_drop_ct`` (never both).
    Zeros are what the network sees at inference for an unusable MR: the T1 channel is then written as zeros, and
    nnU-Net's z-score of an all-zero image is all zeros. Channels are in the (already normalised) batch tensor of
    shape (B, C, [Z,] Y, X).

``nnUNetTrainerCPU``
    The recipe that learns on 2 CPU cores (training/README.md has the measurements): modality dropout, AdamW
    (lr 1e-3, weight decay 1e-4) with a linear warm-up then polynomial decay, 30 short epochs (100 iterations, 10
    validation iterations) with a checkpoint after every epoch, 66 % foreground oversampling, no mirroring (the
    labels are lateralised: Parotid_L/R), and inference mirroring disabled. ``nnUNetTrainerCPU_<N>ep`` variants
    only change the number of epochs (and so the schedule): pick the class name, not an environment variable, so
    a resumed run keeps its schedule.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class WarmupPolyLRScheduler(torch.optim.lr_scheduler._LRScheduler):
    """Linear warm-up from ``initial_lr / 10`` over ``warmup_steps`` steps, then ``initial_lr * (1 - t) ** 0.9``.

    Stepped once per epoch with the epoch index, like nnU-Net's PolyLRScheduler.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, max_steps: int, warmup_steps: int,
                 exponent: float = 0.9, current_step: int | None = None):
        self.optimizer = optimizer
        self.initial_lr = initial_lr
        self.max_steps = max_steps
        self.warmup_steps = warmup_steps
        self.exponent = exponent
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.initial_lr * (0.1 + 0.9 * step / max(1, self.warmup_steps))
        t = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return self.initial_lr * max(0.0, 1 - t) ** self.exponent

    def step(self, current_step: int | None = None) -> None:  # type: ignore[override]
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.lr_at(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr


class nnUNetTrainerModalityDropout(nnUNetTrainer):
    """Default nnU-Net recipe + modality dropout (MR channel dropped with ``p_drop_mr``, else CT with ``p_drop_ct``)."""

    p_drop_mr: float = 0.3
    p_drop_ct: float = 0.05
    ct_channel: int = 0
    mr_channel: int = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._dropout_rng = np.random.default_rng()
        if self.device.type == "cpu":
            # nnUNetv2_train sets torch threads = all cores. On a shared 2-core machine two OpenMP threads wait on
            # each other whenever one is descheduled: measured 4.2 s vs 0.8 s per iteration (training/README.md).
            threads = int(os.environ.get("HANSEG_TORCH_THREADS", "1"))
            torch.set_num_threads(threads)
            self.print_to_log_file(f"CPU training with {threads} torch thread(s) (HANSEG_TORCH_THREADS)")

    def apply_modality_dropout(self, data: torch.Tensor) -> torch.Tensor:
        """Zero whole channel GROUPS per sample, in place: every MR-derived channel together, else every CT-derived
        one (``dropout_channel_groups``; channel 0 = CT, 1 = T1 without recipes). ``data``: (B, C, *spatial)."""
        ct, mr = dropout_channel_groups(self.dataset_json, data.shape[1], (self.ct_channel,), (self.mr_channel,))
        if not ct or not mr:
            return data
        for b in range(data.shape[0]):
            r = self._dropout_rng.random()
            if r < self.p_drop_mr:
                data[b, list(mr)] = 0
            elif r < self.p_drop_mr + self.p_drop_ct:
                data[b, list(ct)] = 0
        return data

    def train_step(self, batch: dict) -> dict:
        batch["data"] = self.apply_modality_dropout(batch["data"])
        return super().train_step(batch)


class nnUNetTrainerCPU(nnUNetTrainerModalityDropout):
    """The CPU recipe (see module docstring and training/README.md)."""

    recipe_epochs: int = 30
    recipe_iterations: int = 100
    recipe_val_iterations: int = 10
    recipe_lr: float = 1e-3
    recipe_weight_decay: float = 1e-4
    recipe_warmup_epochs: int = 2
    recipe_oversample: float = 0.66

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.recipe_epochs
        self.num_iterations_per_epoch = self.recipe_iterations
        self.num_val_iterations_per_epoch = self.recipe_val_iterations
        self.initial_lr = self.recipe_lr
        self.weight_decay = self.recipe_weight_decay
        self.oversample_foreground_percent = self.recipe_oversample
        self.save_every = 1  # checkpoint_latest.pth after every (short) epoch: resumable with --c

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, self.recipe_warmup_epochs)
        return optimizer, scheduler

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        # Lateralised labels (Parotid_L/R): no mirroring in training, none at inference (None = nnU-Net's "off").
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None


class nnUNetTrainerCPU_SGD(nnUNetTrainerCPU):
    """Trial: the CPU recipe with nnU-Net's SGD (momentum 0.99, nesterov) at a higher lr 0.03 and warm-up."""

    recipe_lr = 3e-2
    recipe_weight_decay = 3e-5

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, self.recipe_warmup_epochs)
        return optimizer, scheduler


class nnUNetTrainerCPU_3ep(nnUNetTrainerCPU):
    """Smoke runs: 3 epochs of 5 iterations."""

    recipe_epochs = 3
    recipe_iterations = 5
    recipe_val_iterations = 2
    recipe_warmup_epochs = 1


class nnUNetTrainerCPU_120ep(nnUNetTrainerCPU):
    """Longer schedule (120 x 100 iterations)."""

    recipe_epochs = 120


class nnUNetTrainerCPU_ft(nnUNetTrainerCPU):
    """Continuation of a finished nnUNetTrainerCPU fold: 40 more epochs at a lower peak lr 5e-4, 1-epoch warm-up.

    (Planned as 60 epochs; shortened to 40 at epoch 15 of the shipped run to fit a session's CPU time. The poly
    schedule then steps from lr 3.9e-4 down to 3.3e-4 at epoch 15 and decays to 0 at epoch 40.)

    On a fold's FIRST start (epoch 0, no checkpoint) the whole network, segmentation heads included, is loaded from
    the checkpoint named by the environment variable ``HANSEG_INIT_FROM`` (e.g. ``weights/fold_0/checkpoint_final.pth``;
    nnU-Net's own ``-pretrained_weights`` skips the heads, which would throw the trained model away). The optimiser
    starts fresh. Resumes (``--c``) ignore the variable.
    """

    recipe_epochs = 40
    recipe_lr = 5e-4
    recipe_warmup_epochs = 1

    def on_train_start(self):
        super().on_train_start()
        init_from = os.environ.get("HANSEG_INIT_FROM")
        if self.current_epoch == 0 and init_from:
            checkpoint = torch.load(init_from, map_location=self.device, weights_only=False)
            self.network.load_state_dict(checkpoint["network_weights"], strict=True)
            self.print_to_log_file(f"initialised the whole network from {init_from} (HANSEG_INIT_FROM)")


def dropout_channel_groups(dataset_json: dict, n_channels: int, default_ct: tuple[int, ...] = (0,),
                           default_mr: tuple[int, ...] = (1,)) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(CT-derived, MR-derived) channel indices for modality dropout, from dataset.json's ``channel_recipes``
    (``{"0": {"source": "CT", ...}, "2": {"source": "T1"}}``, written by the converters through
    ``preprocessing.channels``); without recipes the defaults (channel 0 CT, channel 1 T1). Indices >= n_channels
    are dropped. (This module may import nothing from the project, hence the direct read of the key.)"""
    recipes = (dataset_json or {}).get("channel_recipes")
    if recipes:
        ct = tuple(sorted(int(i) for i, r in recipes.items() if r.get("source") == "CT"))
        mr = tuple(sorted(int(i) for i, r in recipes.items() if r.get("source") == "T1"))
    else:
        ct, mr = default_ct, default_mr
    return tuple(i for i in ct if i < n_channels), tuple(i for i in mr if i < n_channels)

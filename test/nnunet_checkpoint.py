"""Checkpoints written by nnU-Net v2's own trainer code (``nnUNetTrainer.save_checkpoint``), for the safe-loading tests.

:func:`write_trainer_checkpoints` builds a real ``nnUNetTrainer`` from a model folder's plans and dataset.json, runs
one optimiser step and one epoch's worth of nnU-Net's own logging hooks (numpy scalars in the logs, an SGD momentum
state, ``_best_ema``), then lets the trainer write ``checkpoint_final.pth`` for each fold exactly as
``nnUNetv2_train`` does at the end of training. Needs nnunetv2 (requirements-nnunet.txt).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch


def write_trainer_checkpoints(model_dir: Path, work_dir: Path, folds: int = 2) -> list[Path]:
    """Overwrite ``model_dir/fold_N/checkpoint_final.pth`` with checkpoints saved by ``nnUNetTrainer`` itself."""
    for name, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "pre"), ("nnUNet_results", "res")):
        os.environ.setdefault(name, str(work_dir / sub))
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = json.loads((model_dir / "plans.json").read_text())
    dataset = json.loads((model_dir / "dataset.json").read_text())
    configuration = next(iter(plans["configurations"]))
    written = []
    for fold in range(folds):
        # nnunetv2.run.run_training.get_trainer_from_args sets this key before building the trainer
        fold_plans = {**plans, "continue_training": False}
        trainer = nnUNetTrainer(fold_plans, configuration, fold, dataset, device=torch.device("cpu"))
        trainer.output_folder = str(work_dir / f"out_{fold}")
        Path(trainer.output_folder).mkdir(parents=True, exist_ok=True)
        trainer.num_input_channels = len(dataset["channel_names"])
        trainer.network = trainer.build_network_architecture(
            trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
            trainer.label_manager.num_segmentation_heads, False)
        trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
        trainer.was_initialized = True
        torch.manual_seed(fold)
        patch = trainer.configuration_manager.patch_size
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        trainer.network(torch.randn(1, trainer.num_input_channels, *patch)).square().mean().backward()
        trainer.optimizer.step()  # momentum buffers in the optimiser state, as after real training
        trainer.on_train_epoch_end([{"loss": np.array(0.9, np.float32)}, {"loss": np.array(0.8, np.float32)}])
        n = trainer.label_manager.num_segmentation_heads - 1
        trainer.on_validation_epoch_end([{"loss": np.array(0.7, np.float32), "tp_hard": np.arange(n) + 1.0,
                                          "fp_hard": np.ones(n), "fn_hard": np.ones(n)}])
        trainer.logger.log("epoch_end_timestamps", 1.0, trainer.current_epoch)
        trainer._best_ema = trainer.logger.get_value("ema_fg_dice", step=-1)
        path = model_dir / f"fold_{fold}" / "checkpoint_final.pth"
        path.parent.mkdir(exist_ok=True)
        trainer.save_checkpoint(str(path))
        written.append(path)
    return written

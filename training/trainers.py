"""nnU-Net v2 trainer subclasses for the HaN-Seg OAR model (installed into nnunetv2 by ``training.install_trainers``).

This module is linked or copied into the installed ``nnunetv2/training/nnUNetTrainer/`` package as
``hanseg_trainers.py``, because nnU-Net finds trainers by class name inside that package (both ``nnUNetv2_train -tr``
and its predictor). It must therefore import nothing from this project but the modules installed beside it
(``training.install_trainers``): only torch, numpy, nnunetv2 and the standard library.

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

``nnUNetTrainerCPU_partial`` and its ``_<N>ep`` / ``_round<K>`` variants
    The recipe of the shipped model: partial-label marginal loss, L/R-merged labels with mirroring, initialisation
    by label name (its docstring; training/README.md stages 3-9). ``_round3_rare`` draws training cases with
    ``rare_label_case_probabilities`` instead of uniformly.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

try:  # the installed copy inside nnunetv2 (training.install_trainers) sits beside a copy of model/cpu_heap.py
    from .hanseg_cpu_heap import keep_freed_memory
except ImportError:  # imported from the repository
    from model.cpu_heap import keep_freed_memory


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
            self.print_to_log_file(f"CPU training with {threads} torch thread(s) (HANSEG_TORCH_THREADS); "
                                   f"{keep_freed_memory().describe()}")

    def apply_modality_dropout(self, data: torch.Tensor) -> torch.Tensor:
        """Zero whole channel GROUPS per sample, in place: every MR-derived channel together, else every CT-derived
        one (``dropout_channel_groups``; channel 0 = CT, 1 = T1 without recipes). ``data``: (B, C, *spatial)."""
        ct, mr = dropout_channel_groups(getattr(self, "dataset_json", None), data.shape[1], (self.ct_channel,),
                                        (self.mr_channel,))
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


try:  # the installed copy inside nnunetv2 (training.install_trainers) sits beside its loss module
    from .hanseg_partial_label_loss import DeepSupervisedMarginalLoss, MarginalDiceCELoss
except ImportError:  # imported from the repository
    from training.partial_label_loss import DeepSupervisedMarginalLoss, MarginalDiceCELoss

AVAILABILITY_FILE = "label_availability.json"


def read_availability_masks(path: str, labels: dict[str, int]) -> dict[str, np.ndarray]:
    """Per case, a bool mask over label values (True: annotated; background always) from a
    ``label_availability.json`` (``training.label_availability``; plain JSON, read here without importing it).

    Raises:
        RuntimeError: naming the file, if its format or label table does not match the dataset's ``labels``.
    """
    import json

    with open(path) as f:
        record = json.load(f)
    if record.get("format") != 1 or record.get("labels") != labels:
        raise RuntimeError(f"{path}: format or labels do not match dataset.json ({labels})")
    n_labels = max(labels.values()) + 1
    out = {}
    for case, names in record["cases"].items():
        mask = np.zeros(n_labels, dtype=bool)
        mask[0] = True
        mask[[labels[n] for n in names]] = True
        out[case] = mask
    return out


def availability_rows(keys, annotated_by_case: dict[str, np.ndarray], n_labels: int) -> np.ndarray:  # noqa: ANN001
    """``(len(keys), n_labels)`` bool: per case (in ``keys`` order), the label values it annotates (background
    always). A case missing from ``annotated_by_case`` (``read_availability_masks``) counts as fully annotated."""
    full = np.ones(n_labels, dtype=bool)
    return np.array([annotated_by_case.get(str(k), full) for k in keys], dtype=bool).reshape(-1, n_labels)


def left_right_patch_axes(transpose_forward: list[int], patch_ndim: int) -> tuple[int, ...]:
    """The patch axis that runs patient left-right, for nnU-Net's mirroring (training and inference).

    Training cases are stored with the identity direction (LPS: numpy axis 2 = x = right -> left), so after the
    plans' ``transpose_forward`` the left-right axis is ``transpose_forward.index(2)``; a 2-D configuration's patch
    drops the first (slice) axis.
    """
    axis = list(transpose_forward).index(2) - (3 - patch_ndim)
    if axis < 0:
        raise ValueError(f"transpose_forward {transpose_forward}: the left-right axis is the 2-D slice axis")
    return (axis,)


class nnUNetTrainerCPU_partial(nnUNetTrainerCPU_ft):
    """Partial labels + L/R-merged labels: the recipe of the shipped model trained on all 203 OpenKBP cases.

    - **Partial labels**: ``label_availability.json`` (written by the converter next to dataset.json; read from the
      preprocessed dataset folder, else the raw one) lists per case the labels it annotates. The loss is the marginal
      Dice + CE (``partial_label_loss``): an OAR a case lacks is unknown, not background. Cases missing from the
      record count as fully annotated. The pseudo Dice of the online validation leaves unannotated labels out.
    - **L/R merge**: when dataset.json declares ``lr_split`` (e.g. Parotid = Parotid_L + Parotid_R), mirroring over
      the patient's left-right axis is legal: it is on in training and allowed at inference (the pipeline splits the
      merged labels by the mid-sagittal plane after export). Without ``lr_split``, no mirroring, as nnUNetTrainerCPU.
    - **Initialisation** (``HANSEG_INIT_FROM``, first start only) from a checkpoint of another label set: network
      weights are copied, and the segmentation heads' rows are matched BY NAME (init checkpoint's dataset.json
      labels); a merged label starts from the mean of its two sides' rows. A 2-D checkpoint continued in a 3-D
      configuration of the same U-Net is inflated along z (``inflate_state_dict``).
    - Schedule: 15 epochs x 100 iterations, AdamW peak lr 5e-4, 1 warm-up epoch (continuation of a trained model;
      planned as 30, cut to 20 at epoch 1 and to 15 at epoch 6 of the shipped run: 230-370 s per epoch on the
      2 cores shared with seven other jobs).
    - nnU-Net's final full validation is skipped (``HANSEG_FULL_VALIDATION=1`` runs it): with partial labels its
      Dice counts unannotated OARs as false positives, and the model card's held-out evaluation
      (``training.evaluate_heldout``) is the measurement that counts.
    """

    recipe_epochs = 15
    recipe_lr = 5e-4
    recipe_warmup_epochs = 1

    def initialize(self):
        super().initialize()
        self.annotated_by_case = self._read_availability()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get("HANSEG_FULL_VALIDATION") == "1":
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("final full validation skipped (partial labels; HANSEG_FULL_VALIDATION=1 runs it)")

    def _read_availability(self) -> dict[str, np.ndarray]:
        from nnunetv2.paths import nnUNet_raw

        candidates = [os.path.join(self.preprocessed_dataset_folder_base, AVAILABILITY_FILE)]
        if nnUNet_raw:
            candidates.append(os.path.join(nnUNet_raw, self.plans_manager.dataset_name, AVAILABILITY_FILE))
        path = next((p for p in candidates if os.path.isfile(p)), None)
        if path is None:
            self.print_to_log_file(f"no {AVAILABILITY_FILE} ({candidates}): every case counts as fully annotated")
            return {}
        out = read_availability_masks(path, self.dataset_json["labels"])
        partial = sum(1 for m in out.values() if not m.all())
        self.print_to_log_file(f"label availability from {path}: {len(out)} cases, {partial} partially annotated")
        return out

    def annotated_mask(self, keys) -> torch.Tensor:  # noqa: ANN001 - case identifiers of a batch
        n_labels = max(self.dataset_json["labels"].values()) + 1
        return torch.from_numpy(availability_rows(keys, self.annotated_by_case, n_labels)).to(self.device)

    def _build_loss(self):
        loss = MarginalDiceCELoss(batch_dice=self.configuration_manager.batch_dice, smooth=1e-5)
        if not self.enable_deep_supervision:
            return loss
        weights = np.array([1 / (2 ** i) for i in range(len(self._get_deep_supervision_scales()))])
        weights[-1] = 0
        return DeepSupervisedMarginalLoss(loss, tuple(weights / weights.sum()))

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = (
            nnUNetTrainerModalityDropout.configure_rotation_dummyDA_mirroring_and_inital_patch_size(self))
        if self.dataset_json.get("lr_split"):
            axes = left_right_patch_axes(self.plans_manager.transpose_forward,
                                         len(self.configuration_manager.patch_size))
            self.inference_allowed_mirroring_axes = axes
            return rotation, dummy_2d, initial_patch_size, axes
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None

    def _loss_on(self, output, target, keys):  # noqa: ANN001, ANN202
        return self.loss(output, target, self.annotated_mask(keys))

    def train_step(self, batch: dict) -> dict:
        batch["data"] = self.apply_modality_dropout(batch["data"])
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) else \
            target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            loss = self._loss_on(self.network(data), target, batch["keys"])
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}

    def validation_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) else \
            target.to(self.device, non_blocking=True)
        annotated = self.annotated_mask(batch["keys"])
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            output = self.network(data)
            loss = self.loss(output, target, annotated)
        if self.enable_deep_supervision:
            output, target = output[0], target[0]
        seg = output.argmax(1)
        tgt = target[:, 0].long()
        n_labels = output.shape[1]
        spatial = tuple(range(1, seg.ndim))
        tp = torch.stack([((seg == c) & (tgt == c)).sum(spatial) for c in range(1, n_labels)], 1)
        fp = torch.stack([((seg == c) & (tgt != c)).sum(spatial) for c in range(1, n_labels)], 1)
        fn = torch.stack([((seg != c) & (tgt == c)).sum(spatial) for c in range(1, n_labels)], 1)
        keep = annotated[:, 1:].to(tp.dtype)  # (B, C-1): unannotated labels say nothing about the prediction
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": (tp * keep).sum(0).cpu().numpy(),
                "fp_hard": (fp * keep).sum(0).cpu().numpy(), "fn_hard": (fn * keep).sum(0).cpu().numpy()}

    def on_train_start(self):
        init_from = os.environ.get("HANSEG_INIT_FROM")
        if init_from:  # handled here (label remapping), not by nnUNetTrainerCPU_ft's strict load
            os.environ.pop("HANSEG_INIT_FROM")
        nnUNetTrainerCPU.on_train_start(self)
        if self.current_epoch == 0 and init_from:
            state = self._remapped_init(init_from)
            target = self.network.state_dict()
            inflated = [k for k, v in state.items() if k in target and v.ndim + 1 == target[k].ndim]
            if inflated:  # a 2-D checkpoint continued as a 3-D network
                state = inflate_state_dict(state, {k: tuple(v.shape) for k, v in target.items()})
                self.print_to_log_file(f"{len(inflated)} 2-D weights inflated to 3-D (inflate_state_dict): on an "
                                       "input constant along z the network starts as the 2-D one, slice by slice")
            self.network.load_state_dict(state, strict=True)
            self.print_to_log_file(f"initialised the whole network from {init_from} (HANSEG_INIT_FROM), heads "
                                   "matched by label name")

    def _remapped_init(self, path: str) -> dict:
        import json

        checkpoint = torch.load(path, map_location=self.device, weights_only=False)
        state = checkpoint["network_weights"]
        src_json = os.path.join(os.path.dirname(os.path.dirname(path)), "dataset.json")
        with open(src_json) as f:
            src_dataset = json.load(f)
        src_labels = src_dataset["labels"]
        dst_labels = self.dataset_json["labels"]
        merged = self.dataset_json.get("lr_split", {})
        rows = []
        for name, _value in sorted(dst_labels.items(), key=lambda kv: kv[1]):
            sources = [name] if name in src_labels else merged.get(name, [name])  # merged already, or its sides
            missing = [s for s in sources if s not in src_labels]
            if missing:
                raise RuntimeError(f"{src_json}: no label {missing} to initialise {name!r} from")
            rows.append([src_labels[s] for s in sources])
        src_channels = channel_recipe_list(src_dataset)
        dst_channels = channel_recipe_list(self.dataset_json)
        channel_rows = matched_input_channels(src_channels, dst_channels)
        out = {}
        n_src = max(src_labels.values()) + 1
        for key, tensor in state.items():
            if "seg_layers" in key and tensor.shape[0] == n_src:
                tensor = torch.stack([tensor[r].mean(0) for r in rows])
            if key.endswith(FIRST_CONV_SUFFIXES) and tensor.shape[1] == len(src_channels):
                tensor = expand_input_channels(tensor, channel_rows)
            out[key] = tensor
        if any(r is None for r in channel_rows):
            self.print_to_log_file(f"input channels {dst_channels}: new channels "
                                   f"{[i for i, r in enumerate(channel_rows) if r is None]} start with zero weights "
                                   "(the initial network computes what the init checkpoint computed)")
        return out


def inflate_state_dict(state: dict[str, torch.Tensor], target_shapes: dict[str, tuple[int, ...]]
                       ) -> dict[str, torch.Tensor]:
    """A 2-D U-Net's weights as the same U-Net in 3-D (I3D-style inflation), for a 3-D run started from a 2-D model.

    Every weight whose target shape has one more (leading spatial, z) axis is inflated; the rest are copied:

    - a convolution kernel (out, in, ky, kx) -> (out, in, kz, ky, kx) with the 2-D kernel at the CENTRE z tap and
      zeros elsewhere (strided convolutions too: output slice i then reads input slice s * i);
    - a transposed convolution (in, out, ky, kx) with stride = kernel -> (in, out, kz, ky, kx) with the 2-D kernel
      copied to EVERY z tap (nearest-neighbour upsampling along z);
    - 1 x 1 heads become 1 x 1 x 1.

    On an input that is constant along z the inflated network computes exactly the 2-D network on one slice, for
    every slice (instance normalisation then sees the same statistics); on a real volume it is a close start whose
    z-context weights training learns. Tensor layout: torch's (channels..., z, y, x).

    Raises:
        ValueError: naming the key, if a weight is neither the target's shape nor inflatable to it.
    """
    out = {}
    for key, tensor in state.items():
        shape = target_shapes.get(key)
        if shape is None or tuple(tensor.shape) == shape:
            out[key] = tensor
            continue
        if tensor.ndim + 1 != len(shape) or tuple(tensor.shape[:2]) != shape[:2] or \
                tuple(tensor.shape[2:]) != shape[3:]:
            raise ValueError(f"{key}: 2-D weight {tuple(tensor.shape)} cannot be inflated to {shape}")
        kz = shape[2]
        inflated = tensor.new_zeros(shape)
        if ".transpconvs." in key:
            inflated[:, :] = tensor.unsqueeze(2)  # every z tap: nearest-neighbour along z
        else:
            inflated[:, :, kz // 2] = tensor
        out[key] = inflated
    return out


class nnUNetTrainerCPU_partial_6ep(nnUNetTrainerCPU_partial):
    """The same recipe for 6 epochs x 100 iterations (1 warm-up epoch, then poly decay to 0): the length of the
    A/B runs that fit one session on the shared 2 cores (~7-9 min per epoch with three runs at once)."""

    recipe_epochs = 6


class nnUNetTrainerCPU_partial_10ep(nnUNetTrainerCPU_partial):
    """The same recipe for 10 epochs x 100 iterations: the A/B of a 3-D configuration (``3d_fullres``, started from
    the 2-D model by ``inflate_state_dict``) against the 2-D one continued for the same iterations."""

    recipe_epochs = 10


class nnUNetTrainerCPU_partial_10ep_round2(nnUNetTrainerCPU_partial_10ep):
    """The 10-epoch recipe again, started from the shipped 3-D model (``PRETRAINED=weights``, ``CONFIG=3d_fullres``):
    1,000 more iterations per fold with the same warm-up and poly decay (stage 8). Its own class name only so that
    its run folder is not the shipped run's (``run_shipped_model.sh`` skips a fold already exported by its trainer)."""


def rare_label_case_probabilities(annotated: np.ndarray) -> np.ndarray:
    """Per training case, the probability of drawing it for a batch, so that rarely annotated labels are seen more.

    A case's weight is the sum, over the foreground labels it annotates, of ``1 / (number of the given cases that
    annotate that label)``: every label then carries the same total weight across the training set (a label that
    59 cases annotate pulls as hard as one that 168 annotate), and a case annotating several rare labels is drawn
    most. nnU-Net's loader draws uniformly; this is handed to its ``sampling_probabilities``.

    Args:
        annotated: ``(cases, labels)`` bool, the loader's cases in its order, label values with background at
            index 0, as ``availability_rows`` returns.

    Returns:
        float64 array of one probability per case, summing to 1.

    Raises:
        ValueError: if there are no cases, or no case annotates any foreground label.
    """
    if len(annotated) == 0:
        raise ValueError("no training cases")
    masks = annotated[:, 1:].astype(np.float64)
    counts = masks.sum(0)
    if not counts.any():
        raise ValueError("no training case annotates any foreground label")
    weights = masks @ np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    return weights / weights.sum()


def expected_label_exposure(probabilities: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """Per foreground label (value 1..), the probability that a drawn case annotates it (for the training log);
    ``annotated`` as for ``rare_label_case_probabilities``."""
    return probabilities @ annotated[:, 1:].astype(np.float64)


class nnUNetTrainerCPU_partial_6ep_round3(nnUNetTrainerCPU_partial_6ep):
    """The control arm of stage 9: 600 more iterations from the shipped (round-2) 3-D model, cases drawn uniformly
    (``PRETRAINED=weights``, ``CONFIG=3d_fullres``)."""


class nnUNetTrainerCPU_partial_6ep_round3_rare(nnUNetTrainerCPU_partial_6ep_round3):
    """Stage 9's treatment arm: the control, but training cases are drawn with ``rare_label_case_probabilities``
    (Esophagus_S and Larynx_SG, annotated by the fewest cases, are seen about as often as the parotids and the
    cord). Patch placement inside a case, the loss and the validation loader stay nnU-Net's / the control's."""

    def get_dataloaders(self):
        train_gen, val_gen = super().get_dataloaders()
        loader = getattr(train_gen, "generator", None) or getattr(train_gen, "data_loader", None)
        if loader is None or not hasattr(loader, "indices"):
            raise RuntimeError(f"{type(train_gen).__name__}: no nnUNetDataLoader to set sampling probabilities on")
        labels = self.dataset_json["labels"]
        annotated = availability_rows(loader.indices, self.annotated_by_case, max(labels.values()) + 1)
        probabilities = rare_label_case_probabilities(annotated)
        names = [n for n, _ in sorted(labels.items(), key=lambda kv: kv[1])][1:]
        before = expected_label_exposure(np.full(len(annotated), 1 / len(annotated)), annotated)
        after = expected_label_exposure(probabilities, annotated)
        shares = ", ".join(f"{n} {b:.2f}->{a:.2f}" for n, b, a in zip(names, before, after))
        self.print_to_log_file(f"rare-label case sampling; share of drawn cases annotating each label, uniform -> "
                               f"weighted: {shares}")
        loader.sampling_probabilities = probabilities
        if hasattr(train_gen, "restart"):  # worker processes hold copies of the loader: start them afresh
            train_gen.restart()
        return train_gen, val_gen


# --- Full-length GPU recipe for lateralised labels, and its CPU smoke variant (issue 18) -------------------------


class nnUNetTrainerNoMirroring(nnUNetTrainerModalityDropout):
    """The full-length HaN-Seg recipe for lateralised labels (16 of the 30 OARs are L/R pairs).

    nnU-Net's default schedule on a GPU (1000 epochs x 250 iterations, SGD lr 1e-2 with poly decay, Dice + CE with
    deep supervision, the default augmentation) plus modality dropout, with mirroring switched OFF in training and
    at inference: a left-right flip of a training sample would put Parotid_L's voxels where Parotid_R belongs (and
    teach the network that the two are interchangeable), and a mirrored test-time pass averages the two sides.
    The other spatial augmentations (rotation, scaling, elastic) do not swap sides and stay as nnU-Net has them.
    """

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None  # nnU-Net's "no test-time mirroring"
        return rotation, dummy_2d, initial_patch_size, None


class nnUNetTrainerNoMirroring_smoke(nnUNetTrainerNoMirroring):
    """The SAME recipe as ``nnUNetTrainerNoMirroring``, cut to minutes on a CPU for CI and dry runs.

    Only the length changes: 2 epochs x 3 iterations, 1 validation iteration, a checkpoint after every epoch.
    Optimiser, loss, augmentation, modality dropout and the mirroring policy are the full recipe's.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 1
        self.save_every = 1


FIRST_CONV_SUFFIXES = ("encoder.stages.0.0.convs.0.conv.weight", "encoder.stages.0.0.convs.0.all_modules.0.weight")
"""State-dict keys (suffixes) of the first convolution of nnU-Net's PlainConvUNet / ResidualEncoderUNet: the only
weights whose shape depends on the number of input channels (the decoder holds a second reference)."""


def channel_recipe_list(dataset_json: dict) -> list[dict]:
    """Each input channel's recipe as a dict (``channel_recipes``; without it, from the channel name as
    ``preprocessing.channels`` reads legacy folders: ``CT`` -> ``{"source": "CT"}``, a T1/MR name ->
    ``{"source": "T1"}``, anything else ``{"name": ...}``). Channel order."""
    names = dataset_json.get("channel_names") or {}
    recipes = dataset_json.get("channel_recipes")
    out = []
    for i in range(len(names)):
        if recipes:
            out.append(dict(recipes[str(i)]))
            continue
        name = str(names[str(i)])
        if name in ("CT", "ct"):
            out.append({"source": "CT"})
        elif any(k in name.lower() for k in ("t1", "mr", "mri")):
            out.append({"source": "T1"})
        else:
            out.append({"name": name})
    return out


def matched_input_channels(src: list[dict], dst: list[dict]) -> list[int | None]:
    """For each channel of ``dst``, the index of the ``src`` channel with the same recipe (first unused match), or
    None for a channel the source network never saw."""
    used: set[int] = set()
    rows: list[int | None] = []
    for recipe in dst:
        match = next((j for j, r in enumerate(src) if r == recipe and j not in used), None)
        if match is not None:
            used.add(match)
        rows.append(match)
    return rows


def expand_input_channels(weight: torch.Tensor, rows: list[int | None]) -> torch.Tensor:
    """First-convolution ``weight`` (out, in_src, *kernel) re-indexed to the new input channels (out, len(rows),
    *kernel): channel i takes the source channel ``rows[i]``'s weights, zeros where ``rows[i]`` is None, so that
    the new network computes exactly what the source one computed until training changes them."""
    out = weight.new_zeros((weight.shape[0], len(rows), *weight.shape[2:]))
    for i, j in enumerate(rows):
        if j is not None:
            out[:, i] = weight[:, j]
    return out


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

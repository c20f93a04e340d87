"""The marginal Dice + cross-entropy loss for partially labelled data (Shi et al., Med. Image Anal. 2021).

A case that does not annotate an OAR carries the background value where that OAR is. nnU-Net's Dice + CE would
then teach the network to erase the organ. The marginal loss instead treats an unannotated label as unknown:

- **cross-entropy on marginal probabilities**: per sample, the softmax probabilities of the labels the sample does
  not annotate are added to the background's, ``p'_bg = p_bg + sum_{c unannotated} p_c``, before the negative
  log-likelihood of the target. Putting probability on an unannotated OAR costs exactly what putting it on the
  background costs;
- **Dice over the annotated foreground labels only**: nnU-Net's memory-efficient soft Dice (no background,
  ``smooth`` 1e-5, optional batch Dice), with the (sample, label) terms of unannotated labels left out.

With every label annotated it is nnU-Net's ``DC_and_CE_loss(MemoryEfficientSoftDiceLoss)`` term for term. Chosen
over a masked (ignore-label) loss because the data hold no voxel-wise "unknown" region: an unannotated OAR may lie
anywhere in the case, and only the marginal treatment keeps the known background informative for the annotated OARs.

This module imports only torch: it is installed into nnunetv2 beside the trainers (``training.install_trainers``).
Shapes: ``logits`` (B, C, *spatial) with C = number of labels incl. background, ``target`` (B, 1, *spatial) or
(B, *spatial) holding label values, ``annotated`` (B, C) bool with column 0 (background) True.
"""

from __future__ import annotations

import torch
from torch import nn


def marginal_log_probs(logits: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Log-probabilities with every unannotated label merged into the background (their entries become -inf).

    Args:
        logits: (B, C, *spatial) network outputs.
        annotated: (B, C) bool; True where the sample annotates the label (background always True).
    """
    log_p = torch.log_softmax(logits.float(), dim=1)
    shape = (*annotated.shape, *([1] * (logits.ndim - 2)))
    keep = annotated.reshape(shape).to(torch.bool)
    unknown = ~keep
    unknown_or_bg = unknown.clone()
    unknown_or_bg[:, 0] = True
    neg_inf = torch.finfo(log_p.dtype).min
    background = torch.logsumexp(torch.where(unknown_or_bg, log_p, torch.full_like(log_p, neg_inf)), dim=1)
    merged = torch.where(keep, log_p, torch.full_like(log_p, neg_inf))
    return torch.cat([background.unsqueeze(1), merged[:, 1:]], dim=1)


class MarginalDiceCELoss(nn.Module):
    """Marginal cross-entropy + soft Dice over annotated labels (module docstring); weights 1 and 1 as nnU-Net's."""

    def __init__(self, batch_dice: bool, smooth: float = 1e-5, weight_ce: float = 1.0, weight_dice: float = 1.0):
        super().__init__()
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
        if target.ndim == logits.ndim:
            target = target[:, 0]
        target = target.long()
        annotated = annotated.to(device=logits.device, dtype=torch.bool)
        # a voxel labelled with a label its sample does not annotate is unknown: it joins the merged background
        target = torch.where(torch.gather(annotated, 1, target.flatten(1)).view_as(target), target, 0)
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.weight_ce:
            log_p = marginal_log_probs(logits, annotated)
            loss = loss + self.weight_ce * nn.functional.nll_loss(log_p, target)
        if self.weight_dice:
            loss = loss + self.weight_dice * self.dice_loss(logits, target, annotated)
        return loss

    def dice_loss(self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
        """Minus the mean soft Dice over annotated foreground (sample, label) terms (batch-summed if batch Dice)."""
        probs = torch.softmax(logits, dim=1)[:, 1:]
        axes = tuple(range(2, logits.ndim))
        with torch.no_grad():
            onehot = torch.zeros(logits.shape, device=logits.device, dtype=torch.float32)
            onehot.scatter_(1, target.unsqueeze(1), 1)
            onehot = onehot[:, 1:]
            sum_gt = onehot.sum(axes, dtype=torch.float32)
        weight = annotated[:, 1:].to(torch.float32)
        intersect = (probs * onehot).sum(axes, dtype=torch.float32) * weight
        sum_pred = probs.sum(axes, dtype=torch.float32) * weight
        sum_gt = sum_gt * weight
        if self.batch_dice:
            intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
            weight = (weight.sum(0) > 0).to(torch.float32)
        dice = (2 * intersect + self.smooth) / (sum_gt + sum_pred + float(self.smooth)).clamp_min(1e-8)
        n = weight.sum()
        if n == 0:
            return logits.new_zeros((), dtype=torch.float32)
        return -(dice * weight).sum() / n


class DeepSupervisedMarginalLoss(nn.Module):
    """nnU-Net's deep-supervision weighting (one output per scale) around :class:`MarginalDiceCELoss`."""

    def __init__(self, loss: MarginalDiceCELoss, weights: tuple[float, ...]):
        super().__init__()
        self.loss = loss
        self.weights = tuple(float(w) for w in weights)

    def forward(self, outputs: list[torch.Tensor], targets: list[torch.Tensor],
                annotated: torch.Tensor) -> torch.Tensor:
        return sum(w * self.loss(o, t, annotated) for w, o, t in zip(self.weights, outputs, targets) if w != 0)

"""The marginal (partial-label) loss of training/partial_label_loss.py on hand-made logits.

Pins the three properties the partial-label trainer relies on: predicting an unannotated OAR where it really is
costs exactly what predicting background there costs; a wrong prediction of an annotated OAR still costs; and with
every OAR annotated the loss is nnU-Net 2.8.1's Dice + CE (with and without deep supervision).
"""

from __future__ import annotations

import pytest
import torch

from training.partial_label_loss import DeepSupervisedMarginalLoss, MarginalDiceCELoss

nnunet_loss = pytest.importorskip("nnunetv2.training.loss.compound_losses", reason="nnunetv2 is a test dependency")
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper  # noqa: E402
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss  # noqa: E402

N_LABELS = 4  # background + 3 OARs


def nnunet_dc_ce(batch_dice: bool) -> torch.nn.Module:
    """nnU-Net's loss exactly as nnUNetTrainer._build_loss builds it for label (not region) training."""
    return nnunet_loss.DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                      weight_ce=1, weight_dice=1, ignore_label=None,
                                      dice_class=MemoryEfficientSoftDiceLoss)


def make_case(spatial: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((2, N_LABELS, *spatial), generator=g)
    target = torch.randint(0, N_LABELS, (2, 1, *spatial), generator=g)
    return logits, target


@pytest.mark.parametrize("batch_dice", [True, False])
@pytest.mark.parametrize("spatial", [(12, 10), (5, 6, 7)])
def test_equals_nnunet_loss_when_every_label_is_annotated(batch_dice: bool, spatial: tuple[int, ...]) -> None:
    logits, target = make_case(spatial)
    annotated = torch.ones(2, N_LABELS, dtype=torch.bool)
    ours = MarginalDiceCELoss(batch_dice=batch_dice)(logits, target, annotated)
    theirs = nnunet_dc_ce(batch_dice)(logits, target)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_deep_supervision_equals_nnunet_wrapper_when_every_label_is_annotated() -> None:
    scales = [make_case((16, 16), 1), make_case((8, 8), 2), make_case((4, 4), 3)]
    outputs, targets = [s[0] for s in scales], [s[1] for s in scales]
    weights = (4 / 6, 2 / 6, 0.0)
    annotated = torch.ones(2, N_LABELS, dtype=torch.bool)
    ours = DeepSupervisedMarginalLoss(MarginalDiceCELoss(batch_dice=True), weights)(outputs, targets, annotated)
    theirs = DeepSupervisionWrapper(nnunet_dc_ce(True), weights)(outputs, targets)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def organ_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 1-sample case: OAR 3 really occupies ``organ`` but the case does not annotate it (labelled background);
    OAR 1 is annotated in the top rows. Returns logits that are sure of background everywhere except OAR 1."""
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    target[0, 0, :2] = 1
    organ = torch.zeros(8, 8, dtype=torch.bool)
    organ[4:7, 2:6] = True
    logits = torch.full((1, N_LABELS, 8, 8), -4.0)
    logits[0, 0] = 4.0
    logits[0, 0, :2], logits[0, 1, :2] = -4.0, 4.0
    return logits, target, organ


@pytest.mark.parametrize("batch_dice", [True, False])
def test_an_unannotated_oar_predicted_where_it_is_costs_what_background_costs(batch_dice: bool) -> None:
    logits_bg, target, organ = organ_case()
    logits_oar = logits_bg.clone()
    logits_oar[0, 3][organ], logits_oar[0, 0][organ] = 4.0, -4.0  # the network sees the unannotated OAR 3
    annotated = torch.tensor([[True, True, True, False]])
    loss = MarginalDiceCELoss(batch_dice=batch_dice)
    torch.testing.assert_close(loss(logits_oar, target, annotated), loss(logits_bg, target, annotated))
    # nnU-Net's loss, which takes the missing OAR for background, punishes the same correct prediction
    nnunet = nnunet_dc_ce(batch_dice)
    assert nnunet(logits_oar, target) > nnunet(logits_bg, target) + 0.1
    # and so does the marginal loss once the OAR is declared annotated (then background IS its truth there)
    assert loss(logits_oar, target, torch.ones_like(annotated)) > loss(logits_bg, target, torch.ones_like(annotated))


@pytest.mark.parametrize("batch_dice", [True, False])
def test_a_wrong_prediction_of_an_annotated_oar_still_costs(batch_dice: bool) -> None:
    logits, target, _ = organ_case()
    annotated = torch.tensor([[True, True, True, False]])
    wrong = logits.clone()
    wrong[0, 1, :2], wrong[0, 0, :2] = -4.0, 4.0  # OAR 1 (annotated) predicted as background
    loss = MarginalDiceCELoss(batch_dice=batch_dice)
    assert loss(wrong, target, annotated) > loss(logits, target, annotated) + 0.5
    also_wrong = logits.clone()
    also_wrong[0, 1, :2], also_wrong[0, 3, :2] = -4.0, 4.0  # ... or as the unannotated OAR 3: costs too
    assert loss(also_wrong, target, annotated) > loss(logits, target, annotated) + 0.5


def test_unannotated_labels_in_the_target_are_unknown_and_give_finite_gradients() -> None:
    logits, target = make_case((6, 6))
    logits.requires_grad_(True)
    annotated = torch.tensor([[True, True, False, True], [True, False, False, False]])
    loss = MarginalDiceCELoss(batch_dice=True)(logits, target, annotated)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # sample 1 annotates nothing: its loss is CE against the merged background only, Dice says nothing
    only_bg = MarginalDiceCELoss(batch_dice=False, weight_ce=0)(logits[1:], target[1:], annotated[1:])
    assert only_bg.item() == 0.0

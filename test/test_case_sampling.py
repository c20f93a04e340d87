"""Rare-label case sampling of the stage-9 trainer (``training.trainers.rare_label_case_probabilities``).

Hand-made availability masks (index 0 = background, then the foreground labels) and nnU-Net's own loader
machinery (batchgenerators' ``DataLoader`` + ``SingleThreadedAugmenter``) drawing real batches.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="the trainers import nnunetv2 (training extra: ./setup.sh --test)")
from training import trainers  # noqa: E402


def _mask(*present: int, n_labels: int = 3) -> np.ndarray:
    out = np.zeros(n_labels, dtype=bool)
    out[0] = True
    out[list(present)] = True
    return out


def test_a_rarely_annotated_label_is_drawn_more_and_each_label_pulls_equally() -> None:
    # label 1 in all four cases, label 2 in one: weights 1/4, 1/4, 1/4 and 1/4 + 1
    annotated = {"a": _mask(1), "b": _mask(1), "c": _mask(1), "d": _mask(1, 2)}
    rows = trainers.availability_rows(["a", "b", "c", "d"], annotated, 3)
    p = trainers.rare_label_case_probabilities(rows)
    np.testing.assert_allclose(p, np.array([0.25, 0.25, 0.25, 1.25]) / 2.0)
    uniform = np.full(4, 0.25)
    before = trainers.expected_label_exposure(uniform, rows)
    after = trainers.expected_label_exposure(p, rows)
    np.testing.assert_allclose(before, [1.0, 0.25])
    np.testing.assert_allclose(after, [1.0, 0.625])


def test_a_fully_annotated_set_is_drawn_uniformly_and_unlisted_cases_count_as_full() -> None:
    annotated = {"a": _mask(1, 2), "b": _mask(1, 2)}
    rows = trainers.availability_rows(["a", "b", "c"], annotated, 3)  # "c": not in the record
    assert rows[2].all()
    p = trainers.rare_label_case_probabilities(rows)
    np.testing.assert_allclose(p, np.full(3, 1 / 3))
    assert p.sum() == pytest.approx(1.0)


def test_no_foreground_annotation_is_refused() -> None:
    with pytest.raises(ValueError, match="no training case annotates"):
        trainers.rare_label_case_probabilities(trainers.availability_rows(["a"], {"a": _mask()}, 3))
    with pytest.raises(ValueError, match="no training cases"):
        trainers.rare_label_case_probabilities(trainers.availability_rows([], {"a": _mask(1)}, 3))


def test_the_trainer_hands_the_probabilities_to_the_loader_that_draws_the_batches(monkeypatch: pytest.MonkeyPatch
                                                                                   ) -> None:
    """The treatment arm's ``get_dataloaders`` sets the weights on nnU-Net's loader; batches then follow them."""
    from batchgenerators.dataloading.data_loader import DataLoader
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

    class KeysLoader(DataLoader):  # the part of nnUNetDataLoader that picks cases: get_indices()
        def __init__(self, keys: list[str]) -> None:
            super().__init__(keys, 64, 1, None, infinite=True)
            self.indices = keys

        def generate_train_batch(self) -> dict:
            return {"keys": self.get_indices()}

    keys = ["a", "b", "c", "d"]
    train_gen = SingleThreadedAugmenter(KeysLoader(keys), None)
    monkeypatch.setattr(trainers.nnUNetTrainerCPU_partial_6ep_round3, "get_dataloaders",
                        lambda self: (train_gen, None))
    logged: list[str] = []

    class Stub(trainers.nnUNetTrainerCPU_partial_6ep_round3_rare):
        def __init__(self) -> None:  # no nnU-Net set-up: only what get_dataloaders reads
            self.annotated_by_case = {"a": _mask(1), "b": _mask(1), "c": _mask(1), "d": _mask(1, 2)}
            self.dataset_json = {"labels": {"background": 0, "Parotid": 1, "Esophagus_S": 2}}

        def print_to_log_file(self, *args: object, **kwargs: object) -> None:
            logged.append(" ".join(map(str, args)))

    np.random.seed(0)
    gen, _ = Stub().get_dataloaders()
    drawn = np.concatenate([next(gen)["keys"] for _ in range(200)])
    share_d = float(np.mean(drawn == "d"))
    assert share_d == pytest.approx(0.625, abs=0.02)  # uniform drawing would give 0.25
    assert "Esophagus_S 0.25->0.62" in logged[0]


def test_the_loss_mask_of_a_batch_uses_the_same_rows() -> None:
    """``annotated_mask`` (the marginal loss's per-batch mask) and the sampling weights read one availability rule."""
    import torch

    class Stub(trainers.nnUNetTrainerCPU_partial):
        def __init__(self) -> None:
            self.annotated_by_case = {"a": _mask(1)}
            self.dataset_json = {"labels": {"background": 0, "Parotid": 1, "Esophagus_S": 2}}
            self.device = torch.device("cpu")

    mask = Stub().annotated_mask(["a", "not-recorded"])
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True, True, False], [True, True, True]]

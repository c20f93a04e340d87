"""The HaN-Seg label table and the by-name mapping of model labels."""

import pytest

from contract.labels import HANSEG_LABELS, HANSEG_OAR_NAMES, NUM_OARS, model_to_hanseg_lookup


def test_table_follows_the_contract_rule():
    # CONTRACT.md: label = 1 + position of the name in Python sorted() order; spot-check its printed table.
    assert NUM_OARS == 30
    assert list(HANSEG_OAR_NAMES) == sorted(HANSEG_OAR_NAMES)
    expected = {"A_Carotid_L": 1, "Bone_Mandible": 4, "Brainstem": 5, "Esophagus_S": 11, "Glottis": 21,
                "Larynx_SG": 22, "OpticChiasm": 24, "Parotid_L": 27, "Parotid_R": 28, "SpinalCord": 30}
    for name, value in expected.items():
        assert HANSEG_LABELS[name] == value


def test_lookup_maps_by_name_not_by_position():
    model_labels = {"background": 0, "SpinalCord": 1, "Brainstem": 2, "Parotid_L": 3}
    assert model_to_hanseg_lookup(model_labels) == [0, 30, 5, 27]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"background": 0, "Liver": 1}, "not a HaN-Seg OAR name"),
        ({"background": 0, "Brainstem": 2}, "consecutive"),
        ({"background": 0, "Brainstem": [1, 2]}, "region-based"),
        ({"Brainstem": 0, "background": 1}, "background"),
    ],
)
def test_lookup_rejects_unusable_label_tables(labels, message):
    with pytest.raises(ValueError, match=message):
        model_to_hanseg_lookup(labels)

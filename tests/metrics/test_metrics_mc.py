"""``mc@difflib`` (metrics spec §3) on hand cases.

``ratio = 2·M / (len(option) + len(text))`` with M the matched characters of
``difflib.SequenceMatcher(None, option, text)``; each expected ratio below is worked out from it.
"""

from __future__ import annotations

import pytest

from medbench.metrics.mc import MCMetrics, best_option, mc_hit

MODALITIES = ["CT", "MRI", "X-ray", "Fundus photography"]


def test_best_option_by_hand():
    assert best_option("MRI", MODALITIES) == (1, 1.0)
    assert best_option("CT", MODALITIES) == (0, 1.0)
    # "(B) MRI": M = 3 with "MRI" → 6/10; M = 1 (the space) with "Fundus photography" → 2/25
    assert best_option("(B) MRI", MODALITIES) == (1, pytest.approx(0.6))
    # a bare letter shares no character with any option text: no option
    assert best_option("B", MODALITIES) == (None, 0.0)
    assert best_option("", MODALITIES) == (None, 0.0)
    # raw text, case-sensitive: "mri" matches only the "r" of "X-ray" (2/8) and of "photography" (2/21)
    assert best_option("mri", MODALITIES) == (2, pytest.approx(0.25))


def test_ties_go_to_the_first_option():
    # "ab" against "abc" and "abd": M = 2 each → 4/5 = 0.8 both
    assert best_option("ab", ["abc", "abd"]) == (0, pytest.approx(0.8))
    assert best_option("ab", ["abd", "abc"]) == (0, pytest.approx(0.8))


def test_option_first_argument_order():
    # SequenceMatcher(None, "tide", "diet") matches only "t" (0.25); the reverse order matches "d", "e"
    # (0.5). "dizzy" vs "diet" matches "di" either way: 4/9. The spec's order picks "dizzy".
    assert best_option("diet", ["tide", "dizzy"]) == (1, pytest.approx(4 / 9))


def test_mc_hit_needs_both_sides_on_the_same_option():
    assert mc_hit("MRI", "MRI", MODALITIES)
    assert mc_hit("(B) MRI", "MRI", MODALITIES)
    assert not mc_hit("CT", "MRI", MODALITIES)  # a prediction that is another option is wrong
    assert not mc_hit("B", "MRI", MODALITIES)  # maps to no option: wrong
    assert not mc_hit("zzz", "qqq", ["CT", "MRI"])  # neither maps to an option: still wrong
    assert not mc_hit("mri", "MRI", MODALITIES)  # the reference's case-sensitive trap, kept
    # two options in one answer: "left" 8/17 = 0.47, "right" 10/18 = 0.56 → "right"
    assert mc_hit("left or right", "right", ["left", "right"])
    assert not mc_hit("left or right", "left", ["left", "right"])
    assert mc_hit("ab", "abc", ["abc", "abd"]) and not mc_hit("ab", "abd", ["abc", "abd"])


def test_mc_metrics_by_hand():
    rows = [
        {"id": "q1", "prediction": "MRI", "answer": "MRI", "options": MODALITIES},  # hit
        {"id": "q2", "prediction": "CT", "answer": "MRI", "options": MODALITIES},  # another option
        {"id": "q3", "prediction": "B", "answer": "MRI", "options": MODALITIES},  # no option
        {"id": "q4", "prediction": "(B) MRI", "answer": "MRI", "options": MODALITIES},  # hit
        {"id": "q5", "prediction": "", "answer": "MRI", "options": MODALITIES, "error": "timeout"},
    ]
    result = MCMetrics(seed=0).compute(rows)["closed_accuracy"]
    assert result.value == 0.5
    assert result.per_sample == {"q1": 1.0, "q2": 0.0, "q3": 0.0, "q4": 1.0}
    assert result.counts == {"errors": 1, "mc": 4}
    assert result.protocol == "mc@difflib"
    assert 0.0 <= result.ci["low"] <= 0.5 <= result.ci["high"] <= 1.0
    with pytest.raises(ValueError, match="options"):
        MCMetrics().compute([{"id": "q6", "prediction": "CT", "answer": "CT", "options": []}])

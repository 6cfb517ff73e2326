"""``report@medheval`` (spec §4): per-sample nltk BLEU-4/METEOR and rouge-score ROUGE-L.

Hand-computed cases run against a stand-in nltk data directory (an empty Punkt model and an empty
WordNet), so no nltk data is needed; the cases are chosen so that WordNet synonyms cannot matter.
"""

from __future__ import annotations

import pytest

nltk = pytest.importorskip("nltk")
pytest.importorskip("rouge_score")

from medbench.metrics import MetricUnavailable  # noqa: E402
from medbench.metrics.medheval import MEDHEVAL_KEYS, MedHEvalReportMetrics, require_medheval  # noqa: E402

PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")
WORDNET_FILES = ("lexnames", *(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")),
                 *(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")))


@pytest.fixture()
def stand_in_data(tmp_path, monkeypatch):
    punkt = tmp_path / "tokenizers" / "punkt_tab" / "english"
    wordnet = tmp_path / "corpora" / "wordnet"
    for folder, names in ((punkt, PUNKT_FILES), (wordnet, WORDNET_FILES)):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_text("")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    return tmp_path


def test_hand_computed_scores(stand_in_data):
    rows = [
        {"id": "same", "prediction": "the lungs are clear", "answer": "the lungs are clear"},
        {"id": "short", "prediction": "lungs clear", "answer": "the lungs are clear"},
        {"id": "empty", "prediction": "", "answer": "no effusion"},
        {"id": "err", "prediction": None, "answer": "x", "error": "boom"},
    ]
    res = MedHEvalReportMetrics(n_resamples=20).compute(rows)
    assert set(res) == set(MEDHEVAL_KEYS)
    bleu, meteor, rouge = (res[k].per_sample for k in MEDHEVAL_KEYS)
    assert bleu["same"] == pytest.approx(1.0) and rouge["same"] == pytest.approx(1.0)
    assert meteor["same"] == pytest.approx(1 - 0.5 * (1 / 4) ** 3)  # one chunk over 4 matches
    # P = 1, R = 1/2, Fmean = PR / (0.9 P + 0.1 R); two chunks over two matches: penalty 0.5
    assert meteor["short"] == pytest.approx(0.5 / 0.95 * 0.5)
    assert rouge["short"] == pytest.approx(2 / 3)
    assert 0.0 < bleu["short"] < 0.5
    assert (bleu["empty"], meteor["empty"], rouge["empty"]) == (0.0, 0.0, 0.0)
    assert res["rouge_l@medheval"].counts == {"n_rows": 4, "errors": 1, "n_empty": 1}
    assert res["bleu4@medheval"].protocol == "report@medheval"
    assert res["meteor@medheval"].value == pytest.approx(sum(meteor.values()) / 3)
    assert res["meteor@medheval"].ci["n_resamples"] == 20


def test_missing_nltk_data_fails_clearly_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("must never download"))
    with pytest.raises(MetricUnavailable, match=r"punkt_tab, wordnet, which medbench never downloads"):
        require_medheval()
    with pytest.raises(MetricUnavailable, match="nltk.downloader"):
        MedHEvalReportMetrics().compute([{"id": "a", "prediction": "x", "answer": "y"}])


def test_score_report_records_medheval_when_unavailable(tmp_path, monkeypatch):
    from medbench import scoring
    from medbench.metrics import report

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(report.ReportMetrics, "compute", lambda self, rows: {})
    metrics, _, _, counts = scoring.score_report([{"id": "a", "prediction": "x", "answer": "y"}], 0, medheval=True)
    assert "punkt_tab" in counts["unavailable"]["medheval"] and not any("@medheval" in k for k in metrics)

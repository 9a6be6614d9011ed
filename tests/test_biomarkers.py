"""The biomarker benchmark's scoring and its tables of known biology."""
import numpy as np
import pandas as pd

from benchmarks import biomarkers
from predictor.drivers import Drivers


def test_a_lines_matched_drugs_are_scored_by_their_median_rank_in_its_list():
    drugs = [f"d{i}" for i in range(10)]
    scores = pd.DataFrame({"cell_line_id": "L", "drug": drugs,
                           "z_model": np.arange(10.0),                  # d0 first, d9 last
                           "z_ridge": np.arange(10.0)[::-1],            # d9 first
                           "z_measured": [0, 5, 1, 6, 7, 8, 9, 2, 3, 4.0]})
    ranks = biomarkers.line_ranks(scores, "L", ["d0", "d1", "absent"])
    assert ranks["drugs_listed"] == 10 and ranks["matched"] == 2
    assert np.isclose(ranks["model"], np.median([0.05, 0.15]))           # ranks 1 and 2 of 10
    assert np.isclose(ranks["ridge per drug"], np.median([0.95, 0.85]))
    assert np.isclose(ranks["measured"], np.median([0.05, 0.55])) and np.isclose(ranks["measured best"], 0.05)
    assert biomarkers.line_ranks(scores, "L", ["absent"]) is None
    assert biomarkers.line_ranks(scores, "other line", ["d0"]) is None


def test_a_marker_counts_only_among_the_five_strongest_weights_with_its_sign():
    weights = np.array([[-5.0, 4, 3, 2, 1.5, -1], [1.0, 0, 0, 0, 0, 0]])
    drivers = Drivers(["A", "B"], np.array(["SLFN11", "G1", "G2", "G3", "G4", "BCL2"], dtype=object), weights)
    table = pd.DataFrame({"drug": ["A", "A", "A", "B", "C"],
                          "gene": ["SLFN11", "BCL2", "G1", "SLFN11", "SLFN11"], "when_high": "sensitive"})
    hits = biomarkers.marker_hits(drivers, table)
    assert hits["rank"].tolist()[:4] == [1, 6, 2, 1]
    assert hits["named"].tolist() == [True, False, False, False, False]   # G1: resistant; B: wrong sign
    assert pd.isna(hits["rank"][4])                                       # a drug it does not know


def test_every_listed_alteration_and_marker_has_a_source_and_drugs():
    lines = biomarkers.altered_table()
    assert lines["source"].str.len().gt(0).all() and lines["drugs"].map(len).gt(0).all()
    assert not lines.duplicated(["line", "class"]).any() and len(lines) >= 46
    markers = pd.read_csv(biomarkers.DATA / "expression_biomarkers.csv")
    assert markers["source"].str.len().gt(0).all() and set(markers["when_high"]) == {"sensitive", "resistant"}
    assert len(markers) >= 10

"""Rankings of cells and groups: by z, most specifically sensitive first; general sensitivity apart."""
import pandas as pd
import pytest
from conftest import spread_of

from predictor.cells import general_sensitivity, ranked


def test_ranking_by_z_puts_the_drug_a_group_is_specifically_sensitive_to_first_for_that_group_only():
    # "potent" kills every line (training ln IC50 around -3); "specific" only a few (around 3)
    spread = spread_of({"potent": [-4.0, -3.0, -2.0], "specific": [2.0, 3.0, 4.0], "other": [0.0, 1.0, 2.0]})
    table = pd.DataFrame({"group": ["g1"] * 3 + ["g2"] * 3, "drug": ["potent", "specific", "other"] * 2,
                          "ln_ic50": [-3.0, 1.0, 1.0, -3.0, 3.0, 1.0], "cells": 5})
    table = table.assign(**spread.columns(table["drug"], table["ln_ic50"]))
    by_z = ranked(table, "z")
    first = by_z[by_z["rank"] == 1].set_index("group")["drug"]
    assert first.to_dict() == {"g1": "specific", "g2": "potent"}    # g2 is typical for "specific"
    assert list(by_z.columns[:4]) == ["group", "rank", "drug", "z"]
    by_potency = ranked(table, "ln_ic50")                     # --rank-by ln_ic50: today's order
    assert (by_potency[by_potency["rank"] == 1]["drug"] == "potent").all()
    general = general_sensitivity(by_z, bulk=True)            # each group's mean z, apart
    assert general["mean_z"].tolist() == pytest.approx([table["z"][:3].mean(), table["z"][3:].mean()])
    assert general["note"].str.contains("not with the training lines").all()


def test_a_drug_new_to_the_model_has_no_z_and_is_listed_last():
    spread = spread_of({"a": [0.0, 1.0, 2.0], "b": [0.0, 1.0, 2.0]})
    table = pd.DataFrame({"group": "g", "drug": ["new", "a", "b"], "ln_ic50": [-9.0, 1.5, 0.5], "cells": 1})
    order = ranked(table.assign(**spread.columns(table["drug"], table["ln_ic50"])), "z")
    assert order["drug"].tolist() == ["b", "a", "new"] and order["rank"].tolist() == [1, 2, 3]

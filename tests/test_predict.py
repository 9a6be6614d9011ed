"""`main.py predict`: cells into single-cell and bulk models, tables, new drugs, and bad input refused
with nothing written."""
from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import BULK_GENES as GENES
from conftest import BULK_LINES as LINES
from conftest import GENE_TABLE, SMALL, cells_h5ad, merged_table
from scipy import sparse

import main
from common import flat_list
from predictor import Predictor
from predictor.align import align


@pytest.mark.e2e
def test_counts_into_a_bulk_model_are_averaged_per_group_and_aligned_not_refused(bulk_run, tmp_path, caplog):
    d, x = bulk_run
    cells_h5ad(tmp_path / "cells.h5ad", x, [0, 3, 7], GENES[:36] + ["OTHER1", "OTHER2", "OTHER3", "OTHER4"])
    out = tmp_path / "out"
    assert main.main(["predict", "--checkpoint", str(d / "run" / "best.pt"), "--data",
                      str(tmp_path / "cells.h5ad"), "--groupby", "sample", "--out", str(out)]) == 0
    assert "36 of the model's 40 genes found (90.0%)" in caplog.text
    assert "counts values, averaged per group and aligned" in caplog.text
    ranking = pd.read_csv(out / "ranking.csv")
    assert list(ranking.columns) == ["group", "rank", "drug", "z", "z_low", "z_high", "percentile", "ln_ic50",
                                     "ln_ic50_low", "ln_ic50_high", "cells", "skill", "low_skill", "drivers",
                                     "drivers_share", "z_linear", "z_network", "new_drug",
                                     "similarity_to_training"]
    low, mid, high = ranking["ln_ic50_low"], ranking["ln_ic50"], ranking["ln_ic50_high"]
    assert ((low < mid) & (mid < high)).all()
    assert set(ranking["group"]) == {LINES[0], LINES[3], LINES[7]} and (ranking["cells"] == 6).all()
    # the profile each group was predicted from: its cells' mean log1p CP10k, aligned
    predictor = Predictor.load(d / "run" / "best.pt")
    net, stack = predictor.network, predictor.stack
    a = anndata.read_h5ad(tmp_path / "cells.h5ad")
    logcp = np.log1p(a.X.toarray() / a.X.toarray().sum(1, keepdims=True) * 1e4)
    means = np.stack([logcp[(a.obs["sample"] == g).to_numpy()].mean(0) for g in sorted(set(a.obs["sample"]))])
    assert net.genes["gene_symbol"][:3] == ["G0", "G1", "G2"]      # the vocabulary: G0..G39 in order
    values = np.zeros((3, 40))
    values[:, :36] = means[:, :36]
    aligned = align(values, np.arange(40) < 36, net.domain)
    drugs = ["Erlotinib", "Vorinostat", "olaparib"]
    network = net.predict_grid(aligned, drugs)
    names = np.tile(drugs, 3)                                   # the stack: network and ridge, blended
    ridge = stack.ridge.predict(stack.ridge.standardise(np.repeat(aligned, 3, axis=0), net.vocab), names)
    want = stack.blend(names, network.ravel(), ridge)[0].reshape(3, 3)
    got = ranking.pivot(index="group", columns="drug", values="ln_ic50").loc[:, drugs]
    assert np.allclose(got.to_numpy(), want, atol=1e-5) and not np.allclose(want, network, atol=1e-3)
    result = anndata.read_h5ad(out / "cells.h5ad")             # each cell carries its group's prediction
    first = result.obsm["ln_ic50"][(result.obs["sample"] == LINES[0]).to_numpy()]
    assert np.allclose(first, first[0]) and result.obsm["ln_ic50"].shape == (18, 3)
    # why: each gene's contribution is the drug's weight on it x the group's standardised value, all 40
    # genes kept (fewer than 50), and they add up to the linear part of z, less what a sample at the
    # training mean gets
    drivers = pd.read_parquet(out / "drivers.parquet")
    assert list(drivers.columns) == ["group", "drug", "rank", "gene", "contribution", "expression"]
    assert drivers.groupby(["group", "drug"]).size().eq(40).all()
    x = stack.ridge.standardise(aligned, net.vocab)
    for (group, drug), part in drivers.groupby(["group", "drug"]):
        i, d = sorted(set(a.obs["sample"])).index(group), predictor.drivers.drugs.index(drug)
        col = [list(predictor.drivers.genes).index(g) for g in part["gene"]]   # the member's columns
        assert np.allclose(part["contribution"], predictor.drivers.weight[d][col] * x[i][col])
        row = ranking[(ranking["group"] == group) & (ranking["drug"] == drug)].iloc[0]
        sd = predictor.spread.of([drug])[1][0]
        at_mean = stack.weights[1] * (stack.ridge.intercept[d] - stack.drug_mean[drug]) / sd
        assert np.isclose(part["contribution"].sum(), row["z_linear"] - at_mean, atol=1e-4)
        assert np.isclose(row["z"], row["z_linear"] + row["z_network"], atol=1e-4)
        top = part.sort_values("rank").head(5)
        assert row["drivers"] == "; ".join(f"{g} {c:+.2f}" for g, c in zip(top["gene"], top["contribution"]))
        share = top["contribution"].abs().sum() / part["contribution"].abs().sum()
        assert np.isclose(row["drivers_share"], share)
    assert ranking["low_skill"].eq(ranking["skill"] < 0.3).all()
    report = (out / "report.md").read_text()
    assert all(f"## {g}" in report for g in set(ranking["group"])) and "skill" in report
    assert len(list((out / "groups").glob("*.png"))) == 3


@pytest.mark.e2e
def test_too_few_of_the_reference_genes_are_refused_and_nothing_is_written(bulk_run, tmp_path, caplog):
    d, x = bulk_run
    cells_h5ad(tmp_path / "cells.h5ad", x, [0, 1], GENES[:15] + [f"X{j}" for j in range(25)])
    assert main.main(["predict", "--checkpoint", str(d / "run" / "best.pt"), "--data",
                      str(tmp_path / "cells.h5ad"), "--out", str(tmp_path / "out")]) == 2
    assert ("only 15 of the model's 40 genes (37.5%) were found, below --min-gene-fraction 0.5"
            in caplog.text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad"]







@pytest.mark.e2e
def test_explain_prints_a_drugs_genes_strongest_first_and_names_an_unknown_drug(bulk_run, capsys, caplog):
    d, _ = bulk_run
    best = str(d / "run" / "best.pt")
    assert main.main(["predict", "--checkpoint", best, "--explain", "Erlotinib", "--top", "4"]) == 0
    text = capsys.readouterr().out
    assert "Erlotinib: the ridge member's weights" in text and "skill on unseen lines" in text
    weights = Predictor.load(best).explain("Erlotinib", 4)[0]
    assert weights["weight"].abs().is_monotonic_decreasing and len(weights) == 4
    assert all(g in text for g in weights["gene"])
    assert main.main(["predict", "--checkpoint", best, "--explain", "Erlotinb"]) == 2
    assert ("--explain 'Erlotinb': the reference has no drug of that name (3 drugs; did you mean "
            "'Erlotinib'?)") in caplog.text
    assert main.main(["predict", "--checkpoint", best]) == 2
    assert "needs --data" in caplog.text


@pytest.mark.e2e
def test_predict_on_the_test_rows_reproduces_the_runs_predictions(tmp_path, table_path):
    run = tmp_path / "run"
    assert main.main(["--data", str(table_path), "--epochs", "2", "--out", str(run), *SMALL]) == 0
    split = pd.read_parquet(run / "split.parquet")
    test_rows = pq.read_table(table_path).take(split.index[split["part"] == "test"].to_numpy())
    pq.write_table(test_rows.drop_columns(["LN_IC50"]), tmp_path / "new.parquet")  # labels optional
    assert main.main(["predict", "--checkpoint", str(run / "best.pt"),
                      "--data", str(tmp_path / "new.parquet"),
                      "--out", str(tmp_path / "p.parquet")]) == 0
    got = pd.read_parquet(tmp_path / "p.parquet")
    want = pd.read_parquet(run / "predictions.parquet")
    assert np.allclose(got["prediction"], want["prediction"], atol=1e-5)


@pytest.mark.e2e
def test_predict_encodes_drugs_the_checkpoint_has_not_seen(tmp_path, table_path):
    run = tmp_path / "run"
    assert main.main(["--data", str(table_path), "--epochs", "1", "--out", str(run), *SMALL]) == 0
    t = merged_table(n_drugs=6, n_lines=2, cells_per_pair=1).to_pandas()
    new = pq.read_table(table_path).schema
    pq.write_table(pa.Table.from_pandas(t, schema=new, preserve_index=False), tmp_path / "new.parquet")
    assert main.main(["predict", "--checkpoint", str(run / "best.pt"),
                      "--data", str(tmp_path / "new.parquet")]) == 0
    out = pd.read_parquet(tmp_path / "new_predictions.parquet")
    assert len(out) == 12 and out["prediction"].notna().all()
    # drug4 and drug5 are new: each line's prediction for them is their own, not a known drug's
    by = out.pivot(index="cell_line_id", columns="drug", values="prediction")
    for new in ("drug4", "drug5"):
        for known in ("drug0", "drug1", "drug2", "drug3"):
            assert not np.allclose(by[new], by[known], atol=1e-6), (new, known)


@pytest.mark.e2e
def test_predict_names_a_bad_checkpoint_and_writes_nothing(tmp_path, table_path, caplog):
    (tmp_path / "x.pt").write_text("not a checkpoint")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main.main(["predict", "--checkpoint", str(tmp_path / "x.pt"), "--data", str(table_path)]) == 2
    assert f"'{tmp_path / 'x.pt'}' is not a checkpoint written by this tool" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """A tiny model trained on a merged table, with a gene table naming its tokens."""
    d = tmp_path_factory.mktemp("h5ad-model")
    pq.write_table(merged_table(n_drugs=3, n_lines=4, cells_per_pair=2, seed=3), d / "cells.parquet")
    GENE_TABLE.to_parquet(d / "genes.parquet")
    assert main.main(["--data", str(d / "cells.parquet"), "--gene-table", str(d / "genes.parquet"),
                      "--epochs", "1", "--out", str(d / "run"), *SMALL]) == 0
    return d


def cells_as_h5ad(table, path: Path, negative: bool = False, rename: int = 0) -> None:
    """The table's cells in an .h5ad as a user would have them: gene symbols, raw counts in the
    `counts` layer (sparse), normalised values in X; one unknown gene, and two genes each split
    over two columns (a repeated symbol; a symbol beside its versioned Ensembl id). `rename`
    gives the first genes names no table knows."""
    offsets, genes = flat_list(table["genes"])
    values = flat_list(table["expressions"])[1]
    rows = np.repeat(np.arange(table.num_rows), np.diff(offsets))
    counts = sparse.csr_matrix((values, (rows, genes - 3)), shape=(table.num_rows, 67)).toarray()
    var = [f"G{t}" for t in range(3, 70)]
    split = counts[:, [7, 9]] // 2                       # G10 and G12: half in a second column
    counts[:, [7, 9]] -= split
    extra = np.column_stack([split[:, 0], split[:, 1], np.arange(table.num_rows) % 5 + 1])
    counts = np.hstack([counts, extra]).astype(np.float32)
    var += ["G10", "ENSG00000000012.4", "NOTAGENE"]
    if negative:
        counts[0, 0] = -1.0
    obs = table.drop_columns(["genes", "expressions"]).to_pandas()
    obs.index = [f"cell{i}" for i in range(table.num_rows)]
    x = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)
    var = [f"X{i}" for i in range(rename)] + var[rename:]
    adata = anndata.AnnData(X=sparse.csr_matrix(x), obs=obs, var=pd.DataFrame(index=var))
    adata.layers["counts"] = sparse.csr_matrix(counts)
    adata.write_h5ad(path)


@pytest.mark.e2e
def test_an_h5ad_of_gene_symbols_predicts_as_the_equivalent_merged_table(model_run, tmp_path):
    table = merged_table(n_drugs=3, n_lines=4, cells_per_pair=2, seed=3)
    cells_as_h5ad(table, tmp_path / "cells.h5ad")
    out = tmp_path / "out"
    assert main.main(["predict", "--checkpoint", str(model_run / "run" / "best.pt"), "--data",
                      str(tmp_path / "cells.h5ad"), "--layer", "counts", "--groupby", "cell_line_id",
                      "--out", str(out)]) == 0
    assert main.main(["predict", "--checkpoint", str(model_run / "run" / "best.pt"), "--data",
                      str(model_run / "cells.parquet"), "--out", str(tmp_path / "rows.parquet")]) == 0
    rows = pd.read_parquet(tmp_path / "rows.parquet")

    result = anndata.read_h5ad(out / "cells.h5ad")
    drugs = list(result.uns["ln_ic50_drugs"])
    assert sorted(drugs) == ["drug0", "drug1", "drug2"] and result.obsm["ln_ic50"].shape == (24, 3)
    own = result.obsm["ln_ic50"][np.arange(24), [drugs.index(d) for d in rows["drug"]]]
    assert np.allclose(own, rows["prediction"], atol=1e-5)

    long = pd.read_parquet(out / "predictions.parquet")
    assert len(long) == 24 * 3 and set(long["group"]) == set(rows["cell_line_id"])
    ranking = pd.read_csv(out / "ranking.csv")
    first = ranking[ranking["group"] == "CVCL_0000"].set_index("drug")
    cells = (result.obs["cell_line_id"] == "CVCL_0000").to_numpy()
    for j, d in enumerate(drugs):
        assert first.loc[d, "median_ln_ic50"] == pytest.approx(np.median(result.obsm["ln_ic50"][cells, j]),
                                                               abs=1e-5)
    assert sorted(first["rank"]) == [1, 2, 3]
    spread = Predictor.load(model_run / "run" / "best.pt").spread   # each group's median set against it
    assert np.allclose(first["z"], spread.z(first.index, first["median_ln_ic50"]), atol=1e-5)
    assert first.sort_values("rank")["z"].is_monotonic_increasing
    mean, sd = spread.of(drugs)
    assert np.allclose(result.obsm["ln_ic50_z"], (result.obsm["ln_ic50"] - mean) / sd, atol=1e-5)
    assert (out / "ranking_heatmap.png").stat().st_size > 1000


def predict_args(model_run, data, out, *extra):
    return ["predict", "--checkpoint", str(model_run / "run" / "best.pt"), "--data", str(data),
            "--out", str(out), *extra]


@pytest.mark.e2e
@pytest.mark.parametrize("problem, message", [
    ("no genes in common", "none of its 70 genes is among the model's"),
    ("negative counts", "holds negative values"),
    ("unknown drug", "not known to the checkpoint"),
    ("missing obs column", "obs has no column 'patient'"),
])
def test_bad_input_stops_with_a_clear_error_and_writes_nothing(model_run, tmp_path, caplog, problem, message):
    table = merged_table(n_drugs=3, n_lines=4, cells_per_pair=2, seed=3)
    cells_as_h5ad(table, tmp_path / "cells.h5ad", negative=problem == "negative counts",
                  rename=70 if problem == "no genes in common" else 0)
    extra = {"unknown drug": ["--drugs", "drug0", "Imatinib"],
             "missing obs column": ["--groupby", "patient"]}.get(problem, [])
    out = tmp_path / "out"
    assert main.main(predict_args(model_run, tmp_path / "cells.h5ad", out, "--layer", "counts", *extra)) == 2
    assert message in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad"]   # no output, no temp dir


@pytest.mark.e2e
def test_a_new_drug_is_predicted_from_its_smiles_and_too_few_genes_stop_the_run(model_run, tmp_path, caplog):
    table = merged_table(n_drugs=3, n_lines=4, cells_per_pair=2, seed=3)
    cells_as_h5ad(table, tmp_path / "cells.h5ad")
    pd.DataFrame({"name": ["Aspirin"], "smiles": ["CC(=O)Oc1ccccc1C(=O)O"]}).to_csv(tmp_path / "new.csv",
                                                                                    index=False)
    assert main.main(predict_args(model_run, tmp_path / "cells.h5ad", tmp_path / "out", "--layer", "counts",
                                  "--drugs", "Aspirin", "drug1", "--smiles", str(tmp_path / "new.csv"))) == 0
    result = anndata.read_h5ad(tmp_path / "out" / "cells.h5ad")
    assert list(result.uns["ln_ic50_drugs"]) == ["Aspirin", "drug1"]
    assert np.isfinite(result.obsm["ln_ic50"]).all()
    cells_as_h5ad(table, tmp_path / "partial.h5ad", rename=32)     # under half of the model's genes left
    assert main.main(predict_args(model_run, tmp_path / "partial.h5ad", tmp_path / "out2", "--layer",
                                  "counts")) == 2
    vocab = torch.load(model_run / "run" / "best.pt", weights_only=True)["vocab"].numpy()
    found = int(np.isin(vocab, np.r_[10, 12, 35:60]).sum())       # G10 and G12 survive in extra columns
    assert (f"only {found} of the model's {len(vocab)} genes ({100 * found / len(vocab):.1f}%) were found, "
            f"below --min-gene-fraction 0.5") in caplog.text

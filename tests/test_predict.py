"""Prediction: bulk models read single cells through alignment; checkpoints of every format predict."""
from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SMALL, gdsc_frame, merged_table
from conftest import SMILES as KNOWN
from scipy import sparse

import main
import predict
from train import Trained

GENES = [f"G{j}" for j in range(40)]
LINES = [f"LINE-{i}" for i in range(16)]


def test_alignment_takes_the_training_quantiles_then_centres_each_gene_on_the_files_own_mean():
    reference = {"mean": np.array([10.0, 20.0, 30.0, 40.0, 5.0]), "sd": np.ones(5), "profiles": 3}
    found = np.array([True, True, True, True, False])
    values = np.array([[3.0, 1.0, 2.0, 2.0, 99.0],     # a tie shares the mean of its two quantiles
                       [0.5, 0.7, 0.6, 0.9, -1.0]])
    q = predict.quantiles(values, found, reference)
    assert q[0].tolist() == [40.0, 10.0, 25.0, 25.0, 5.0]
    assert q[1].tolist() == [10.0, 30.0, 20.0, 40.0, 5.0]      # the gene absent from the file: its mean
    got = predict.align(values, found, reference)              # the groups' mean set at the training mean
    assert got.tolist() == [[25.0, 10.0, 32.5, 32.5, 5.0], [-5.0, 30.0, 27.5, 47.5, 5.0]]
    assert np.allclose(got[:, found].mean(0), reference["mean"][found])
    assert predict.align(values[:1], found, reference).tolist() == q[:1].tolist()   # one group: quantiles
    assert predict.align(values, np.zeros(5, bool), reference).tolist() == [reference["mean"].tolist()] * 2


@pytest.fixture(scope="module")
def bulk_run(tmp_path_factory):
    """A small bulk model (one profile per line, log-scale values) whose gene table names its genes."""
    d = tmp_path_factory.mktemp("bulk-model")
    rng = np.random.default_rng(1)
    program = rng.normal(size=(len(LINES), 2))
    x = 5 + program @ rng.normal(size=(2, len(GENES))) + 0.3 * rng.normal(size=(len(LINES), len(GENES)))
    frame = pd.DataFrame(x, columns=GENES)
    frame.insert(0, "cell_line", LINES)
    frame.to_csv(d / "expr.csv", index=False)
    drugs = ["Erlotinib", "Vorinostat", "olaparib"]
    rows = [(drug, line, float(k + program[i, k % 2])) for k, drug in enumerate(drugs)
            for i, line in enumerate(LINES)]
    gdsc_frame(rows).to_csv(d / "GDSC2.csv", index=False)
    pd.DataFrame({"name": drugs, "smiles": [KNOWN[k] for k in drugs]}).to_csv(d / "smiles.csv", index=False)
    assert main.main(["--expression", str(d / "expr.csv"), "--gdsc2", str(d / "GDSC2.csv"), "--smiles-table",
                      str(d / "smiles.csv"), "--split", "cell_line", "--out", str(d / "run"), *SMALL,
                      "--top-k", "0", "--epochs", "3"]) == 0
    return d, x


def cells_h5ad(path, x: np.ndarray, lines: list[int], genes: list[str], cells: int = 6) -> None:
    """Raw counts of single cells of some lines: Poisson draws around each line's profile."""
    rng = np.random.default_rng(0)
    rate = np.exp(x[lines] - x.mean()) * 2
    counts = np.vstack([rng.poisson(rate[i], size=(cells, len(genes))) for i in range(len(lines))])
    obs = pd.DataFrame({"sample": np.repeat([LINES[i] for i in lines], cells)},
                       index=[f"c{i}" for i in range(len(counts))])
    a = anndata.AnnData(X=sparse.csr_matrix(counts.astype(np.float32)), obs=obs,
                        var=pd.DataFrame(index=genes))
    a.uns["value_kind"] = "counts"
    a.write_h5ad(path)


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
    assert list(ranking.columns) == ["group", "rank", "drug", "ln_ic50", "cells"]
    assert set(ranking["group"]) == {LINES[0], LINES[3], LINES[7]} and (ranking["cells"] == 6).all()
    # the profile each group was predicted from: its cells' mean log1p CP10k, aligned
    trained = Trained.load(d / "run" / "best.pt")
    a = anndata.read_h5ad(tmp_path / "cells.h5ad")
    logcp = np.log1p(a.X.toarray() / a.X.toarray().sum(1, keepdims=True) * 1e4)
    means = np.stack([logcp[(a.obs["sample"] == g).to_numpy()].mean(0) for g in sorted(set(a.obs["sample"]))])
    assert trained.genes["gene_symbol"][:3] == ["G0", "G1", "G2"]      # the vocabulary: G0..G39 in order
    values = np.zeros((3, 40))
    values[:, :36] = means[:, :36]
    aligned = predict.align(values, np.arange(40) < 36, trained.reference)
    drugs = ["Erlotinib", "Vorinostat", "olaparib"]
    want = predict.predict_profiles(trained, aligned, [trained.rows_of(trained.drugs)[k] for k in drugs])
    got = ranking.pivot(index="group", columns="drug", values="ln_ic50").loc[:, drugs]
    assert np.allclose(got.to_numpy(), want, atol=1e-5)
    result = anndata.read_h5ad(out / "cells.h5ad")             # each cell carries its group's prediction
    first = result.obsm["ln_ic50"][(result.obs["sample"] == LINES[0]).to_numpy()]
    assert np.allclose(first, first[0]) and result.obsm["ln_ic50"].shape == (18, 3)


@pytest.mark.e2e
def test_too_few_of_the_reference_genes_are_refused_and_nothing_is_written(bulk_run, tmp_path, caplog):
    d, x = bulk_run
    cells_h5ad(tmp_path / "cells.h5ad", x, [0, 1], GENES[:15] + [f"X{j}" for j in range(25)])
    assert main.main(["predict", "--checkpoint", str(d / "run" / "best.pt"), "--data",
                      str(tmp_path / "cells.h5ad"), "--out", str(tmp_path / "out")]) == 2
    assert ("only 15 of the model's 40 genes (37.5%) were found, below --min-gene-fraction 0.5"
            in caplog.text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad"]


NUMPY_1 = pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2,
                             reason="the format-2 fixture holds numpy 2 arrays, which numpy 1 cannot read")


@pytest.mark.e2e
@pytest.mark.parametrize("name, kind", [pytest.param("format2", "counts", marks=NUMPY_1),
                                        ("format3", "counts"), ("format3_normalised", "normalised")])
def test_checkpoints_written_by_earlier_versions_still_predict_the_same(tmp_path, name, kind):
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = merged_table(n_drugs=3, n_lines=4, cells_per_pair=2, seed=5)
    if kind == "normalised":
        values = [list(np.log1p(np.array(e)) - 1.0) for e in table["expressions"].to_pylist()]
        table = table.set_column(table.schema.get_field_index("expressions"), "expressions",
                                 pa.array(values, pa.list_(pa.float32())))
        table = table.replace_schema_metadata({"value_kind": "normalised"})
    pq.write_table(table, tmp_path / "t.parquet")
    fixtures = ROOT / "tests" / "fixtures"
    assert main.main(["predict", "--checkpoint", str(fixtures / f"{name}_best.pt"), "--data",
                      str(tmp_path / "t.parquet"), "--out", str(tmp_path / "p.parquet")]) == 0
    want = pd.read_csv(fixtures / f"{name}_predictions.csv")["prediction"]
    assert np.allclose(pd.read_parquet(tmp_path / "p.parquet")["prediction"], want, atol=1e-5)

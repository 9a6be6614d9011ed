"""AnnData in and out: genes mapped by name, predictions per cell x drug, rankings per group."""
from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import GENE_TABLE, SMALL, merged_table
from scipy import sparse

import main
from common import PipelineError
from config import DEMO_DIR, from_dict, of_stage
from ingest import h5ad


def test_genes_map_by_symbol_ensembl_id_and_case_and_ambiguous_names_are_left_out():
    table = pd.DataFrame({"gene_symbol": ["TP53", "KRAS", "DUP", "DUP", None],
                          "ensembl_id": ["ENSG00000141510", "ENSG00000133703", "ENSG1", "ENSG2",
                                         "ENSG00000000003"],
                          "token_id": [10, 11, 12, 13, 14]})
    ids = ["TP53", "ensg00000133703.15", "kras", "DUP", "MYC", "ENSG00000000003"]
    gmap = h5ad.map_genes(ids, table, "counts")
    assert gmap.token_ids.tolist() == [10, 11, 14]
    assert gmap.counts == {"file_genes": 6, "ensembl_id": 2, "symbol": 1, "symbol_ignoring_case": 1,
                           "ambiguous": 1, "unknown": 1, "genes_found": 3, "duplicated": 1}
    block = sparse.csr_matrix(np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]))
    genes, values = gmap.lists(block, keep_zeros=False)
    assert genes.to_pylist() == [[10, 11, 14]] and values.to_pylist() == [[1.0, 5.0, 6.0]]
    mean = h5ad.map_genes(ids, table, "normalised").lists(block, keep_zeros=True)[1]
    assert mean.to_pylist() == [[1.0, 2.5, 6.0]]   # normalised duplicates are averaged








@pytest.mark.e2e
def test_a_merged_table_converts_to_h5ad_and_back_and_trains_the_same_from_either(tmp_path):
    table = merged_table(n_drugs=3, n_lines=6, cells_per_pair=3, seed=4)
    pq.write_table(table, tmp_path / "m.parquet")
    GENE_TABLE.to_parquet(tmp_path / "genes.parquet")
    assert main.main(["convert", str(tmp_path / "m.parquet"), str(tmp_path / "m.h5ad"),
                      "--gene-table", str(tmp_path / "genes.parquet")]) == 0
    adata = anndata.read_h5ad(tmp_path / "m.h5ad")
    assert adata.var_names[0] == "G3" and adata.var["token_id"].iloc[0] == 3
    assert adata.uns["value_kind"] == "counts" and sparse.issparse(adata.X)
    assert main.main(["convert", str(tmp_path / "m.h5ad"), str(tmp_path / "back.parquet")]) == 0
    back = pq.read_table(tmp_path / "back.parquet")
    nonzero = [[(g, v) for g, v in zip(gs, vs) if v] for gs, vs in          # a zero count is no token
               zip(table["genes"].to_pylist(), table["expressions"].to_pylist())]
    assert back["genes"].to_pylist() == [[g for g, _ in row] for row in nonzero]
    assert back["expressions"].to_pylist() == [[v for _, v in row] for row in nonzero]
    for col in ("drug", "cell_line_id", "canonical_smiles", "LN_IC50", "dose_uM"):
        assert back[col].to_pylist() == table[col].to_pylist(), col

    args = ["--epochs", "2", "--split", "cell_line", *SMALL]
    assert main.main(["--data", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "a"), *args]) == 0
    assert main.main(["--data", str(tmp_path / "m.h5ad"), "--out", str(tmp_path / "b"), *args]) == 0
    a = pd.read_parquet(tmp_path / "a" / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "b" / "predictions.parquet")
    assert np.allclose(a["prediction"], b["prediction"], atol=1e-5)
    genes = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["genes"]   # names from var
    assert genes["gene_symbol"][:2] == ["G3", "G4"]


def settings(**values):
    """What `main.py convert` hands h5ad: the convert stage's settings."""
    return of_stage(from_dict({"value_kind": "counts", **values}, "test"), "convert")


def test_training_from_h5ad_names_a_missing_obs_column_and_drugs_without_smiles(tmp_path):
    table = merged_table(n_drugs=2, n_lines=3, cells_per_pair=1)
    h5ad.merged_to_h5ad(table, tmp_path / "m.h5ad", "counts")
    with pytest.raises(PipelineError, match="obs has no column 'compound' \\(--drug-column\\)"):
        h5ad.read_merged(tmp_path / "m.h5ad", settings(drug_column="compound"))
    with pytest.raises(PipelineError, match=r"no SMILES for drug\(s\) \['drug0', 'drug1'\]"):
        h5ad.read_merged(tmp_path / "m.h5ad", settings(smiles_column="smiles"))
    smiles = pd.DataFrame({"name": ["drug0", "drug1"], "smiles": ["CCO", "CCN"]})
    smiles.to_csv(tmp_path / "s.csv", index=False)
    got, _ = h5ad.read_merged(tmp_path / "m.h5ad", settings(smiles_column="smiles",
                                                             smiles_table=str(tmp_path / "s.csv")))
    assert got["canonical_smiles"].to_pylist() == ["CCO"] * 3 + ["CCN"] * 3


@pytest.mark.e2e
def test_the_demo_runs_from_its_h5ad_form(tmp_path):
    assert main.main(["--stop-after", "merge", "--out", str(tmp_path / "prep")]) == 0
    genes = DEMO_DIR / "tahoe" / "metadata" / "gene_metadata.parquet"
    assert main.main(["convert", str(tmp_path / "prep" / "merged.parquet"), str(tmp_path / "demo.h5ad"),
                      "--gene-table", str(genes)]) == 0
    assert main.main(["--data", str(tmp_path / "demo.h5ad"), "--epochs", "1", "--out", str(tmp_path / "run"),
                      *SMALL]) == 0
    names = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["genes"]["gene_symbol"]
    assert all(n.startswith("DEMO") for n in names)          # the vocabulary is named after var
    assert main.main(["predict", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data",
                      str(tmp_path / "demo.h5ad"), "--groupby", "cell_line_id",
                      "--out", str(tmp_path / "p")]) == 0
    ranking = pd.read_csv(tmp_path / "p" / "ranking.csv")
    assert ranking["group"].nunique() == 28 and ranking["drug"].nunique() == 21


def test_dense_and_sparse_values_and_a_var_column_of_gene_ids_read_alike(tmp_path):
    counts = np.array([[0.0, 3.0, 1.0, 0.0], [2.0, 0.0, 0.0, 5.0]], dtype=np.float32)
    obs = pd.DataFrame({"drug": ["drug0", "drug1"], "cell_line_id": ["A", "B"], "LN_IC50": [0.5, 1.5],
                        "canonical_smiles": ["CCO", "CCN"]}, index=["c0", "c1"])
    var = pd.DataFrame({"symbol": ["G3", "G4", "G5", "G6"]}, index=["a", "b", "c", "d"])
    GENE_TABLE.to_parquet(tmp_path / "genes.parquet")
    cfg = settings(gene_column="symbol", gene_table=str(tmp_path / "genes.parquet"))
    tables = []
    for name, x in (("dense", counts), ("sparse", sparse.csr_matrix(counts))):
        anndata.AnnData(X=x, obs=obs, var=var).write_h5ad(tmp_path / f"{name}.h5ad")
        tables.append(h5ad.read_merged(tmp_path / f"{name}.h5ad", cfg)[0])
    for t in tables:
        assert t["genes"].to_pylist() == [[4, 5], [3, 6]]
        assert t["expressions"].to_pylist() == [[3.0, 1.0], [2.0, 5.0]]
    with pytest.raises(PipelineError, match="var has no column 'gene_name' \\(--gene-column\\)"):
        h5ad.read_merged(tmp_path / "dense.h5ad", settings(gene_column="gene_name"))

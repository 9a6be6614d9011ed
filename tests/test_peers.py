"""benchmarks/peers.py's adapter: a dataset in drevalpy's custom layout that drevalpy's own loaders
read (skipped where drevalpy is not installed: it is never a dependency of the tool), and its folds
as a --split-file that main.py runs on."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMILES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402

from ingest.split import check_split_file  # noqa: E402

DRUGS = ["Erlotinib", "olaparib", "Vorinostat"]


def small(n_lines: int = 12, n_genes: int = 30):
    """Pairs as main.py prepares them (GDSC names beside the matrix's) and the matrix."""
    rng = np.random.default_rng(0)
    genes = [f"GENE{j}" for j in range(n_genes)]
    matrix = pd.DataFrame(rng.normal(size=(n_lines, n_genes)), columns=genes)
    matrix.insert(0, "cell_line", [f"L{i}" for i in range(n_lines)])
    rows = [(d, f"NCI-L{i}", f"L{i}", float(rng.normal())) for d in DRUGS for i in range(n_lines)]
    pairs = pd.DataFrame(rows, columns=["drug", "cell_line_id", "cell_name", "LN_IC50"])
    return pairs, matrix


def test_the_dataset_is_laid_out_as_drevalpy_reads_it(tmp_path, monkeypatch):
    pairs, matrix = small()
    monkeypatch.setattr(peers, "LIST_SIZE", 10)
    d = peers.write_dataset(pairs, matrix, {x: SMILES[x] for x in DRUGS}, tmp_path)
    response = pd.read_csv(d / f"{peers.NAME}.csv")
    assert len(response) == 36 and set(response["cell_line_name"]) == {f"NCI-L{i}" for i in range(12)}
    expression = pd.read_csv(d / "gene_expression.csv", index_col="cell_line_name")
    np.testing.assert_allclose(expression.loc["NCI-L3"].to_numpy(), matrix.iloc[3, 1:].to_numpy(dtype=float))
    bits = pd.read_csv(d / "drug_fingerprints" / f"pubchem_id_to_demorgan_{peers.FINGERPRINT_BITS}_map.csv")
    assert list(bits.columns) == sorted(DRUGS) and len(bits) == peers.FINGERPRINT_BITS
    assert len(pd.read_csv(tmp_path / "meta" / "gene_lists" / f"{peers.GENE_LIST}.csv")) == 10
    pytest.importorskip("drevalpy", reason="drevalpy is not installed (benchmarks/requirements-peers.txt)")
    from drevalpy.datasets.loader import load_dataset
    from drevalpy.models.utils import load_and_select_gene_features, load_drug_fingerprint_features
    data = load_dataset(peers.NAME, str(tmp_path))
    assert len(data.response) == 36 and set(data.drug_ids) == set(DRUGS)
    genes = load_and_select_gene_features("gene_expression", peers.GENE_LIST, str(tmp_path), peers.NAME)
    assert len(genes.meta_info["gene_expression"]) == 10
    assert set(load_drug_fingerprint_features(str(tmp_path), peers.NAME).features) == set(DRUGS)


def test_drevalpys_folds_become_a_split_file_of_every_test_line(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    for i, lines in enumerate([["NCI-L0", "NCI-L1"], ["NCI-L2"]]):
        pd.DataFrame({"cell_line_name": lines, "pubchem_id": "Erlotinib", "response": 0.0}).to_csv(
            splits / f"cv_split_{i}_test.csv", index=False)
    path = peers.fold_file(splits, tmp_path / "folds.csv")
    want = {"cell_line": ["NCI-L0", "NCI-L1", "NCI-L2"], "fold": [0, 0, 1]}
    assert pd.read_csv(path).to_dict("list") == want
    by, column, assignment = check_split_file(path)
    assert by == ["cell_line"] and column == "fold" and assignment[("NCI-L2",)] == 1

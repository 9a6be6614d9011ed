"""A run's report: predictions.parquet, metrics.json, the plots and report.md, and the mean over
runs (seeds, folds); the table printed at the end of a run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from common import write_json, write_parquet, write_text
from predictor.spread import DrugSpread
from reporting.metrics import _fmt, _value, aggregate, evaluate, interval_coverage, skill_check, verdict
from reporting.plots import plot_calibration, plot_loss, plot_pairs, plot_per_drug, plot_skill

ROWS = ("model", "ridge_per_drug", "boosted_trees", "ridge", "structure_knn", "mean_effects",
        "drug_mean", "cell_line_mean", "global_mean")


def _rows(metrics: dict) -> list[tuple[str, dict]]:
    """(name, metrics) of the model, its members and the baselines, in the report's order."""
    return ([("model", metrics["test"])] + list(metrics.get("members", {}).items())
            + [(k, metrics["baselines"][k]) for k in ROWS[1:] if k in metrics["baselines"]])


def results_table(metrics: dict) -> str:
    """Markdown: one row per predictor, metrics over cells, pairs and per drug (and per line, where
    the test lines are unseen)."""
    per_line = "per_line" in metrics["test"]
    head = ("| predictor | MSE | RMSE | Pearson | Spearman | pairs: Pearson | pairs: Spearman | "
            "per drug: Pearson | per drug: Spearman | normalised Pearson |"
            + (" per line: z Spearman | per line: top-10 |" if per_line else "") + "\n"
            "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if per_line else ""))
    lines = [head]
    for name, m in _rows(metrics):
        cells = [m["mse"], m["rmse"], m["pcc"], m["scc"], m["pairs"]["pcc"], m["pairs"]["scc"],
                 m["per_drug"]["pcc"], m["per_drug"]["scc"], m.get("normalised_pcc")]
        if per_line:
            cells += [m.get("per_line", {}).get("z_spearman"), m.get("per_line", {}).get("top_precision")]
        label = f"**{name}**" if name == "model" else (f"model: {name}" if name in metrics.get("members", {})
                                                      else name)
        lines.append(f"| {label} | " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def relative_text(metrics: dict) -> list[str]:
    """report.md's section on relative sensitivity (the test lines are unseen)."""
    pl = metrics["test"].get("per_line")
    if not pl:
        return []
    lines_ = _value(pl["lines"])
    return ["", "## Relative sensitivity: each line's own list of drugs", "",
            "What a user reads for a sample: its drugs ordered by z, each drug's predicted ln IC50 "
            "against the drug's training lines ((prediction - their mean) / their sd), most "
            "specifically sensitive first. *per line: z Spearman*: for each test line, Spearman over "
            "its drugs between predicted and measured z, averaged over "
            f"{'–' if lines_ is None else f'{lines_:.0f}'} lines. *per line: top-10*: of each line's "
            f"10 most specifically sensitive drugs (measured z), the share among its predicted 10 "
            f"(a random order scores {_fmt(pl['chance'])}). For the model: z Spearman "
            f"**{_fmt(pl['z_spearman'])}**, top-10 **{_fmt(pl['top_precision'])}**."]


def skill_text(metrics: dict) -> list[str]:
    """report.md's section on each drug's skill (a bulk reference's predictor estimates it)."""
    check = (metrics.get("skill") or {}).get("check")
    if not check or _value(check.get("pearson")) is None:
        return []
    out = ["", "## Per-drug skill", "",
            "Each drug's skill is estimated within the training lines: the ridge member refitted without "
            "each fifth of them predicts that fifth, and the skill is Pearson over the drug's lines between "
            "these predictions and the measured ln IC50 (predictor/skill.py). Against each drug's Pearson "
            f"measured on the test pairs, over {_count(check['drugs'])} drugs: r = "
            f"**{_fmt(check['pearson'])}** (Spearman {_fmt(check['spearman'])}; estimate - measured on "
            f"average {_fmt(check.get('mean_gap'))}). {_count(check.get('below_bar'))} drugs are estimated "
            f"below the bar of 0.3, and measure {_fmt(check.get('measured_below_bar'))} on the test pairs, "
            f"against {_fmt(check.get('measured_above_bar'))} for the others."]
    cov = check.get("coverage")
    if cov:
        out[-1] += (f" Each drug's 90% coverage, estimated the same way: {_pct(cov['estimate'])} on average, "
                    f"{_pct(cov['measured'])} measured on the test pairs (r = {_fmt(cov['pearson'])} over "
                    f"drugs).")
    return out + ["", "![skill](skill.png)"]


def interval_text(metrics: dict) -> list[str]:
    """report.md's section on the intervals (a bulk reference's predictor has them)."""
    iv = metrics.get("interval")
    if not iv:
        return []
    level = 100 * _value(iv["level"])   # a run's level, or the same level's mean over runs
    if _value(iv.get("coverage")) is None:
        n = _value(iv["pairs_without_interval"])
        return ["", "## Intervals", "", f"No test pair has an interval ({n:.0f} pairs): an interval is "
                f"calibrated for the drugs the predictor was trained on, and "
                f"every test drug is new to it, so no coverage is claimed."]
    if _value(iv.get("new_drugs")):
        return ["", "## Intervals", "",
                f"Every test drug is new to the model. {level:.0f}% intervals (each drug's predicted sd "
                f"over the lines, from its similarity to the training drugs, times the quantile that "
                f"puts {level:.0f}% of the training drugs' pairs inside, each drug predicted with itself "
                f"left out) hold **{_pct(iv['coverage'])}** of the test pairs, with a mean width of "
                f"{_fmt(iv['mean_width'])} (ln IC50): {_fmt(iv.get('width_ratio'))} of the width of "
                f"each test drug's own 5-95% range over its test lines ({_fmt(iv.get('naive_width'))}), "
                f"which no predictor knows. Drugs covered within 80-97%: "
                f"{_pct(iv.get('drugs_within_80_97'))}.",
                *_calibration_lines(iv)]
    lines = ["", "## Intervals", "",
             f"{level:.0f}% intervals (each drug's sd over its training lines, times the quantile that "
             f"puts {level:.0f}% of the validation pairs inside) hold **{_pct(iv['coverage'])}** of the "
             f"test pairs, with a mean width of {_fmt(iv['mean_width'])} (ln IC50): "
             f"**{_fmt(iv.get('width_ratio'))}** of the naive interval's width, the drug's own 5-95% "
             f"range over its training lines ({_fmt(iv.get('naive_width'))}, holding "
             f"{_pct(iv.get('naive_coverage'))}). "
             f"Drugs covered within 80-97% (drugs with 10 test pairs or more): "
             f"{_pct(iv.get('drugs_within_80_97'))}; in the 10 drugs with the widest intervals, "
             f"{_pct(iv['coverage_widest'])}."]
    if _value(iv.get("pairs_without_interval")):
        lines.append(f"{_value(iv['pairs_without_interval']):.0f} test pairs have no interval (a drug "
                     f"without a ridge member or training spread) and are not counted.")
    lines += _calibration_lines(iv)
    if metrics.get("interval_drugs"):
        lines += ["", "| drug | mean width | coverage | test pairs |", "|---|---|---|---|"]
        lines += [f"| {d['drug']} | {d['width']:.2f} | {100 * d['coverage']:.0f}% | {d['pairs']:.0f} |"
                  for d in metrics["interval_drugs"]]
    return lines


def _calibration_lines(iv: dict) -> list[str]:
    if not iv.get("calibration"):
        return []
    return ["", "| nominal | observed |", "|---|---|",
            *[f"| {100 * float(k):.0f}% | {_pct(v)} |" for k, v in iv["calibration"].items()],
            "", "![calibration](calibration.png)"]


def _count(v) -> str:
    """A number of things, or its mean over runs."""
    v = v.get("mean") if isinstance(v, dict) else v
    return "–" if v is None else (f"{v:.0f}" if float(v).is_integer() else f"{v:.1f} (mean over runs)")


def _pct(v) -> str:
    v = v.get("mean") if isinstance(v, dict) else v
    return "–" if v is None else f"{100 * v:.1f}%"


SPLIT_TEXT = {
    "pair": "unseen (drug, cell line) pairs: every cell of a pair is on one side",
    "cell_line": "unseen cell lines: every cell of a test cell line is held out",
    "drug": "unseen drugs: every cell treated with a test drug is held out",
    "random": "RANDOM CELLS — LEAKY: cells of every test pair are also in training, so these "
              "numbers measure memorisation of pair labels, not prediction (kept to compare with "
              "the original study)",
}


NEW_DRUGS_TEXT = (
    " Test drugs new to the model are predicted by the new-drug predictor (predictor/newdrugs.py): the "
    "line's general level over the training drugs plus the training drugs' own responses at the line, "
    "weighted by kernel ridge on structural similarity; *model: network* is the network alone. "
    "*structure_knn*: the 5 training drugs most similar by Tanimoto (Morgan fingerprints), their "
    "responses at the same line weighted by similarity; *cell_line_mean*: the line's mean over the "
    "training drugs, which ignores the drug.")


def write_report(run_dir: Path, metrics: dict, runs: list[str] | None = None) -> None:
    """report.md: the table of model vs baselines, the split, the part sizes, the plots."""
    split = metrics["split"]
    parts = metrics.get("parts", {})
    lines = [f"# Results: {split} split", "",
             f"Test set: {SPLIT_TEXT.get(split, split)}."]
    if runs:
        lines += ["", f"Mean ± sd over {len(runs)} runs ({', '.join(runs)}); each run's own "
                  "report is in its directory."]
    else:
        lines += [f"Seed {metrics['seed']}; drug encoder `{metrics['drug_encoder']}`; best epoch "
                  f"{metrics['best_epoch']} of {metrics['epochs_run']}."]
    if metrics.get("verdict"):
        lines += ["", "## Verdict", "", metrics["verdict"]["text"]]
    lines += ["", "## Model and baselines on the same test rows", "", results_table(metrics), "",
              "Baselines are fitted on the training split only. *pairs*: each pair's mean "
              "prediction against its label. *per drug*: correlation within each drug over its "
              "test pairs, averaged over the drugs with at least 3 test pairs — differences "
              "between drugs cannot carry it. "
              "A model that does not beat *mean effects* has learned nothing beyond drug and "
              "cell-line averages. Classical baselines, on per-pair pseudobulk of the training "
              "pairs' 2,000 most variable genes (a bulk reference: each line's profile, every gene): "
              "*ridge_per_drug*, one ridge per drug (the "
              "classical GDSC approach); *boosted_trees*, gradient-boosted trees on expression "
              "and drug identity; *ridge*, one ridge for all drugs on expression with a per-drug "
              "intercept (the drug's training mean). *normalised Pearson* (DrEval's): Pearson over "
              "all test pairs once the mean-effects prediction is taken from truth and prediction."
              + (NEW_DRUGS_TEXT if "structure_knn" in metrics["baselines"] else
                 " The model of a bulk reference is the network blended with a ridge member (weights "
                 "fitted on the validation lines): one ridge per drug beside a general level that "
                 "one ridge learns from every drug's pairs; *model: network* and *model: "
                 "ridge_with_level* are the members alone." if metrics.get("members") else "")]
    lines += relative_text(metrics)
    lines += interval_text(metrics)
    lines += skill_text(metrics)
    if parts:
        lines += ["", "## Split", "", "| part | cells | pairs | drugs | cell lines |",
                  "|---|---|---|---|---|"]
        lines += [f"| {p} | {s['cells']} | {s['pairs']} | {s['drugs']} | {s['cell_lines']} |"
                  for p, s in parts.items()]
    if not runs:
        lines += ["", "## Plots", "", "![predicted vs measured per pair](pred_vs_measured.png)",
                  "![per-drug Pearson](per_drug_pearson.png)", "![loss curves](loss_curve.png)"]
    write_text("\n".join(lines) + "\n", run_dir / "report.md")


def format_table(result: dict) -> str:
    per_line = "per_line" in result["test"]
    lines = [f"{'':16s}{'MSE':>8s}{'PCC':>8s}{'SCC':>8s}{'pair PCC':>10s}{'drug PCC':>10s}{'norm PCC':>10s}"
             + (f"{'line zSCC':>11s}{'top-10':>8s}" if per_line else "")]
    val = lambda v: v["mean"] if isinstance(v, dict) else v  # noqa: E731
    num = lambda v: f"{val(v):8.3f}" if val(v) is not None and np.isfinite(val(v)) else f"{'-':>8s}"  # noqa: E731
    for name, m in _rows(result):
        pl = m.get("per_line", {})
        lines.append(f"{name:16s}{num(m['mse'])}{num(m['pcc'])}{num(m['scc'])}  {num(m['pairs']['pcc'])}"
                     f"  {num(m['per_drug']['pcc'])}  {num(m.get('normalised_pcc'))}"
                     + (f"   {num(pl.get('z_spearman'))}{num(pl.get('top_precision'))}" if per_line else ""))
    iv = result.get("interval")
    if iv and _value(iv.get("coverage")) is not None:
        lines.append(f"90% intervals hold {_pct(iv['coverage'])} of the test pairs, at "
                     f"{_value(iv['width_ratio']):.2f} of the width of the drug's own 5-95% range")
    elif iv:
        lines.append("no test pair has an interval (every test drug is new to the predictor)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run's report

def report(run_dir: Path, preds: pd.DataFrame, train_pairs: pd.DataFrame, *, run: dict,
           baselines: dict[str, np.ndarray], spread: DrugSpread | None = None) -> dict:
    """A run's results, written by rank 0: predictions.parquet, metrics.json, the plots and
    report.md. `preds`: the test rows (row, drug, cell_line_id, LN_IC50, prediction; from a stack
    also its members' predictions, network and ridge, and the interval's bounds; z ...);
    `train_pairs`: each training pair's mean label (data.pair_labels), which the naive baselines
    are fitted on; `run`: what the report records of the run (split, seed, fold, parts, and the
    model's record, Predictor.record); `baselines`: the classical predictors' predictions of the
    same rows; `spread`: the training drugs' spread, for the per-line scores where the test lines
    are unseen (the cell_line split)."""
    members = None
    if "network" in preds:   # a stack or new drugs, scored beside the network alone
        members = {"network": preds["network"].to_numpy()}
        if "ridge" in preds and not preds["ridge"].isna().any():
            members["ridge_with_level"] = preds["ridge"].to_numpy()
    write_parquet(pa.Table.from_pandas(preds, preserve_index=False), run_dir / "predictions.parquet")
    result = evaluate(train_pairs, preds, preds["prediction"].to_numpy(), baselines=baselines,
                      members=members, spread=spread if run["split"] == "cell_line" else None)
    metrics = {**{k: v for k, v in run.items() if k not in ("history", "stack", "newdrugs")}, **result,
               "history": run["history"]}
    if "ln_ic50_low" in preds:
        # every test drug new (a split over drugs): the new-drug interval's quantiles at training lines
        new = "new_drug" in preds and bool(preds["new_drug"].all()) and run.get("newdrugs")
        source = run["newdrugs"] if new or not run.get("stack") else run["stack"]
        interval = interval_coverage(preds, preds["ln_ic50_low"].to_numpy(), preds["ln_ic50_high"].to_numpy(),
                                     train_pairs, source.get("scales"), source["level"])
        metrics["interval"] = {"level": source["level"], "new_drugs": bool(new),
                               **{k: v for k, v in interval.items() if k != "widest_drugs"}}
        metrics["interval_drugs"] = interval["widest_drugs"]
        if run.get("stack"):
            metrics["stack"] = {k: v for k, v in run["stack"].items() if k != "level"}
    if run.get("newdrugs"):
        metrics["newdrugs"] = run["newdrugs"]
    if run.get("skill"):
        covered = None
        if "ln_ic50_low" in preds:
            inside = (preds["LN_IC50"] >= preds["ln_ic50_low"]) & (preds["LN_IC50"] <= preds["ln_ic50_high"])
            covered = inside.groupby(preds["drug"]).mean().to_dict()
        metrics["skill"]["check"] = skill_check(run["skill"]["drugs"], result["test"]["per_drug"]["by_drug"],
                                                run["skill"]["coverage"], covered)
        plot_skill(run["skill"]["drugs"], result["test"]["per_drug"]["by_drug"], run_dir / "skill.png")
    metrics["verdict"] = verdict(metrics)
    write_json(metrics, run_dir / "metrics.json")
    plot_loss(run["history"], run["best_epoch"], run_dir / "loss_curve.png")
    plot_pairs(preds, run_dir / "pred_vs_measured.png", f"test pairs, {run['split']} split")
    plot_per_drug(metrics, run_dir / "per_drug_pearson.png")
    if metrics.get("interval", {}).get("calibration"):
        plot_calibration(metrics["interval"]["calibration"], run_dir / "calibration.png")
    write_report(run_dir, metrics)
    return metrics


def report_runs(results: dict[str, dict], work: Path, *, seeds: list[int], folds: int) -> dict:
    """Several runs (seeds, folds): every metric's mean and sd, metrics.json and report.md."""
    first = next(iter(results.values()))
    metrics = {**aggregate(results), "seeds": seeds, "folds": folds, "drug_encoder": first["drug_encoder"],
               "per_run": {k: {"test": v["test"], "baselines": v["baselines"], "members": v.get("members")}
                           for k, v in results.items()}}
    metrics["verdict"] = verdict(metrics)
    write_json(metrics, work / "metrics.json")
    if metrics.get("interval", {}).get("calibration"):
        plot_calibration(metrics["interval"]["calibration"], work / "calibration.png")
    write_report(work, metrics, runs=list(results))
    return metrics


REPORT_DRUGS = 10   # drugs listed per group in a prediction's report.md


def ranking_report(ranking: pd.DataFrame, pictures: dict[str, str], groupby: str, min_skill: float) -> str:
    """report.md of `main.py predict`: each group's first drugs with their interval, skill and
    drivers, and its picture."""
    relative = "z" in ranking.columns
    lines = ["# Drug sensitivity per group", "",
             f"Groups: {groupby}. " + (
                 "Each group's drugs are ordered by z, its predicted ln IC50 against the drug's GDSC "
                 "training lines (negative: more sensitive than they are), most specifically sensitive "
                 "first; ranking.csv lists every drug." if relative else
                 "Each group's drugs are ordered by predicted ln IC50.")]
    if "skill" in ranking.columns:
        lines += ["", f"*skill*: the drug's Pearson on lines the predictor did not learn from (cross-fitted "
                  f"within its training lines); below {min_skill} it is marked **low** and its rank is weak "
                  f"evidence. *drivers*: the genes whose expression in this group moves the prediction most "
                  f"from the drug's training mean, in z units (negative: towards sensitivity). They cover "
                  f"the linear part of the prediction (z_linear in ranking.csv); the network's part "
                  f"(z_network) is not attributed to genes. drivers.parquet holds each pair's 50 strongest."]
    for group, part in ranking.groupby("group", sort=True):
        part = part.sort_values("rank").head(REPORT_DRUGS)
        lines += ["", f"## {group}", ""]
        if group in pictures:
            lines += [f"![{group}]({pictures[group]})", ""]
        head = ["rank", "drug", "z [90% interval]" if relative else "ln IC50", "skill", "pathway", "drivers"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in part.to_dict("records"):
            value = (f"{r['z']:+.2f} [{r.get('z_low', np.nan):+.2f}, {r.get('z_high', np.nan):+.2f}]"
                     if relative else f"{r.get('ln_ic50', r.get('median_ln_ic50')):.2f}")
            skill = r.get("skill", np.nan)
            skill = ("new drug" if r.get("new_drug") else "–") if not np.isfinite(skill) else (
                f"{skill:.2f}" + (" **low**" if skill < min_skill else ""))
            lines.append(f"| {r['rank']} | {r['drug']} | {value} | {skill} | {r.get('pathway', '') or ''} "
                         f"| {r.get('drivers', '') or ''} |")
    return "\n".join(lines) + "\n"

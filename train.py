"""Fit the regressor: Adam, early stopping on validation loss, best weights restored and saved.

Targets are standardised with the training mean and sd (the loss is computed on that scale);
reported losses are MSE in ln IC50 units. On CUDA the forward pass runs under bf16 autocast.

A checkpoint is written every epoch (`last.pt`: model, optimiser, scheduler, RNG states, epoch,
early-stopping state) and `best.pt` whenever validation improves; `--resume` continues an
interrupted run to the same result. Under `torchrun` the run is data-parallel
(DistributedDataParallel; NCCL on GPUs, Gloo on CPUs): every rank draws the same shuffled global
batch and takes its share, so N processes compute the same gradient as one; validation and test
rows are split over the ranks and gathered; only rank 0 writes files.
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from common import PipelineError, atomic_path
from config import Config
from data import Features, Tokens, drug_lookup, gene_table_lists
from drugs import DrugTower, encode_drugs
from model import build_model, count_parameters

log = logging.getLogger("ic50.train")
T = TypeVar("T")

# What a checkpoint keeps of the configuration: what rebuilds the network and featurises new rows
# the same way (nanoGPT's model_args). Other settings may come and go without breaking it.
CHECKPOINT_FORMAT = 4   # 3: tensors and plain lists only (portable across numpy 1 and 2); drug
                        # names and the vocabulary's gene symbols and Ensembl ids; 4: per-gene
                        # statistics of the training profiles (models of normalised values)
MODEL_SETTINGS = ("value_kind", "tokens", "top_k", "expr_embedding", "gene_dim", "d_model", "n_heads",
                  "n_layers", "ff_dim", "head_dim", "dropout", "attn_dropout", "gene_dropout", "head",
                  "ensemble", "pos_encoding", "target", "drug_encoder", "smiles_model",
                  "smiles_pooling", "morgan_bits", "batch_size")
# What a model setting a checkpoint does not hold meant when it was written: the default of that
# time, not today's (format 1 predates expr_embedding; today's defaults differ from all of these)
RECORDED_LATER = {"value_kind": "counts", "tokens": "top_k", "top_k": 64, "expr_embedding": "linear",
                  "pos_encoding": "sinusoidal", "dropout": 0.1}


# ----------------------------------------------------------------------------- distributed

def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device_name: str, timeout_min: int = 720) -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op otherwise. The other
    ranks wait up to timeout_min for rank 0 (data preparation, the token store)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_min))


def on_main(fn: Callable[[], T]) -> T:
    """fn() on rank 0 while the other ranks wait; its result, or its error, reaches every rank."""
    if world()[1] == 1:
        return fn()
    box: list = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except BaseException as e:
            box[0] = ("error", str(e) if isinstance(e, PipelineError) else
                      f"rank 0 failed: {type(e).__name__}: {e}")
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise PipelineError(value)
    return value


def is_main() -> bool:
    return world()[0] == 0


def gather(arrays: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """Reassemble per-rank predictions (rank r holds rows index) into one array of n rows."""
    rank, size = world()
    if size == 1:
        return arrays
    parts = [None] * size
    dist.all_gather_object(parts, (index, arrays))
    out = np.empty(n, dtype=np.float64)
    for idx, vals in parts:
        out[idx] = vals
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda was asked for, but torch sees no CUDA GPU "
                            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}).")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


# ----------------------------------------------------------------------------- batches

class Batches(Dataset):
    """Item i is the i-th batch (index array) of a plan, gathered from the token store (or an
    in-memory Tokens); collation happens in the workers, which reopen the store's maps."""

    def __init__(self, feats: Features, plan: list[np.ndarray], vocab: np.ndarray,
                 target: Callable | None = None):
        self.feats, self.plan, self.vocab, self.target = feats, plan, vocab, target

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int):
        idx = self.plan[i]
        genes, values = self.feats.batch(idx, self.vocab)
        drug, y = self.feats.drug(idx), self.feats.y(idx)
        if self.target is not None:
            y = self.target(y, drug)
        return torch.from_numpy(genes), torch.from_numpy(values), torch.from_numpy(drug), torch.from_numpy(y)


def loader(feats: Features, plan: list[np.ndarray], vocab: np.ndarray, workers: int,
           device: torch.device, target: Callable | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches on the device, labels mapped by `target` (ln IC50 and drug -> what the network
    fits). On CUDA they come from pinned memory, and the next batch is copied while the current
    one computes (non-blocking copies, one batch ahead)."""
    cuda = device.type == "cuda"
    batches = iter(DataLoader(Batches(feats, plan, vocab, target), batch_size=None, shuffle=False,
                              num_workers=workers, pin_memory=cuda, persistent_workers=False))
    ahead = next(batches, None)
    ahead = None if ahead is None else tuple(x.to(device, non_blocking=cuda) for x in ahead)
    while ahead is not None:
        current = ahead
        ahead = next(batches, None)
        ahead = None if ahead is None else tuple(x.to(device, non_blocking=cuda) for x in ahead)
        yield current


def epoch_plan(feats: Features, batch_size: int, gen: np.random.Generator, bucket: bool
               ) -> list[np.ndarray]:
    """Shuffled global batches; with `bucket`, cells of similar length share a batch (less
    padding when every gene is a token), and the batch order is shuffled again."""
    # gen.permutation(n), in 4-byte indices where they fit (the same order and RNG stream)
    order = np.arange(len(feats), dtype=np.int32 if len(feats) < 2 ** 31 else np.int64)
    gen.shuffle(order)
    if bucket:
        window = batch_size * 50
        lengths = feats.lengths()
        order = np.concatenate([w[np.argsort(lengths[w], kind="stable")]
                                for w in np.array_split(order, max(1, len(order) // window))])
    plan = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket:
        plan = [plan[i] for i in gen.permutation(len(plan))]
    return plan


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# ----------------------------------------------------------------------------- the fitted model

def encode_target(y: np.ndarray, drug: np.ndarray, *, offset: np.ndarray | None,
                  scale: np.ndarray | None, mean: float, std: float) -> np.ndarray:
    if offset is not None:
        y = (y - offset[drug]) / scale[drug]
    return ((y - mean) / std).astype(np.float32)


@dataclass
class Trained:
    """A fitted model with everything needed to featurise new rows the same way."""
    model: torch.nn.Module   # an IC50Transformer, or an Ensemble of them
    cfg: Config
    vocab: np.ndarray
    smiles: list[str]
    drug_table: torch.Tensor
    drug_encoder: str
    y_mean: float
    y_std: float
    tower: DrugTower | None = None
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    # target != ln_ic50: per drug-table row, the offset and scale the network's target is taken
    # from (drug mean; drug sd), and the values a drug not in training gets
    offset: np.ndarray | None = None
    scale: np.ndarray | None = None
    unseen: tuple[float, float] = (0.0, 1.0)
    # drug name -> SMILES, for predicting by name; and the gene table the token ids come from
    # ({"token_id": [...], "gene_symbol": [...], "ensembl_id": [...]}; None where unknown),
    # which maps the genes of an .h5ad onto token ids
    drugs: dict[str, str] = field(default_factory=dict)
    genes: dict[str, list] | None = None
    # models of normalised values (bulk profiles): per vocabulary gene, the mean and sd of the
    # training profiles, which prediction aligns another platform's profiles to (predict.py)
    reference: dict | None = None

    def fit_target(self, part: Callable[[slice], tuple[np.ndarray, np.ndarray]], n: int,
                   chunk: int = 1 << 20) -> None:
        """Offsets and scales from the n training rows, then the mean and sd of what is left.
        part(rows) gives (ln IC50, drug-table row) of a slice of them: the sums run a chunk at a
        time, never over a copy of every row's label."""
        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for i in range(0, n, chunk):
                y, drug = part(slice(i, i + chunk))
                yield np.asarray(y, dtype=np.float64), drug

        if self.cfg.target != "ln_ic50":
            m = len(self.smiles)
            count, total, sq = np.zeros(m), np.zeros(m), np.zeros(m)
            for y, drug in chunks():
                count += np.bincount(drug, minlength=m)
                total += np.bincount(drug, weights=y, minlength=m)
            mean = total / np.maximum(count, 1)
            for y, drug in chunks():
                sq += np.bincount(drug, weights=(y - mean[drug]) ** 2, minlength=m)
            var, seen = sq / np.maximum(count, 1), count > 0
            zscore = self.cfg.target == "drug_zscore"
            scale = np.sqrt(var) if zscore else np.ones(m)
            scale[scale < 1e-6] = 1.0
            self.unseen = (float(total.sum() / max(count.sum(), 1)),
                           float(np.sqrt(var[seen].mean())) if zscore else 1.0)
            self.offset = np.where(seen, mean, self.unseen[0])
            self.scale = np.where(seen, scale, self.unseen[1])
        def left(y: np.ndarray, drug: np.ndarray) -> np.ndarray:
            return y if self.offset is None else (y - self.offset[drug]) / self.scale[drug]
        self.y_mean = float(sum(left(y, d).sum() for y, d in chunks()) / max(n, 1))
        var = sum(((left(y, d) - self.y_mean) ** 2).sum() for y, d in chunks()) / max(n, 1)
        self.y_std = float(np.sqrt(var)) or 1.0

    def target_encoder(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """(ln IC50, drug-table rows) -> what the network fits; small to pickle for loader workers."""
        return partial(encode_target, offset=self.offset, scale=self.scale, mean=self.y_mean,
                       std=self.y_std)

    def decode_target(self, out: np.ndarray, drug: np.ndarray) -> np.ndarray:
        y = out * self.y_std + self.y_mean
        return y if self.offset is None else y * self.scale[drug] + self.offset[drug]

    def features(self, tokens: Tokens, rows: np.ndarray | None = None,
                 drugs: dict[str, str] | None = None) -> Features:
        """Features of some rows (all by default) of tokens; their drugs are found by name among
        `drugs` (name -> SMILES; default: the drugs trained with)."""
        rows = np.arange(len(tokens)) if rows is None else rows
        return Features(tokens, rows, drug_lookup(tokens.drugs, self.rows_of(self.drugs if drugs is None
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
        vecs, name = encode_drugs(new, kind, self.cfg.smiles_model, self.cfg.smiles_pooling,
                                  self.cfg.morgan_bits)
        if name != self.drug_encoder:
            raise PipelineError(f"new SMILES were encoded with {name}, but the model was trained on "
                                f"{self.drug_encoder}; make that encoder available (--smiles-model).")
        self.smiles += new
        self.drug_table = torch.cat([self.drug_table, torch.from_numpy(vecs).to(self.drug_table.device)])
        if self.offset is not None:
            self.offset = np.concatenate([self.offset, np.full(len(new), self.unseen[0])])
            self.scale = np.concatenate([self.scale, np.full(len(new), self.unseen[1])])

    def drug_vectors(self, drug: torch.Tensor) -> torch.Tensor:
        return self.tower(drug) if self.tower is not None else self.drug_table[drug]

    @torch.no_grad()
    def predict(self, feats: Features, device: torch.device | None = None) -> np.ndarray:
        """ln IC50 for every row of feats; under torchrun the rows are split and gathered."""
        device = device or next(self.model.parameters()).device
        rank, size = world()
        mine = np.arange(rank, len(feats), size)
        self.model.eval()
        if self.tower is not None:
            self.tower.eval()
        plan = [mine[i:i + self.cfg.batch_size * 4] for i in range(0, len(mine), self.cfg.batch_size * 4)]
        out = []
        for g, v, d, _ in loader(feats, plan, self.vocab, 0, device):
            with autocast(device):
                out.append(self.model(g, v, self.drug_vectors(d), d).float().cpu().numpy())
        local = self.decode_target(np.concatenate(out) if out else np.zeros(0), feats.drug(mine))
        return gather(local, mine, len(feats))

    def state(self) -> dict:
        """What best.pt holds: tensors, numbers, strings and lists only, so that a checkpoint
        written under numpy 2 loads under numpy 1 and the other way round."""
        tensor = lambda a: None if a is None else torch.as_tensor(np.asarray(a))  # noqa: E731
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "model_args": {k: getattr(self.cfg, k) for k in MODEL_SETTINGS},
                "config": self.cfg.to_dict(),    # the run's settings, for the record only
                "vocab": tensor(self.vocab),
                "smiles": list(self.smiles), "drug_table": self.drug_table.cpu(),
                "drugs": dict(self.drugs), "genes": self.genes,
                "drug_encoder": self.drug_encoder, "y_mean": float(self.y_mean),
                "y_std": float(self.y_std), "n_tokens": self.model.gene_emb.num_embeddings,
                "drug_dim": self.model.drug_proj.in_features,
                "target": {"offset": tensor(self.offset), "scale": tensor(self.scale),
                           "unseen": [float(u) for u in self.unseen]},
                "reference": None if self.reference is None else
                {"mean": tensor(self.reference["mean"]), "sd": tensor(self.reference["sd"]),
                 "profiles": int(self.reference["profiles"])},
                "tower": self.tower.state_dict() if self.tower is not None else None}

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "Trained":
        """A checkpoint (best.pt) back into a model that can featurise and predict new rows."""
        try:
            state = torch.load(path, map_location=device, weights_only=False)
            cfg = model_config(state, str(path))
        except PipelineError:
            raise
        except Exception as e:  # missing, truncated, or not a torch file at all
            raise PipelineError(f"'{path}' is not a checkpoint written by this tool: "
                                f"{type(e).__name__}: {e}") from e
        heads = next((v for k, v in state["model"].items() if k.endswith("drug_heads.weight")), None)
        model = build_model(cfg, state["n_tokens"], state["drug_dim"],
                            0 if heads is None else heads.shape[0])
        model.load_state_dict(state["model"])
        tower = None
        if state.get("tower") is not None:
            tower = DrugTower(cfg.smiles_model, state["smiles"], cfg.smiles_pooling)
            tower.load_state_dict(state["tower"])
            tower.to(device)
        target = state.get("target") or {}
        array = lambda a: None if a is None else np.asarray(a)  # noqa: E731  (formats 1-2: numpy)
        return cls(model.to(device), cfg, array(state["vocab"]), list(state["smiles"]),
                   state["drug_table"].to(device), state["drug_encoder"], state["y_mean"],
                   state["y_std"], tower, offset=array(target.get("offset")),
                   scale=array(target.get("scale")), unseen=tuple(target.get("unseen", (0.0, 1.0))),
                   drugs=dict(state.get("drugs") or {}), genes=state.get("genes"),
                   reference=_reference(state.get("reference")))


def _reference(stored: dict | None) -> dict | None:
    if stored is None:
        return None
    return {"mean": np.asarray(stored["mean"], dtype=np.float64),
            "sd": np.asarray(stored["sd"], dtype=np.float64), "profiles": int(stored["profiles"])}


def model_config(state: dict, source: str) -> Config:
    """The checkpoint's model settings over the defaults. Format 1 stored the whole run
    configuration: its model settings are taken and the rest ignored. A setting this version does
    not know is skipped with a warning instead of failing."""
    from config import from_dict
    args = state.get("model_args")
    if args is None:   # format 1
        args = {k: v for k, v in state["config"].items() if k in MODEL_SETTINGS}
    known = set(Config.__dataclass_fields__)
    unknown = sorted(set(args) - known)
    if unknown:
        log.warning("checkpoint %s: setting(s) %s unknown to this version, ignored", source, unknown)
    args = {**RECORDED_LATER, **args}   # a setting absent: the checkpoint predates it
    cfg = from_dict({k: v for k, v in args.items() if k in known}, source)
    if cfg.value_kind == "auto":
        cfg.value_kind = "counts"
    return cfg


# ----------------------------------------------------------------------------- training

def make_scheduler(opt: torch.optim.Optimizer, cfg: Config):
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(1, cfg.patience // 2))
    return None


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
    tower), optimiser, scheduler, RNG, epoch and early-stopping counters, saved and restored
    together by state_dict() / load_state_dict(). main.py only wires data into it, as with
    Hugging Face's Trainer. Ranks appear in three methods: _all_sum (the training loss),
    _rng_states (each rank's RNG, for an exact resume) and _save (rank 0 writes)."""

    def __init__(self, cfg: Config, tokens: Tokens, rows: dict[str, np.ndarray], *,
                 drugs: dict[str, str], run_dir: Path, gene_table: pd.DataFrame | None = None):
        """`tokens`: every row's tokens, drug and label (the token store); `rows`: the train and
        val rows. `drugs`: name -> SMILES of every drug the model will be asked about,
        test drugs included (the encoder is frozen and never sees a label, so this leaks
        nothing). `gene_table` (gene_symbol, ensembl_id, token_id) names the vocabulary's genes
        in the checkpoint, so that .h5ad files can be mapped onto it."""
        seed_everything(cfg.seed)
        self.cfg, self.run_dir = cfg, run_dir
        self.device = pick_device(cfg.device)
        self.rank, self.size = world()
        t0 = time.perf_counter()
        vocab = tokens.vocabulary(rows["train"])
        self.trained = self._build(vocab, sorted(set(drugs.values())))
        self.trained.drugs = dict(drugs)
        if gene_table is not None:
            self.trained.genes = gene_table_lists(gene_table, vocab)
        if cfg.value_kind == "normalised":
            self.trained.reference = tokens.statistics(rows["train"], vocab)
        self.train_set, self.val_set = self._features(tokens, rows)
        log.info("features: %d train / %d val cells, %s genes per cell%s, vocabulary %d genes "
                 "(%.1fs)", len(self.train_set), len(self.val_set), tokens.width or "all",
                 " pooled into one token" if cfg.tokens == "pooled" else "", len(vocab),
                 time.perf_counter() - t0)
        model, tower = self.trained.model, self.trained.tower
        self.params = list(model.parameters()) + (list(tower.parameters()) if tower is not None else [])
        log.info("model: %s trainable parameters on %s%s", f"{count_parameters(model):,}",
                 self.device, f" x {self.size} processes" if self.size > 1 else "")
        self.net = model if self.size == 1 else torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = compiled(self.net) if cfg.compile else self.net
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = make_scheduler(self.opt, cfg)
        self.gen = np.random.default_rng(cfg.seed)
        self.epoch, self.best, self.best_epoch, self.waited = 0, float("inf"), 0, 0

    def _build(self, vocab: np.ndarray, smiles: list[str]) -> Trained:
        """Drug vectors (and the tower when fine-tuning), the gene vocabulary, the network."""
        cfg = self.cfg
        vecs, encoder = encode_drugs(smiles, cfg.drug_encoder, cfg.smiles_model, cfg.smiles_pooling,
                                     cfg.morgan_bits)
        tower = None
        if cfg.finetune_drug_encoder:
            if self.size > 1:
                raise PipelineError("--finetune-drug-encoder runs in one process only: under torchrun "
                                    "its gradients would not be synchronised. Train it without "
                                    "torchrun, or freeze the encoder.")
            if not encoder.startswith("chemberta"):
                raise PipelineError("--finetune-drug-encoder needs ChemBERTa, but it could not be "
                                    "loaded (see the warning above); fingerprints have nothing to "
                                    "fine-tune.")
            tower = DrugTower(cfg.smiles_model, smiles, cfg.smiles_pooling).to(self.device)
        model = build_model(cfg, len(vocab) + 2, vecs.shape[1], len(smiles)).to(self.device)
        return Trained(model, cfg, vocab, smiles, torch.from_numpy(vecs).to(self.device), encoder,
                       0.0, 1.0, tower)

    def _features(self, tokens: Tokens, rows: dict[str, np.ndarray]) -> tuple[Features, Features]:
        """Training and validation features; the training targets' normalisation."""
        tr = self.trained.features(tokens, rows["train"])
        va = self.trained.features(tokens, rows["val"])
        self.trained.fit_target(lambda part: (tr.y(part), tr.drug(part)), len(tr))
        self.row_weight = None   # a row's squared error in ln IC50 units, over its normalised one
        if self.trained.scale is not None:
            self.row_weight = torch.as_tensor(self.trained.scale ** 2, dtype=torch.float32,
                                              device=self.device)
        return tr, va

    # -- resumable state

    def state_dict(self) -> dict:
        """Everything an interrupted run needs to go on as if it had not stopped. Under torchrun
        every rank must call it (the RNG states are gathered)."""
        t = self.trained
        return {"model": t.model.state_dict(), "tower": t.tower.state_dict() if t.tower else None,
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched is not None else None,
                "rng": self._rng_states(), "epoch": self.epoch, "best": self.best,
                "best_epoch": self.best_epoch, "waited": self.waited, "history": t.history}

    def load_state_dict(self, state: dict) -> None:
        t = self.trained
        t.model.load_state_dict(state["model"])
        if t.tower is not None and state.get("tower") is not None:
            t.tower.load_state_dict(state["tower"])
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None and state.get("scheduler"):
            self.sched.load_state_dict(state["scheduler"])
        rng = state["rng"]
        set_rng_state(self.gen, rng[self.rank] if isinstance(rng, list) else rng)
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self.waited, t.history = state["waited"], state["history"]

    # -- the loop

    def fit(self, resume: bool = False) -> Trained:
        """Epochs until early stopping; best.pt whenever validation improves, last.pt every epoch;
        the best weights restored at the end."""
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
        plan = epoch_plan(self.train_set, cfg.batch_size, self.gen, bucket=cfg.tokens == "all")
        plan = plan[:cfg.epoch_steps] if cfg.epoch_steps else plan
        shards = [b[self.rank::self.size] for b in plan if len(b) >= self.size]  # ranks step together
        totals = [len(b) for b in plan if len(b) >= self.size]
        for (g, v, d, target), total in zip(loader(self.train_set, shards, t.vocab, cfg.loader_workers,
                                                   self.device, t.target_encoder()), totals):
            with autocast(self.device):
                pred = self.forward(g, v, t.drug_vectors(d), d)
            sq = (pred.float() - target) ** 2 if pred.dim() == 1 else \
                ((pred.float() - target.unsqueeze(-1)) ** 2).mean(-1)   # an ensemble: each member's loss
            err = sq.sum()
            loss = err / total * self.size   # DDP averages over ranks: the global-batch mean
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.opt.step()
            sse += (err if self.row_weight is None else (sq * self.row_weight[d]).sum()).item()
            n += len(target)
        sse, n = self._all_sum(sse, n)
        return sse / max(n, 1) * t.y_std ** 2

    def end_epoch(self, epoch: int, train_mse: float, val_mse: float, seconds: float) -> None:
        """Schedule, history, early-stopping counters, checkpoints."""
        if self.sched is not None:
            self.sched.step(val_mse) if self.cfg.lr_schedule == "plateau" else self.sched.step()
        self.trained.history.append({"epoch": epoch, "train_mse": round(train_mse, 5),
                                     "val_mse": round(val_mse, 5), "lr": self.opt.param_groups[0]["lr"],
                                     "seconds": round(seconds, 2)})
        if not np.isfinite(train_mse):
            raise PipelineError(f"training diverged at epoch {epoch} (loss {train_mse}); lower --lr.")
        self.epoch = epoch
        if val_mse < self.best:
            self.best, self.best_epoch, self.waited = val_mse, epoch, 0
            self._save("best.pt", {**self.trained.state(), "epoch": epoch, "val_mse": val_mse})
        else:
            self.waited += 1
        state = self.state_dict()
        self._save("last.pt", {**self.trained.state(), **state})

    def _restore_best(self) -> None:
        if self.size > 1:
            dist.barrier()   # rank 0 has written best.pt
        state = torch.load(self.run_dir / "best.pt", map_location=self.device, weights_only=False)
        self.trained.model.load_state_dict(state["model"])
        if self.trained.tower is not None:
            self.trained.tower.load_state_dict(state["tower"])
        self.trained.best_epoch = self.best_epoch

    # -- ranks

    def _all_sum(self, *values: float) -> list[float]:
        if self.size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def _rng_states(self) -> dict | list[dict]:
        """This rank's RNG states; under torchrun every rank's, gathered."""
        states = rng_state(self.gen)
        if self.size == 1:
            return states
        gathered = [None] * self.size
        dist.all_gather_object(gathered, states)
        return gathered

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


def train(cfg: Config, tokens: Tokens, rows: dict[str, np.ndarray], *,
          drugs: dict[str, str], run_dir: Path, resume: bool = False,
          gene_table: pd.DataFrame | None = None) -> Trained:
    """Fit a model on the training rows, early-stopped on the validation rows (see Trainer)."""
    return Trainer(cfg, tokens, rows, drugs=drugs, run_dir=run_dir, gene_table=gene_table).fit(resume)

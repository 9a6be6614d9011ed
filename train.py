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
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from common import PipelineError, atomic_path
from config import Config
from data import Features, build_features, gene_vocabulary
from model import DrugTower, build_model, count_parameters, encode_drugs

log = logging.getLogger("ic50.train")


# ----------------------------------------------------------------------------- distributed

def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device_name: str) -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")


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
    """Item i is the i-th batch (index array) of a plan; collation happens in the workers."""

    def __init__(self, feats: Features, plan: list[np.ndarray]):
        self.feats, self.plan = feats, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int):
        idx = self.plan[i]
        genes, values = self.feats.tokens(idx)
        return (torch.from_numpy(genes).long(), torch.from_numpy(values),
                torch.from_numpy(self.feats.drug[idx]), torch.from_numpy(self.feats.y[idx]))


def loader(feats: Features, plan: list[np.ndarray], workers: int, device: torch.device) -> DataLoader:
    return DataLoader(Batches(feats, plan), batch_size=None, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def epoch_plan(feats: Features, batch_size: int, gen: np.random.Generator, bucket: bool
               ) -> list[np.ndarray]:
    """Shuffled global batches; with `bucket`, cells of similar length share a batch (less
    padding when every gene is a token), and the batch order is shuffled again."""
    order = gen.permutation(len(feats.y))
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

    def fit_target(self, y: np.ndarray, drug: np.ndarray) -> None:
        """Offsets and scales from the training rows, then the mean and sd of what is left."""
        kind = self.cfg.target
        if kind != "ln_ic50":
            n = len(self.smiles)
            count = np.bincount(drug, minlength=n)
            mean = np.bincount(drug, weights=y, minlength=n) / np.maximum(count, 1)
            var = np.bincount(drug, weights=(y - mean[drug]) ** 2, minlength=n) / np.maximum(count, 1)
            seen = count > 0
            scale = np.sqrt(var) if kind == "drug_zscore" else np.ones(n)
            scale[scale < 1e-6] = 1.0
            self.unseen = (float(y.mean()), float(np.sqrt(var[seen].mean())) if kind == "drug_zscore" else 1.0)
            self.offset = np.where(seen, mean, self.unseen[0])
            self.scale = np.where(seen, scale, self.unseen[1])
            y = (y - self.offset[drug]) / self.scale[drug]
        self.y_mean, self.y_std = float(y.mean()), float(y.std() or 1.0)

    def encode_target(self, y: np.ndarray, drug: np.ndarray) -> np.ndarray:
        if self.offset is not None:
            y = (y - self.offset[drug]) / self.scale[drug]
        return ((y - self.y_mean) / self.y_std).astype(np.float32)

    def decode_target(self, out: np.ndarray, drug: np.ndarray) -> np.ndarray:
        y = out * self.y_std + self.y_mean
        return y if self.offset is None else y * self.scale[drug] + self.offset[drug]

    def features(self, table: pa.Table) -> Features:
        index = drug_index(table, self.smiles)
        return build_features(table, self.vocab, index, self.cfg.top_k, self.cfg.tokens,
                              value_kind=self.cfg.value_kind)

    def drug_vectors(self, drug: torch.Tensor) -> torch.Tensor:
        return self.tower(drug) if self.tower is not None else self.drug_table[drug]

    @torch.no_grad()
    def predict(self, feats: Features, device: torch.device | None = None) -> np.ndarray:
        """ln IC50 for every row of feats; under torchrun the rows are split and gathered."""
        device = device or next(self.model.parameters()).device
        rank, size = world()
        mine = np.arange(rank, len(feats.y), size)
        self.model.eval()
        if self.tower is not None:
            self.tower.eval()
        plan = [mine[i:i + self.cfg.batch_size * 4] for i in range(0, len(mine), self.cfg.batch_size * 4)]
        out = []
        for g, v, d, _ in loader(feats, plan, 0, device):
            g, v, d = g.to(device), v.to(device), d.to(device)
            with autocast(device):
                out.append(self.model(g, v, self.drug_vectors(d), d).float().cpu().numpy())
        local = self.decode_target(np.concatenate(out) if out else np.zeros(0), feats.drug[mine])
        return gather(local, mine, len(feats.y))

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "config": self.cfg.to_dict(), "vocab": self.vocab,
                "smiles": self.smiles, "drug_table": self.drug_table.cpu(),
                "drug_encoder": self.drug_encoder, "y_mean": self.y_mean, "y_std": self.y_std,
                "n_tokens": self.model.gene_emb.num_embeddings,
                "drug_dim": self.model.drug_proj.in_features,
                "target": {"offset": self.offset, "scale": self.scale, "unseen": self.unseen},
                "tower": self.tower.state_dict() if self.tower is not None else None}

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "Trained":
        """A checkpoint (best.pt) back into a model that can featurise and predict new rows."""
        from config import from_dict
        try:
            state = torch.load(path, map_location=device, weights_only=False)
            cfg = from_dict({k: v for k, v in state["config"].items() if k != "resume"}, str(path))
        except Exception as e:  # missing, truncated, or not a torch file at all
            raise PipelineError(f"'{path}' is not a checkpoint written by this tool: "
                                f"{type(e).__name__}: {e}") from None
        if cfg.value_kind == "auto":  # checkpoints from before value kinds hold counts
            cfg.value_kind = "counts"
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
        return cls(model.to(device), cfg, state["vocab"], list(state["smiles"]),
                   state["drug_table"].to(device), state["drug_encoder"], state["y_mean"],
                   state["y_std"], tower, offset=target.get("offset"), scale=target.get("scale"),
                   unseen=tuple(target.get("unseen", (0.0, 1.0))))

    def add_drugs(self, smiles: list[str]) -> None:
        """Encode SMILES the checkpoint has not seen, with the encoder it was trained with."""
        new = [s for s in dict.fromkeys(smiles) if s not in set(self.smiles)]
        if not new:
            return
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


def drug_index(table: pa.Table, smiles: list[str]) -> dict[str, int]:
    """Tahoe drug name -> row of the drug table (drugs are looked up by their SMILES)."""
    pos = {s: i for i, s in enumerate(smiles)}
    pairs = table.select(["drug", "canonical_smiles"]).to_pandas().drop_duplicates()
    missing = pairs[~pairs["canonical_smiles"].isin(pos)]
    if len(missing):
        raise PipelineError(f"drug(s) {missing['drug'].tolist()[:5]} have SMILES the model was not "
                            f"given an embedding for.")
    dup = pairs[pairs.duplicated("drug", keep=False)]
    if len(dup):
        raise PipelineError(f"drug {dup['drug'].iloc[0]!r} appears with several SMILES in the table; "
                            f"each drug name must have one canonical_smiles.")
    return {d: pos[s] for d, s in zip(pairs["drug"], pairs["canonical_smiles"])}


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


def train(cfg: Config, train_table: pa.Table, val_table: pa.Table, smiles: list[str],
          run_dir: Path, resume: bool = False) -> Trained:
    """`smiles`: every drug the model will be asked about, test drugs included (the encoder is
    frozen and never sees a label, so this leaks nothing)."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    rank, size = world()
    vecs, encoder = encode_drugs(smiles, cfg.drug_encoder, cfg.smiles_model, cfg.smiles_pooling,
                                 cfg.morgan_bits)
    tower = None
    if cfg.finetune_drug_encoder:
        if size > 1:
            raise PipelineError("--finetune-drug-encoder runs in one process only: under torchrun "
                                "its gradients would not be synchronised. Train it without torchrun, "
                                "or freeze the encoder.")
        if not encoder.startswith("chemberta"):
            raise PipelineError("--finetune-drug-encoder needs ChemBERTa, but it could not be loaded "
                                "(see the warning above); fingerprints have nothing to fine-tune.")
        tower = DrugTower(cfg.smiles_model, smiles, cfg.smiles_pooling).to(device)
    vocab = gene_vocabulary(train_table["genes"])
    model = build_model(cfg, len(vocab) + 2, vecs.shape[1], len(smiles)).to(device)
    trained = Trained(model, cfg, vocab, smiles, torch.from_numpy(vecs).to(device), encoder,
                      0.0, 1.0, tower)
    t0 = time.perf_counter()
    tr, va = trained.features(train_table), trained.features(val_table)
    trained.fit_target(train_table["LN_IC50"].to_numpy(), tr.drug)
    log.info("features: %d train / %d val cells, %s gene tokens per cell, vocabulary %d genes (%.1fs)",
             len(tr.y), len(va.y), "all" if cfg.tokens == "all" else cfg.top_k, len(vocab),
             time.perf_counter() - t0)
    params = list(model.parameters()) + (list(tower.parameters()) if tower is not None else [])
    log.info("model: %s trainable parameters on %s%s", f"{count_parameters(model):,}", device,
             f" x {size} processes" if size > 1 else "")

    net = model
    if size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = make_scheduler(opt, cfg)
    gen = np.random.default_rng(cfg.seed)
    best, best_epoch, waited, start = float("inf"), 0, 0, 1
    last, ckpt = run_dir / "last.pt", run_dir / "best.pt"
    if resume and last.exists():
        state = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        if tower is not None and state.get("tower") is not None:
            tower.load_state_dict(state["tower"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        set_rng_state(gen, state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
        best, best_epoch, waited = state["best"], state["best_epoch"], state["waited"]
        trained.history, start = state["history"], state["epoch"] + 1
        log.info("resumed from %s after epoch %d (best validation MSE %.4f at epoch %d)", last,
                 state["epoch"], best, best_epoch)

    y_tr = Features(tr.genes, tr.values, tr.drug, trained.encode_target(tr.y, tr.drug), tr.offsets)
    row_weight = None   # a row's squared error in ln IC50 units, over its squared normalised error
    if trained.scale is not None:
        row_weight = torch.as_tensor(trained.scale ** 2, dtype=torch.float32, device=device)
    stopped = waited >= cfg.patience
    bar = tqdm(range(start, cfg.epochs + 1), desc="train", unit=" epoch", leave=False,
               disable=not is_main() or stopped)
    for epoch in (bar if not stopped else []):
        net.train()
        if tower is not None:
            tower.train()
        t_ep, sse, n = time.perf_counter(), 0.0, 0
        plan = epoch_plan(y_tr, cfg.batch_size, gen, bucket=cfg.tokens == "all")
        shards = [b[rank::size] for b in plan if len(b) >= size]   # every rank steps together
        totals = [len(b) for b in plan if len(b) >= size]
        for (g, v, d, target), total in zip(loader(y_tr, shards, cfg.loader_workers, device), totals):
            g, v, d, target = (t.to(device, non_blocking=True) for t in (g, v, d, target))
            with autocast(device):
                pred = net(g, v, trained.drug_vectors(d), d)
            sq = (pred.float() - target) ** 2 if pred.dim() == 1 else \
                ((pred.float() - target.unsqueeze(-1)) ** 2).mean(-1)   # an ensemble: each member's loss
            err = sq.sum()
            loss = err / total * size   # DDP averages over ranks: the global-batch mean
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sse += (err if row_weight is None else (sq * row_weight[d]).sum()).item()
            n += len(target)
        if size > 1:
            t = torch.tensor([sse, n], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            sse, n = t.tolist()
        train_mse = sse / max(n, 1) * trained.y_std ** 2
        val_mse = float(np.mean((trained.predict(va, device) - va.y) ** 2))
        if sched is not None:
            sched.step(val_mse) if cfg.lr_schedule == "plateau" else sched.step()
        trained.history.append({"epoch": epoch, "train_mse": round(train_mse, 5), "val_mse": round(val_mse, 5),
                                "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t_ep, 2)})
        bar.set_postfix(train=f"{train_mse:.3f}", val=f"{val_mse:.3f}", best=f"{min(best, val_mse):.3f}")
        if not np.isfinite(train_mse):
            raise PipelineError(f"training diverged at epoch {epoch} (loss {train_mse}); lower --lr.")
        if val_mse < best:
            best, best_epoch, waited = val_mse, epoch, 0
            if is_main():
                with atomic_path(ckpt) as tmp:
                    torch.save({**trained.state(), "epoch": epoch, "val_mse": val_mse}, tmp)
        else:
            waited += 1
        rngs = rng_state(gen)
        if size > 1:
            gathered = [None] * size
            dist.all_gather_object(gathered, rngs)
            rngs = gathered
        if is_main():
            with atomic_path(last) as tmp:
                torch.save({**trained.state(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict() if sched is not None else None,
                            "rng": rngs, "epoch": epoch, "best": best, "best_epoch": best_epoch,
                            "waited": waited, "history": trained.history}, tmp)
        if waited >= cfg.patience:
            log.info("early stop at epoch %d: no better validation loss for %d epochs", epoch, cfg.patience)
            break
    if size > 1:
        dist.barrier()
    state = torch.load(ckpt, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    if tower is not None:
        tower.load_state_dict(state["tower"])
    trained.best_epoch = best_epoch
    log.info("trained %d epochs in %.0fs; best validation MSE %.4f at epoch %d (weights restored)",
             len(trained.history), time.perf_counter() - t0, best, best_epoch)
    return trained

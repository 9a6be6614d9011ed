"""Fit the regressor: Adam, early stopping on validation loss, best weights restored and saved.

Targets are standardised with the training mean and sd (the loss is computed on that scale);
reported losses are MSE in ln IC50 units. On CUDA the forward pass runs under bf16 autocast.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from common import PipelineError, atomic_path
from config import Config
from data import Features, build_features, gene_vocabulary
from model import IC50Transformer, count_parameters, encode_drugs

log = logging.getLogger("ic50.train")


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
    return torch.device(name)


@dataclass
class Trained:
    """A fitted model with everything needed to featurise new rows the same way."""
    model: IC50Transformer
    cfg: Config
    vocab: np.ndarray
    smiles: list[str]
    drug_table: torch.Tensor
    drug_encoder: str
    y_mean: float
    y_std: float
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0

    def features(self, table: pa.Table) -> Features:
        return build_features(table, self.vocab, drug_index(table, self.smiles), self.cfg.top_k)

    @torch.no_grad()
    def predict(self, feats: Features, device: torch.device | None = None) -> np.ndarray:
        device = device or next(self.model.parameters()).device
        self.model.eval()
        out = []
        for sl in batches(len(feats.y), self.cfg.batch_size * 4):
            g, v, d, _ = to_device(feats, sl, device)
            with autocast(device):
                out.append(self.model(g, v, self.drug_table[d]).float().cpu().numpy())
        return np.concatenate(out) * self.y_std + self.y_mean if out else np.zeros(0)

    def save(self, path: Path, epoch: int, val_mse: float) -> None:
        state = {"model": self.model.state_dict(), "config": self.cfg.to_dict(),
                 "vocab": self.vocab, "smiles": self.smiles, "drug_table": self.drug_table.cpu(),
                 "drug_encoder": self.drug_encoder, "y_mean": self.y_mean, "y_std": self.y_std,
                 "n_tokens": self.model.gene_emb.num_embeddings, "epoch": epoch, "val_mse": val_mse}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)


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


def batches(n: int, size: int, order: np.ndarray | None = None):
    idx = np.arange(n) if order is None else order
    for i in range(0, n, size):
        yield idx[i:i + size]


def to_device(f: Features, sl, device: torch.device):
    return (torch.from_numpy(f.genes[sl]).long().to(device), torch.from_numpy(f.values[sl]).to(device),
            torch.from_numpy(f.drug[sl]).to(device), torch.from_numpy(f.y[sl]).to(device))


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train(cfg: Config, train_table: pa.Table, val_table: pa.Table, smiles: list[str],
          run_dir: Path) -> Trained:
    """`smiles`: every drug the model will be asked about, test drugs included (the encoder is
    frozen and never sees a label, so this leaks nothing)."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    vecs, encoder = encode_drugs(smiles, cfg.drug_encoder, cfg.smiles_model, cfg.smiles_pooling,
                                 cfg.morgan_bits)
    vocab = gene_vocabulary(train_table["genes"])
    y = train_table["LN_IC50"].to_numpy()
    model = IC50Transformer.from_config(cfg, len(vocab) + 2, vecs.shape[1]).to(device)
    trained = Trained(model, cfg, vocab, smiles, torch.from_numpy(vecs).to(device), encoder,
                      float(y.mean()), float(y.std() or 1.0))
    t0 = time.perf_counter()
    tr, va = trained.features(train_table), trained.features(val_table)
    log.info("features: %d train / %d val cells, %d gene tokens each, vocabulary %d genes (%.1fs)",
             len(tr.y), len(va.y), cfg.top_k, len(vocab), time.perf_counter() - t0)
    log.info("model: %s trainable parameters on %s", f"{count_parameters(model):,}", device)

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = np.random.default_rng(cfg.seed)
    y_tr = (tr.y - trained.y_mean) / trained.y_std
    best, best_epoch, waited = float("inf"), 0, 0
    ckpt = run_dir / "best.pt"
    bar = tqdm(range(1, cfg.epochs + 1), desc="train", unit=" epoch", leave=False)
    for epoch in bar:
        model.train()
        t_ep, total, n = time.perf_counter(), 0.0, 0
        for sl in batches(len(y_tr), cfg.batch_size, gen.permutation(len(y_tr))):
            g, v, d, _ = to_device(tr, sl, device)
            target = torch.from_numpy(y_tr[sl]).to(device)
            with autocast(device):
                pred = model(g, v, trained.drug_table[d])
            loss = torch.nn.functional.mse_loss(pred.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(sl)
            n += len(sl)
        train_mse = total / max(n, 1) * trained.y_std ** 2
        val_mse = float(np.mean((trained.predict(va, device) - va.y) ** 2))
        trained.history.append({"epoch": epoch, "train_mse": round(train_mse, 5),
                                "val_mse": round(val_mse, 5),
                                "seconds": round(time.perf_counter() - t_ep, 2)})
        bar.set_postfix(train=f"{train_mse:.3f}", val=f"{val_mse:.3f}", best=f"{min(best, val_mse):.3f}")
        log.debug("epoch %d: train MSE %.4f, val MSE %.4f", epoch, train_mse, val_mse)
        if not np.isfinite(train_mse):
            raise PipelineError(f"training diverged at epoch {epoch} (loss {train_mse}); lower --lr.")
        if val_mse < best:
            best, best_epoch, waited = val_mse, epoch, 0
            trained.save(ckpt, epoch, val_mse)
        else:
            waited += 1
            if waited >= cfg.patience:
                log.info("early stop at epoch %d: no better validation loss for %d epochs", epoch,
                         cfg.patience)
                break
    state = torch.load(ckpt, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    trained.best_epoch = best_epoch
    log.info("trained %d epochs in %.0fs; best validation MSE %.4f at epoch %d (weights restored)",
             len(trained.history), time.perf_counter() - t0, best, best_epoch)
    return trained

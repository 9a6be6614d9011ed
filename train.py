"""Fit the network: Adam, early stopping on validation loss, best weights restored.

Targets are standardised with the training mean and sd (the loss is computed on that scale);
reported losses are MSE in ln IC50 units. On CUDA the forward pass runs under bf16 autocast.

Every epoch writes `last.pt` (model, optimiser, RNG states, epoch, early-stopping state and the
best epoch's weights), from which `--resume` continues an interrupted run to the same result.
Under `torchrun` the run is data-parallel (DistributedDataParallel; NCCL on GPUs, Gloo on CPUs):
every rank draws the same shuffled global batch and takes its share, so N processes compute the
same gradient as one; validation rows are split over the ranks and gathered; only rank 0 writes
files (dist.py).

The Trainer trains a network (predictor/network.py: the model with its vocabulary, drug table and
label scale) and knows nothing else of the predictor: what completes it once training ends, and
the checkpoint, are the Predictor's (predictor/predictor.py).
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

import dist
from common import PipelineError, atomic_path
from config import Config
from ingest.tokens import TokenTable, epoch_plan, loader
from model import count_parameters

log = logging.getLogger("ic50.train")


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
    """Owns the training loop and everything a resumed run needs: the network's model (and
    fine-tuned drug tower), optimiser, RNG, epoch and early-stopping counters, saved and restored
    together by state_dict() / load_state_dict(). main.py only wires data into it, as with Hugging
    Face's Trainer. Ranks appear in three places: the training loss (summed), the RNG states
    (gathered, for an exact resume) and _save (rank 0 writes)."""

    def __init__(self, network, table: TokenTable, rows: dict[str, np.ndarray], *, cfg: Config,
                 run_dir: Path):
        """`network`: the fresh network (Network.create: its model, tower, vocabulary, drug table
        and label scale); `table`: every row's tokens, drug and label (the token store); `rows`: the
        train and val rows; `cfg`: the run's settings."""
        self.network, self.cfg, self.run_dir, self.device = network, cfg, run_dir, network.device
        self.rank, self.size = dist.world()
        self.train_set = network.features(table, rows["train"])
        self.val_set = network.features(table, rows["val"])
        log.info("features: %d train / %d val cells, %s genes per cell%s, vocabulary %d genes",
                 len(self.train_set), len(self.val_set), table.width or "all",
                 " pooled into one token" if network.cfg.gene_tokens == "pooled" else "", len(network.vocab))
        model, tower = network.model, network.tower
        self.params = list(model.parameters()) + (list(tower.parameters()) if tower is not None else [])
        log.info("model: %s trainable parameters on %s%s", f"{count_parameters(model):,}",
                 self.device, f" x {self.size} processes" if self.size > 1 else "")
        self.net = model if self.size == 1 else torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = compiled(self.net) if cfg.compile else self.net
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = np.random.default_rng(cfg.seed)
        self.epoch, self.best, self.best_epoch, self.waited = 0, float("inf"), 0, 0
        self.best_weights: dict | None = None   # the best epoch's model (and tower), on the CPU

    # -- resumable state

    def state_dict(self) -> dict:
        """Everything an interrupted run needs to go on as if it had not stopped. Under torchrun
        every rank must call it (the RNG states are gathered)."""
        n = self.network
        rng = dist.all_gather(rng_state(self.gen)) if self.size > 1 else rng_state(self.gen)
        return {"model": n.model.state_dict(), "tower": n.tower.state_dict() if n.tower else None,
                "optimizer": self.opt.state_dict(), "rng": rng, "epoch": self.epoch, "best": self.best,
                "best_epoch": self.best_epoch, "waited": self.waited, "history": n.history,
                "best_weights": self.best_weights}

    def load_state_dict(self, state: dict) -> None:
        n = self.network
        n.model.load_state_dict(state["model"])
        if n.tower is not None and state.get("tower") is not None:
            n.tower.load_state_dict(state["tower"])
        self.opt.load_state_dict(state["optimizer"])
        rng = state["rng"]
        set_rng_state(self.gen, rng[self.rank] if isinstance(rng, list) else rng)
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self.waited, n.history = state["waited"], state["history"]
        self.best_weights = state.get("best_weights")

    # -- the loop

    def fit(self, resume: bool = False):
        """Epochs until early stopping, last.pt every epoch (with the best epoch's weights); the
        best weights restored at the end. The network, trained."""
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
            val_pred = self.network.predict(self.val_set, self.device)
            val_mse = float(np.mean((val_pred - self.val_set.y()) ** 2))
            self.end_epoch(epoch, train_mse, val_mse, time.perf_counter() - t_ep)
            bar.set_postfix(train=f"{train_mse:.3f}", val=f"{val_mse:.3f}", best=f"{self.best:.3f}")
            if self.waited >= self.cfg.patience:
                log.info("early stop at epoch %d: no better validation loss for %d epochs", epoch,
                         self.cfg.patience)
                break
        self._restore_best()
        log.info("trained %d epochs in %.0fs; best validation MSE %.4f at epoch %d (weights "
                 "restored)", len(self.network.history), time.perf_counter() - t0, self.best,
                 self.best_epoch)
        return self.network

    def train_epoch(self) -> float:
        """One pass over shuffled global batches (every rank takes its share of each); the
        training MSE in ln IC50 units."""
        cfg, n = self.cfg, self.network
        self.net.train()
        if n.tower is not None:
            n.tower.train()
        sse, count = 0.0, 0
        bucket = n.cfg.gene_tokens == "each" and not n.cfg.top_k   # every gene a token: less padding
        plan = epoch_plan(self.train_set, cfg.batch_size, self.gen, bucket=bucket)
        plan = plan[:cfg.epoch_steps] if cfg.epoch_steps else plan
        shards = [b[self.rank::self.size] for b in plan if len(b) >= self.size]  # ranks step together
        totals = [len(b) for b in plan if len(b) >= self.size]
        for (g, v, d, target), total in zip(loader(self.train_set, shards, n.vocab, cfg.loader_workers,
                                                   self.device, (n.y_mean, n.y_std)), totals):
            with dist.autocast(self.device):
                pred = self.forward(g, v, n.drug_vectors(d), d)
            sq = (pred.float() - target) ** 2 if pred.dim() == 1 else \
                ((pred.float() - target.unsqueeze(-1)) ** 2).mean(-1)   # an ensemble: each member's loss
            err = sq.sum()
            loss = err / total * self.size   # DDP averages over ranks: the global-batch mean
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            sse += err.item()
            count += len(target)
        sse, count = dist.all_sum([sse, count], self.device)
        return sse / max(count, 1) * n.y_std ** 2

    def end_epoch(self, epoch: int, train_mse: float, val_mse: float, seconds: float) -> None:
        """History, early-stopping counters, checkpoints."""
        self.network.history.append({"epoch": epoch, "train_mse": round(train_mse, 5),
                                     "val_mse": round(val_mse, 5), "lr": self.opt.param_groups[0]["lr"],
                                     "seconds": round(seconds, 2)})
        if not np.isfinite(train_mse):
            raise PipelineError(f"training diverged at epoch {epoch} (loss {train_mse}); lower --lr.")
        self.epoch = epoch
        if val_mse < self.best:
            self.best, self.best_epoch, self.waited = val_mse, epoch, 0
            n = self.network
            cpu = lambda m: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}  # noqa: E731
            self.best_weights = {"model": cpu(n.model), "tower": cpu(n.tower) if n.tower else None}
        else:
            self.waited += 1
        state = self.state_dict()
        self._save("last.pt", state)

    def _restore_best(self) -> None:
        """Every rank holds the same best weights: validation is gathered, so all saw one best."""
        if self.best_weights is not None:
            self.network.model.load_state_dict(self.best_weights["model"])
            if self.network.tower is not None:
                self.network.tower.load_state_dict(self.best_weights["tower"])
        self.network.best_epoch = self.best_epoch

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

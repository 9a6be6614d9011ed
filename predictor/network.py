"""The network with what it reads: the Transformer (model.py), the gene vocabulary, the drug table,
the label scale, and batched prediction.

Everything that turns rows into the network's input the same way at training and at prediction
lives here: a row's gene ids become vocabulary indices (tokens.Features), its drug a row of the
drug table (found by SMILES: `rows_of`, the one lookup from names to vectors; a SMILES the table
lacks is encoded with the encoder the network was trained with), and the network's output, fitted
on standardised labels, comes back in ln IC50. For bulk models it also keeps each vocabulary
gene's mean and sd over the training profiles (`domain`), which alignment maps profiles of other
platforms onto. The Trainer (train.py) fits `model` (and a fine-tuned `tower`); the Predictor
(predictor.py) asks `predict` for the network's part of every answer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

import dist
from common import PipelineError
from config import ModelConfig
from ingest.drugs import DrugTower, encode_drugs
from ingest.table import gene_table_lists
from ingest.tokens import Features, TokenTable, drug_lookup, loader
from model import build_model

log = logging.getLogger("ic50.network")


@dataclass
class Network:
    """A network and everything needed to featurise new rows the same way. Built complete by
    `create` (for training) or by the checkpoint (predictor/checkpoint.py)."""
    model: torch.nn.Module   # an IC50Transformer, or an Ensemble of them
    cfg: ModelConfig
    vocab: np.ndarray        # sorted gene token ids the network knows
    smiles: list[str]        # the drug table's SMILES, one per row
    drug_table: torch.Tensor
    drug_encoder: str
    y_mean: float            # the training labels' mean and sd: the network fits standardised labels
    y_std: float
    # drug name -> SMILES, for predicting by name; and the gene table the token ids come from
    # ({"token_id": [...], "gene_symbol": [...], "ensembl_id": [...]}; None where unknown)
    drugs: dict[str, str] = field(default_factory=dict)
    genes: dict[str, list] | None = None
    # bulk models: per vocabulary gene, the mean and sd of the training profiles
    domain: dict | None = None
    tower: DrugTower | None = None    # a fine-tuned ChemBERTa
    batch_size: int = 128             # what it was trained with; prediction reads 4x as many rows
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0

    @classmethod
    def create(cls, cfg: ModelConfig, table: TokenTable, rows: dict[str, np.ndarray], *,
               drugs: dict[str, str], gene_table: pd.DataFrame | None, seed: int, batch_size: int,
               finetune: bool, device: torch.device) -> "Network":
        """A fresh network for these training rows: their vocabulary, every drug's vector (test
        drugs included: the encoder is frozen and never sees a label, so this leaks nothing),
        the label scale and, for normalised values, the training profiles' statistics."""
        dist.seed_everything(seed)
        vocab = table.vocabulary(rows["train"])
        smiles = sorted(set(drugs.values()))
        vecs, encoder = encode_drugs(smiles, cfg.drug_encoder, cfg.smiles_model, n_bits=cfg.morgan_bits)
        tower = None
        if finetune:
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
        genes = gene_table_lists(gene_table, vocab) if gene_table is not None else None
        domain = table.statistics(rows["train"], vocab) if cfg.value_kind == "normalised" else None
        return cls(model, cfg, vocab, smiles, torch.from_numpy(vecs).to(device), encoder, y_mean, y_std,
                   drugs=dict(drugs), genes=genes, domain=domain, tower=tower, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ inputs

    def features(self, table: TokenTable, rows: np.ndarray | None = None,
                 drugs: dict[str, str] | None = None) -> Features:
        """Features of some rows (all by default) of a token table; their drugs are found by name
        among `drugs` (name -> SMILES; default: the drugs trained with)."""
        rows = np.arange(len(table)) if rows is None else rows
        return Features(table, rows, drug_lookup(table.drugs, self.rows_of(self.drugs if drugs is None
                                                                           else drugs)))

    def rows_of(self, drugs: dict[str, str]) -> dict[str, int]:
        """Drug name -> row of the drug table, found by SMILES: the one lookup from names to drug
        vectors. SMILES the table lacks are encoded with the encoder the network was trained with."""
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

    def vectors(self) -> dict[str, np.ndarray]:
        """Each known drug's vector, by name (what the classical baselines read of a drug)."""
        return {d: self.drug_table[i].cpu().numpy() for d, i in self.rows_of(self.drugs).items()}

    # ------------------------------------------------------------------ predicting

    @torch.no_grad()
    def predict(self, feats: Features, device: torch.device | None = None, local: bool = False) -> np.ndarray:
        """ln IC50 for every row of feats; under torchrun the rows are split and gathered, unless
        `local` (one rank predicts them all)."""
        device = device or self.device
        rank, size = (0, 1) if local else dist.world()
        mine = np.arange(rank, len(feats), size)
        self.model.eval()
        if self.tower is not None:
            self.tower.eval()
        step = self.batch_size * 4
        plan = [mine[i:i + step] for i in range(0, len(mine), step)]
        out = []
        for g, v, d, _ in loader(feats, plan, self.vocab, 0, device):
            with dist.autocast(device):
                out.append(self.model(g, v, self.drug_vectors(d), d).float().cpu().numpy())
        part = (np.concatenate(out) if out else np.zeros(0)) * self.y_std + self.y_mean
        return part if local else dist.gather(part, mine, len(feats))

    def predict_pairs(self, table: TokenTable, profile: np.ndarray, drug: np.ndarray, names: list[str],
                      smiles: dict[str, str] | None = None) -> np.ndarray:
        """ln IC50 of (profile, drug) pairs of a table's profiles, predicted by this process alone:
        pair i is profile `profile[i]` with drug `names[drug[i]]`, found by name among `smiles`
        (name -> SMILES; default: the drugs trained with)."""
        smiles = self.drugs if smiles is None else smiles
        lookup = drug_lookup(list(names), self.rows_of({d: smiles[d] for d in names}))
        return self.predict(Features(table.pairs(profile, drug, names), np.arange(len(profile)), lookup),
                            local=True)

    def predict_grid(self, values: np.ndarray, drugs: list[str]) -> np.ndarray:
        """[profiles, drugs] ln IC50 of profiles given as values over the vocabulary, for drugs
        the network was trained with, predicted by this process alone."""
        n = len(values)
        pred = self.predict_pairs(TokenTable.dense(values, self.vocab), np.repeat(np.arange(n), len(drugs)),
                                  np.tile(np.arange(len(drugs)), n), list(drugs))
        return pred.reshape(n, len(drugs))


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

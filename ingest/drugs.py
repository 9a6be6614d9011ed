"""Drug structures and featurisers: SMILES tables; one vector per SMILES, from ChemBERTa or from
Morgan fingerprints.

ChemBERTa is frozen and run ONCE per unique SMILES before training (the original ran it on every
batch), with the vectors cached on disk keyed by (model, pooling, SMILES); the network only sees
the resulting vectors. With fine-tuning on, `DrugTower` sits inside the graph and each batch
encodes its distinct drugs only. `auto` falls back to Morgan fingerprints (RDKit) when ChemBERTa
cannot be loaded, and says so.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from common import PipelineError, atomic_path, cache_dir, exclusive, require_file
from ingest.merge import normalise_drug

log = logging.getLogger("ic50.drugs")


def read_smiles_table(path: str | Path) -> dict[str, str]:
    """A CSV of drug name -> SMILES (columns name and smiles; drug and canonical_smiles work too)."""
    path = require_file(path, "SMILES table")
    try:
        frame = pd.read_csv(path, dtype=str)
    except Exception as e:
        raise PipelineError(f"SMILES table '{path}' could not be read as CSV: {e}") from e
    cols = {c.strip().lower(): c for c in frame.columns}
    name = cols.get("name") or cols.get("drug")
    smiles = cols.get("smiles") or cols.get("canonical_smiles")
    if name is None or smiles is None:
        raise PipelineError(f"SMILES table '{path}' needs columns name and smiles; it has "
                            f"{list(frame.columns)}.")
    frame = frame[[name, smiles]].dropna()
    return dict(zip(frame[name].str.strip(), frame[smiles].str.strip()))


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection test, so an offline machine does not sit through the hub's retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    from urllib.parse import urlparse

    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_chemberta(model_id: str) -> tuple[object, nn.Module]:
    """Tokenizer and model from a local directory, the local cache, or the hub (in that order)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    is_dir = Path(model_id).is_dir()
    attempts = [True] if is_dir else [True, False]
    reason = ""
    for local_only in attempts:
        if not local_only and not hub_reachable():
            reason = "it is not in the local Hugging Face cache and the hub is not reachable"
            break
        try:
            tok = AutoTokenizer.from_pretrained(model_id, local_files_only=local_only)
            model = AutoModel.from_pretrained(model_id, local_files_only=local_only)
            return tok, model.eval()
        except Exception as e:  # not cached / not a model directory / download failed
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    raise PipelineError(f"could not load the ChemBERTa model {model_id!r}: {reason}. Pass "
                        f"--smiles-model with a local copy (a directory saved with "
                        f"save_pretrained), or use --drug-encoder morgan.")


@torch.no_grad()
def chemberta_embeddings(smiles: list[str], model_id: str, pooling: str = "mean",
                         batch_size: int = 32) -> np.ndarray:
    """Frozen ChemBERTa: the fine-tuning tower run once over every SMILES, without gradients."""
    tower = DrugTower(model_id, smiles, pooling).eval()
    idx = torch.arange(len(smiles))
    return torch.cat([tower(idx[i:i + batch_size]) for i in range(0, len(smiles), batch_size)]
                     ).float().numpy().astype(np.float32)


class DrugTower(nn.Module):
    """ChemBERTa over a fixed list of SMILES; forward(drug indices) -> one vector per row.

    Frozen, it is run once by chemberta_embeddings; fine-tuned, it sits in the graph and each
    batch encodes its distinct drugs only.
    """

    def __init__(self, model_id: str, smiles: list[str], pooling: str = "mean"):
        super().__init__()
        tok, self.encoder = load_chemberta(model_id)
        max_len = min(getattr(tok, "model_max_length", 512) or 512,
                      getattr(self.encoder.config, "max_position_embeddings", 514) - 2)
        batch = tok(smiles, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        self.register_buffer("ids", batch["input_ids"], persistent=False)
        self.register_buffer("mask", batch["attention_mask"], persistent=False)
        self.pooling = pooling

    def forward(self, drug: torch.Tensor) -> torch.Tensor:
        uniq, inverse = drug.unique(return_inverse=True)
        width = int(self.mask[uniq].sum(1).max())      # padding is on the right: trim to this batch
        mask = self.mask[uniq, :width]
        hidden = self.encoder(input_ids=self.ids[uniq, :width], attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            vec = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return vec[inverse]


def morgan_fingerprints(smiles: list[str], n_bits: int = 1024, radius: int = 2) -> np.ndarray:
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import rdFingerprintGenerator
    except ImportError as e:
        raise PipelineError("Morgan fingerprints need RDKit: pip install rdkit") from e
    RDLogger.DisableLog("rdApp.*")
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = np.zeros((len(smiles), n_bits), dtype=np.float32)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise PipelineError(f"RDKit cannot parse the SMILES {s!r}.")
        out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


def cached_chemberta(smiles: list[str], model_id: str, pooling: str) -> np.ndarray:
    """ChemBERTa vectors from an on-disk cache keyed by (model, pooling, SMILES); only SMILES
    never seen with this model and pooling are encoded, then added to the cache."""
    key = hashlib.sha256(f"{model_id}|{pooling}".encode()).hexdigest()[:16]
    path = cache_dir() / "drug_embeddings" / f"{key}.npz"
    known = _read_embeddings(path)
    missing = [s for s in dict.fromkeys(smiles) if s not in known]
    if not missing:
        log.info("drug embeddings: all %d SMILES found in the cache %s", len(smiles), path)
        return np.stack([known[s] for s in smiles]).astype(np.float32)
    new = dict(zip(missing, chemberta_embeddings(missing, model_id, pooling)))
    try:   # what other jobs added meanwhile is read again under the lock and kept
        with exclusive(path, "a write of the drug-embedding cache", wait=True):
            merged = {**_read_embeddings(path), **new}
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, smiles=np.array(list(merged)), vectors=np.stack(list(merged.values())),
                             model=np.array(model_id), pooling=np.array(pooling))
    except (OSError, PipelineError) as e:
        log.warning("could not write the drug-embedding cache %s: %s", path, e)
    known.update(new)
    return np.stack([known[s] for s in smiles]).astype(np.float32)


def _read_embeddings(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return dict(zip(z["smiles"].tolist(), z["vectors"]))
    except (OSError, ValueError, KeyError):
        log.warning("ignoring an unreadable drug-embedding cache %s", path)
        return {}


def encode_drugs(smiles: list[str], encoder: str, model_id: str, pooling: str = "mean",
                 n_bits: int = 1024, use_cache: bool = True) -> tuple[np.ndarray, str]:
    """One vector per SMILES and the name of the encoder that produced them.

    `auto` uses ChemBERTa when it can be loaded and otherwise falls back to Morgan fingerprints
    with one warning; `chemberta` never falls back.
    """
    t0 = time.perf_counter()
    if encoder in ("auto", "chemberta"):
        try:
            vecs = (cached_chemberta(smiles, model_id, pooling) if use_cache
                    else chemberta_embeddings(smiles, model_id, pooling))
            log.info("drug encoder: ChemBERTa %s (%s pooling), %d SMILES -> %d-d in %.1fs",
                     model_id, pooling, len(smiles), vecs.shape[1], time.perf_counter() - t0)
            return vecs, f"chemberta:{model_id}:{pooling}"
        except PipelineError as e:
            if encoder == "chemberta":
                raise
            log.warning("%s Falling back to Morgan fingerprints (%d bits); the run records which "
                        "encoder it used.", e, n_bits)
    elif encoder != "morgan":
        raise PipelineError(f"unknown drug encoder {encoder!r}; expected auto, chemberta or morgan.")
    vecs = morgan_fingerprints(smiles, n_bits)
    log.info("drug encoder: Morgan fingerprints (radius 2, %d bits), %d SMILES", n_bits, len(smiles))
    return vecs, f"morgan:r2:{n_bits}"


def smiles_for_drugs(drugs: list[str], table: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """GDSC drug name -> SMILES by exact name, then by normalised name (one candidate only); and
    the drugs left without one."""
    by_norm: dict[str, set[str]] = {}
    for name, smiles in table.items():
        by_norm.setdefault(normalise_drug(name), set()).add(smiles)
    found, missing = {}, []
    for d in drugs:
        cands = {table[d]} if d in table else by_norm.get(normalise_drug(d), set())
        if len(cands) == 1:
            found[d] = next(iter(cands))
        else:
            missing.append(d)
    return found, missing

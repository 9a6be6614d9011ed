"""Gene tokens: what the model reads of a profile, and the batches it reads them in.

A profile (a cell, or a cell line's bulk profile) becomes gene tokens: its genes' ids and values
(log1p counts per 10,000 for counts, the values as they are for normalised ones), most expressed
first, ties by gene id; zero counts are no token. `gene_tokens` says how the model reads them
(pooled into one cell token, or one token each) and `top_k` how many it keeps (0: every one).
A training run reads them from its token store (store.py), prediction from tables built in
memory; both are TokenTables, and batches gather from either alike.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from common import PipelineError, flat_list, ragged_positions
from ingest.table import check_rows, codes

log = logging.getLogger("ic50.tokens")

PAD, UNK = 0, 1   # vocabulary indices of padding and of a gene the vocabulary lacks


@dataclass
class TokenTable:
    """Per-profile gene tokens, most expressed first (ties by gene id): gene ids and values laid
    end to end, profile p in [offsets[p], offsets[p + 1]); and each row's drug and label, which
    batches read beside them. A row is its own profile (one cell), or, in a reference, points at
    its cell line's profile (`profile`), stored once for all its drugs. In memory, or mapped from
    the token store (TokenStore). `width`: the batch width (K, or the longest profile where all
    are shorter); None for top_k 0, where a batch is as wide as its longest row."""
    genes: np.ndarray      # [total] int32 gene ids
    values: np.ndarray     # [total] float32: log1p(counts per 10,000), or the normalised values
    offsets: np.ndarray    # [profiles + 1] int64
    width: int | None = None
    drug: np.ndarray | None = None     # [rows] int32: each row's drug, a position in `drugs`
    drugs: list[str] = field(default_factory=list)
    label: np.ndarray | None = None    # [rows] float32 ln IC50 (NaN: unlabelled)
    profile: np.ndarray | None = None  # [rows] int32: each row's profile; None: row r is profile r

    def with_keys(self, table: pa.Table, profile: np.ndarray | None = None) -> "TokenTable":
        """These tokens with the drugs and labels of the in-memory table they came from (and,
        for a reference, each row's profile)."""
        idx, names = codes(table["drug"])
        return TokenTable(self.genes, self.values, self.offsets, self.width, idx, names.to_pylist(),
                          labels(table), profile)

    @classmethod
    def dense(cls, values: np.ndarray, vocab: np.ndarray) -> "TokenTable":
        """Profiles given as values over a vocabulary ([profiles, genes]): every gene a token, in
        the vocabulary's order."""
        n, width = values.shape
        return cls(np.tile(np.asarray(vocab).astype(np.int32), n), values.astype(np.float32).ravel(),
                   np.arange(n + 1, dtype=np.int64) * width, width)

    def pairs(self, profile: np.ndarray, drug: np.ndarray, drugs: list[str]) -> "TokenTable":
        """These profiles' tokens read by (profile, drug) pairs: row i is profile `profile[i]` with
        drug `drug[i]`, a position in `drugs`."""
        return TokenTable(self.genes, self.values, self.offsets, self.width, np.asarray(drug, dtype=np.int32),
                          list(drugs), np.full(len(drug), np.nan, dtype=np.float32),
                          np.asarray(profile, dtype=np.int32))

    def __len__(self) -> int:
        return len(self.profile) if self.profile is not None else len(self.offsets) - 1

    def profiles(self, rows: np.ndarray) -> np.ndarray:
        """The profile of each row."""
        return np.asarray(rows) if self.profile is None else self.profile[rows]

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row."""
        per_profile = np.diff(self.offsets)
        return per_profile if self.profile is None else per_profile[self.profile]

    def indexed(self, vocab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[profiles, L] vocabulary indices (0 = PAD, 1 = unknown, i + 2 = vocab[i]) and values of
        every profile, computed once per vocabulary: a reference's batches take rows of these, as
        its thousands of pairs share a few hundred profiles (5x faster batches than mapping each
        batch's gene ids)."""
        key = hash(np.ascontiguousarray(vocab).tobytes())
        if getattr(self, "_indexed", (None,))[0] != key:
            every = np.arange(len(self.offsets) - 1)
            g, v, real = TokenTable(self.genes, self.values, self.offsets, self.width).gather(every)
            pos, known = vocab_index(vocab, g)
            index = np.where(real, np.where(known, pos + 2, UNK), PAD).astype(np.int32)
            self._indexed = (key, index, v)
        return self._indexed[1], self._indexed[2]

    def over(self, vocab: np.ndarray) -> np.ndarray:
        """[profiles, vocabulary genes] values of every profile (0 where a profile lists none)."""
        index, values = self.indexed(vocab)
        out = np.zeros((index.shape[0], len(vocab)))
        rows, cols = np.nonzero(index >= 2)
        out[rows, index[rows, cols] - 2] = values[rows, cols]
        return out

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[B, L] gene ids and values of these rows, and which entries are real (the rest pad)."""
        rows = self.profiles(rows)
        starts = self.offsets[rows]
        lens = self.offsets[np.asarray(rows) + 1] - starts
        width = self.width or max(int(lens.max(initial=0)), 1)
        if len(rows) and (lens == width).all():    # every row full: one gather, nothing to pad
            src = starts[:, None] + np.arange(width)
            return (self.genes[src].astype(np.int64), self.values[src].astype(np.float32, copy=False),
                    np.ones((len(rows), width), dtype=bool))
        r, c = ragged_positions(lens)
        src = np.repeat(starts, lens) + c
        dest = r * width + c
        g = np.zeros((len(rows), width), dtype=np.int64)
        v = np.zeros((len(rows), width), dtype=np.float32)
        real = np.zeros((len(rows), width), dtype=bool)
        g.ravel()[dest], v.ravel()[dest], real.ravel()[dest] = self.genes[src], self.values[src], True
        return g, v, real

    def statistics(self, rows: np.ndarray, vocab: np.ndarray, chunk: int = 256) -> dict[str, np.ndarray]:
        """Per vocabulary gene, the mean and sd of its value over the distinct profiles of these
        rows (a reference's cell lines, each once) where it is listed: what the training domain
        looked like, for bringing profiles from another platform into it."""
        profiles = np.unique(self.profiles(rows))
        plain = TokenTable(self.genes, self.values, self.offsets, self.width)
        n, total, squares = (np.zeros(len(vocab)) for _ in range(3))
        for i in range(0, len(profiles), chunk):
            g, v, real = plain.gather(profiles[i:i + chunk])
            pos, known = vocab_index(vocab, g)
            ok = real & known
            n += np.bincount(pos[ok], minlength=len(vocab))
            total += np.bincount(pos[ok], weights=v[ok], minlength=len(vocab))
            squares += np.bincount(pos[ok], weights=v[ok].astype(np.float64) ** 2, minlength=len(vocab))
        mean = total / np.maximum(n, 1)
        return {"mean": mean, "sd": np.sqrt(np.maximum(squares / np.maximum(n, 1) - mean ** 2, 0)),
                "profiles": len(profiles)}

    def vocabulary(self, rows: np.ndarray, budget: int = 1 << 18) -> np.ndarray:
        """Sorted gene ids that are tokens of these rows: the genes a model trained on them knows.
        Read about `budget` tokens at a time and marked in a table indexed by id (memory: one
        chunk, whatever the number of rows)."""
        rows = np.unique(self.profiles(rows)) if self.profile is not None else rows
        per_row = self.width or max(1, int(self.offsets[-1]) // max(len(self.offsets) - 1, 1))
        chunk = max(1, budget // per_row)
        seen, other = np.zeros(0, dtype=bool), []
        for i in range(0, len(rows), chunk):
            part = np.sort(np.asarray(rows[i:i + chunk]))
            starts, lens = self.offsets[part], self.offsets[part + 1] - self.offsets[part]
            if (lens == per_row).all():   # full-width rows: one gather
                g = self.genes[(starts[:, None] + np.arange(per_row)).ravel()]
            else:
                g = self.genes[np.repeat(starts, lens) + ragged_positions(lens)[1]]
            if len(g) and g.min() < 0:     # ids a table cannot index
                other.append(np.unique(g[g < 0]))
                g = g[g >= 0]
            top = int(g.max(initial=-1)) + 1
            if top > len(seen):
                seen = np.concatenate([seen, np.zeros(top - len(seen), dtype=bool)])
            seen[g] = True
        return np.unique(np.concatenate([*other, np.flatnonzero(seen)]).astype(self.genes.dtype))


@dataclass
class Features:
    """What the model reads for N rows: their tokens, drug-table rows and labels, all gathered
    per batch from the token table (a token store: nothing per row is copied into memory). Gene
    ids become vocabulary indices per batch (0 = PAD, 1 = unknown, i + 2 = vocab[i])."""
    table: TokenTable
    rows: np.ndarray           # [N] rows of `table`
    drug_of_code: np.ndarray   # [len(table.drugs)] int64: the drug-table row of each drug

    def __len__(self) -> int:
        return len(self.rows)

    def lengths(self) -> np.ndarray:
        return self.table.lengths[self.rows]

    def drug(self, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """[B] drug-table rows of feature rows idx (all by default)."""
        return self.drug_of_code[self.table.drug[self.rows[idx]]]

    def y(self, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """[B] float32 ln IC50 of feature rows idx (all by default)."""
        return np.asarray(self.table.label[self.rows[idx]], dtype=np.float32)

    def batch(self, idx: np.ndarray, vocab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B, L] vocabulary indices and values of feature rows idx."""
        if self.table.profile is not None:   # a reference: rows of its profiles' indexed tokens
            index, values = self.table.indexed(vocab)
            p = self.table.profile[self.rows[idx]]
            return index[p].astype(np.int64), values[p]
        g, v, real = self.table.gather(self.rows[idx])
        pos, known = vocab_index(vocab, g)
        return np.where(real, np.where(known, pos + 2, UNK), PAD), v


def normalised_values(table: pa.Table, value_kind: str = "counts"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat (row, gene id, value) of every listed gene, and the number of genes per row: the
    values the model and the baselines all read. Counts become log1p(count / cell total x
    10,000); normalised values are used as they are."""
    offsets, genes = flat_list(table["genes"])
    raw = flat_list(table["expressions"])[1]
    lengths = np.diff(offsets)
    rows = ragged_positions(lengths)[0]
    if value_kind == "normalised":
        return rows, genes, raw.astype(np.float64), lengths
    counts = np.where(raw > 0, raw, 0).astype(np.float64)
    totals = np.bincount(rows, weights=counts, minlength=len(lengths))
    values = np.log1p(counts / np.maximum(totals[rows], 1e-12) * 1e4)  # float64; callers cast
    return rows, genes, values, lengths


def vocab_index(vocab: np.ndarray, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each gene id in the sorted vocabulary, and whether it is there at all. Token
    ids are small integers, so a table indexed by id answers in one gather: a binary search over
    every token of a batch cost more than the network's step on 6,000-gene profiles."""
    genes = np.asarray(genes)
    if len(vocab) == 0:
        return np.zeros_like(genes), np.zeros(genes.shape, dtype=bool)
    top = int(vocab[-1])
    if vocab[0] < 0 or top >= max(1 << 20, 4 * genes.size):   # ids too large for a table: search
        idx = np.minimum(np.searchsorted(vocab, genes), len(vocab) - 1)
        return idx, vocab[idx] == genes
    table = np.full(top + 2, -1, dtype=np.int64)       # slot top + 1: ids outside the vocabulary
    table[vocab] = np.arange(len(vocab))
    pos = table[np.where((genes >= 0) & (genes <= top), genes, top + 1)]
    known = pos >= 0
    return np.where(known, pos, 0), known


def ranked_tokens(table: pa.Table, k: int | None, value_kind: str = "counts"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[rows, K] gene ids and values of each row's k highest-valued genes (all of them for
    k=None), highest first and ties by gene id, and which entries are real tokens. A zero count
    is no token; with normalised values every listed gene is one, whatever its sign."""
    counts = value_kind == "counts"
    rows, gv, norm, cell_len = normalised_values(table, value_kind)
    width = max(int(cell_len.max(initial=0)), 1)
    cols = ragged_positions(cell_len)[1]
    dense_v = np.full((len(cell_len), width), -1.0 if counts else -np.inf, dtype=np.float32)
    dense_g = np.zeros((len(cell_len), width), dtype=np.int64)
    dense_v[rows, cols] = norm
    dense_g[rows, cols] = gv
    k = width if k is None else min(k, width)
    # most expressed first, ties by gene id: the tokens depend on the cell's genes and values
    # only, not on the order its genes are listed in (Tahoe rows, an .h5ad's columns)
    top = np.lexsort((dense_g, -dense_v), axis=1)[:, :k]
    tv = np.take_along_axis(dense_v, top, axis=1)
    tg = np.take_along_axis(dense_g, top, axis=1)
    return tg, tv, (tv > 0 if counts else np.isfinite(tv))


def token_chunks(batches, top_k: int, value_kind: str, source: str
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(flat gene ids, flat values, tokens per row) of each table chunk, checked row by row."""
    first = 0
    for table in batches:
        check_rows(table, source, value_kind, first)
        first += table.num_rows
        g, v, real = ranked_tokens(table, top_k or None, value_kind)
        yield g[real].astype(np.int32), v[real].astype(np.float32), real.sum(1)  # row-major: in order


def batch_width(top_k: int, longest: int) -> int | None:
    """K genes per cell pad every batch to K, no wider than the longest row; None (each batch as
    wide as its longest row) where every gene is kept (top_k 0)."""
    return max(1, min(top_k, longest)) if top_k else None


def cell_tokens(table: pa.Table, top_k: int, value_kind: str = "counts", chunk: int = 4096) -> TokenTable:
    """Tokens of every row of an in-memory table (prediction); training reads a token store."""
    parts = list(token_chunks((table.slice(i, chunk) for i in range(0, table.num_rows, chunk)),
                              top_k, value_kind, "table"))
    genes = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
    values = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
    lengths = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenTable(genes, values, offsets, batch_width(top_k, int(lengths.max(initial=0))))


def labels(keys: pa.Table) -> np.ndarray:
    return (keys["LN_IC50"].to_numpy().astype(np.float32) if "LN_IC50" in keys.column_names
            else np.full(keys.num_rows, np.nan, dtype=np.float32))


def drug_lookup(names: list[str], drug_index: dict[str, int]) -> np.ndarray:
    """The drug-table row of each drug name (a Features' drug_of_code)."""
    missing = [n for n in names if n not in drug_index]
    if missing:
        raise PipelineError(f"drug {missing[0]!r} has no drug embedding.")
    return np.array([drug_index[n] for n in names], dtype=np.int64)


# ----------------------------------------------------------------------------- batches

class Batches(Dataset):
    """Item i is the i-th batch (index array) of a plan, gathered from the token store (or an
    in-memory table); collation happens in the workers, which reopen the store's maps."""

    def __init__(self, feats: Features, plan: list[np.ndarray], vocab: np.ndarray,
                 scale: tuple[float, float] | None = None):
        self.feats, self.plan, self.vocab, self.scale = feats, plan, vocab, scale

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int):
        idx = self.plan[i]
        genes, values = self.feats.batch(idx, self.vocab)
        drug, y = self.feats.drug(idx), self.feats.y(idx)
        if self.scale is not None:
            y = ((y - self.scale[0]) / self.scale[1]).astype(np.float32)
        return torch.from_numpy(genes), torch.from_numpy(values), torch.from_numpy(drug), torch.from_numpy(y)


def loader(feats: Features, plan: list[np.ndarray], vocab: np.ndarray, workers: int, device: torch.device,
           scale: tuple[float, float] | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches on the device, labels standardised with `scale` (the training mean and sd: what
    the network fits). On CUDA they come from pinned memory, and the next batch is copied while
    the current one computes (non-blocking copies, one batch ahead)."""
    cuda = device.type == "cuda"
    batches = iter(DataLoader(Batches(feats, plan, vocab, scale), batch_size=None, shuffle=False,
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

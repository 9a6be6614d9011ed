"""The gene Transformer regressor: a drug vector and a cell's gene tokens in, ln IC50 out.

A cell is a sequence of gene tokens: gene-id embedding + expression embedding, projected to
d_model. A drug is one token: its vector from ingest/drugs.py (ChemBERTa or Morgan), projected to
d_model. [drug, genes...] -> positions -> Transformer encoder -> the drug token's output ->
LayerNorm-Dropout-Linear-ReLU-Dropout-Linear -> ln IC50. With the study's sizes (47,278 gene
tokens, 768-d ChemBERTa, d_model 512, 3 layers, 4 heads, feed-forward 512, gene width 128, head
256) this has 11,378,177 trainable parameters, as reported. Positions: sinusoidal (the study's
absolute encoding) or none. `gene_tokens=pooled` is the study's two-token design: the genes
pooled into one cell token beside the drug token. Every setting comes from the ModelConfig (its
defaults are the only ones); the sizes the data decide (vocabulary, drug vector, trained drugs)
are arguments.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from config import ModelConfig

# ----------------------------------------------------------------------------- network

def sinusoidal(length: int, dim: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32)
                    * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe


class EncoderLayer(nn.Module):
    """Post-norm encoder layer (as torch's TransformerEncoderLayer) on scaled_dot_product_attention."""

    def __init__(self, d_model: int, n_heads: int, ff_dim: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.n_heads, self.attn_dropout = n_heads, attn_dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ff1 = nn.Linear(d_model, ff_dim)
        self.ff2 = nn.Linear(ff_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape                                   # (B, L, d_model); keep: (B, L)
        qkv = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads)      # (B, L, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                # each (B, H, L, Dh)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :],  # mask (B, 1, 1, L)
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        a = a.transpose(1, 2).reshape(b, n, d)              # (B, H, L, Dh) -> (B, L, d_model)
        x = self.norm1(x + self.drop(self.out(a)))
        return self.norm2(x + self.drop(self.ff2(self.drop(F.relu(self.ff1(x))))))


class IC50Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, n_tokens: int, drug_dim: int, n_drug_heads: int = 0):
        """cfg: the network's settings; n_tokens: vocabulary + 2 (PAD, unknown); drug_dim: the
        drug vector's width; n_drug_heads: the training drugs, each with its own read-out when
        cfg.head is per_drug."""
        super().__init__()
        self.gene_tokens, self.pos_encoding = cfg.gene_tokens, cfg.pos_encoding
        self.expr_embedding, self.gene_dropout = cfg.expr_embedding, cfg.gene_dropout
        self.gene_emb = nn.Embedding(n_tokens, cfg.gene_dim, padding_idx=0)
        # linear: one map of the value shared by all genes, added to the gene's id embedding;
        # scaled: the gene's own vector times its value (gene-specific and continuous)
        self.expr_emb = nn.Linear(1, cfg.gene_dim) if cfg.expr_embedding == "linear" else None
        self.gene_proj = nn.Linear(cfg.gene_dim, cfg.d_model)
        self.drug_proj = nn.Linear(drug_dim, cfg.d_model)
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.dropout, cfg.attn_dropout)
            for _ in range(cfg.n_layers))
        self.head = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.d_model, cfg.head_dim), nn.ReLU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.head_dim, 1))
        # per-drug heads: one linear read-out of the cell's representation per training drug,
        # added to the shared head; zero at the start, and for drugs never trained on
        n_heads = n_drug_heads if cfg.head == "per_drug" else 0
        self.drug_heads = nn.Embedding(n_heads, cfg.d_model) if n_heads else None
        if self.drug_heads is not None:
            nn.init.zeros_(self.drug_heads.weight)

    def embed_genes(self, genes: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gene tokens [B, K, d_model] (one pooled token [B, 1, d_model] when pooled) and
        which of them are real."""
        listed = genes != 0
        keep = listed
        if self.training and self.gene_dropout > 0:
            keep = listed & (torch.rand(listed.shape, device=listed.device) >= self.gene_dropout)
        if self.gene_tokens == "pooled":   # the study's two-token design: one cell token
            x = self.pooled(genes, values, keep, listed)
            return self.gene_proj(x).unsqueeze(1), torch.ones_like(keep[:, :1])
        if self.expr_embedding == "scaled":
            x = self.gene_emb(genes) * values.unsqueeze(-1)
        else:
            x = self.gene_emb(genes) + self.expr_emb(values.unsqueeze(-1))
        return self.gene_proj(x), keep

    def pooled(self, genes: torch.Tensor, values: torch.Tensor, keep: torch.Tensor,
               listed: torch.Tensor) -> torch.Tensor:
        """The kept genes pooled into one token [B, gene_dim], as one product of a [B, vocabulary]
        row of weights with the embedding table (no [B, K, gene_dim] tensor). linear: the mean of
        e_g + map(v_g) = mean e_g + map(mean v) over the kept genes. scaled: the sum of e_g * v_g
        over sqrt(listed genes), so its size does not shrink as a cell has more genes; dropped
        genes are made up for by scaling the kept ones (inverted dropout), so training and
        prediction see tokens of the same expected size."""
        w = keep.to(self.gene_emb.weight.dtype)
        if self.expr_embedding == "scaled":
            drop = self.gene_dropout if self.training else 0.0
            weights = values.to(w.dtype) * w / (1.0 - drop)
            norm = listed.sum(1, keepdim=True).clamp(min=1).to(w.dtype).sqrt()
        else:
            weights = w
            norm = w.sum(1, keepdim=True).clamp(min=1)
        rows = torch.zeros(genes.shape[0], self.gene_emb.num_embeddings, dtype=w.dtype,
                           device=genes.device).scatter_add_(1, genes, weights)
        x = rows @ self.gene_emb.weight / norm
        if self.expr_embedding == "linear":
            x = x + self.expr_emb((values * w).sum(1, keepdim=True) / norm)
        return x

    def forward(self, genes: torch.Tensor, values: torch.Tensor, drug_vec: torch.Tensor,
                drug: torch.Tensor | None = None) -> torch.Tensor:
        """genes [B, K] token indices (0 = padding), values [B, K], drug_vec [B, drug_dim],
        drug [B] drug-table rows (needed by per-drug heads) -> [B]."""
        x, keep = self.embed_genes(genes, values)
        seq = torch.cat([self.drug_proj(drug_vec).unsqueeze(1), x], dim=1)
        keep = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
        if self.pos_encoding == "sinusoidal":
            seq = seq + sinusoidal(seq.shape[1], seq.shape[2], seq.device).to(seq.dtype)
        for layer in self.layers:
            seq = layer(seq, keep)
        out = self.head(seq[:, 0]).squeeze(-1)
        if self.drug_heads is not None:
            w = keep[:, 1:].unsqueeze(-1).to(x.dtype)
            cell = (x * w).sum(1) / w.sum(1).clamp(min=1)               # [B, d_model]
            known = drug < self.drug_heads.num_embeddings
            weight = self.drug_heads(torch.where(known, drug, 0)) * known.unsqueeze(-1)
            out = out + (weight * cell).sum(-1)
        return out


class Ensemble(nn.Module):
    """A seed ensemble: networks of one design, each with its own initialisation and dropout,
    trained side by side on the same batches, each on its own loss. Training returns every
    member's prediction [B, M]; evaluation their mean [B]."""

    def __init__(self, members: list[IC50Transformer]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, *args) -> torch.Tensor:
        out = torch.stack([m(*args) for m in self.members], dim=-1)
        return out if self.training else out.mean(-1)


def build_model(cfg: ModelConfig, n_tokens: int, drug_dim: int, n_drug_heads: int = 0) -> nn.Module:
    """The network a configuration describes: one IC50Transformer, or an ensemble of them."""
    members = [IC50Transformer(cfg, n_tokens, drug_dim, n_drug_heads) for _ in range(cfg.ensemble)]
    return members[0] if len(members) == 1 else Ensemble(members)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

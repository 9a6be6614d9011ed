"""The regressor and its drug encoders."""
import logging

import numpy as np
import pytest
import torch
from conftest import ROOT, train_steps

from common import PipelineError
from config import Config, from_dict, load_yaml
from drugs import encode_drugs
from model import IC50Transformer, count_parameters


def test_paper_config_has_the_studys_parameter_count():
    cfg = from_dict(load_yaml(ROOT / "configs/paper.yaml"), "paper.yaml")
    model = IC50Transformer.from_config(cfg, n_tokens=47_278, drug_dim=768)
    assert count_parameters(model) == 11_378_177


@pytest.mark.parametrize("tokens", ["top_k", "pooled"])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(tokens):
    torch.manual_seed(0)
    model = IC50Transformer(50, 16, gene_dim=8, d_model=32, n_heads=4, n_layers=2, ff_dim=32,
                            head_dim=16, dropout=0.0, tokens=tokens)
    genes = torch.randint(1, 50, (32, 10))
    genes[:, -2:] = 0  # some padding
    values, drug, y = torch.rand(32, 10), torch.rand(32, 16), torch.randn(32)
    losses = train_steps(model, genes, values, drug, y, steps=2)
    assert losses[1] < losses[0]


def test_padding_tokens_do_not_change_the_prediction():
    torch.manual_seed(0)
    model = IC50Transformer(50, 16, gene_dim=8, d_model=32, n_heads=4, n_layers=2, ff_dim=32,
                            head_dim=16).eval()
    genes, values, drug = torch.randint(1, 50, (2, 6)), torch.rand(2, 6), torch.rand(2, 16)
    padded_g = torch.cat([genes, torch.zeros(2, 4, dtype=torch.long)], 1)
    padded_v = torch.cat([values, torch.rand(2, 4)], 1)
    with torch.no_grad():
        assert torch.allclose(model(genes, values, drug), model(padded_g, padded_v, drug), atol=1e-5)


def test_chemberta_path_loads_a_local_roberta_once_per_smiles(tiny_roberta):
    smiles = ["CCO", "c1ccccc1", "CC(=O)O"]
    mean, name = encode_drugs(smiles, "chemberta", str(tiny_roberta), "mean")
    cls, _ = encode_drugs(smiles, "chemberta", str(tiny_roberta), "cls")
    assert mean.shape == (3, 32) and name.startswith("chemberta:")
    assert not np.allclose(mean, cls)
    assert not np.allclose(mean[0], mean[1]) and not np.allclose(mean[1], mean[2])  # SMILES read
    again, _ = encode_drugs(smiles[::-1], "chemberta", str(tiny_roberta), "mean")
    assert np.allclose(again[::-1], mean, atol=1e-5)  # batching/padding does not change a vector


def test_explicit_chemberta_never_falls_back(tmp_path):
    with pytest.raises(PipelineError, match="could not load the ChemBERTa model"):
        encode_drugs(["CCO"], "chemberta", str(tmp_path / "no-such-model"))


def test_auto_falls_back_to_morgan_with_one_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING):
        vecs, name = encode_drugs(["CCO", "c1ccccc1"], "auto", "nobody/not-a-model", n_bits=256)
    assert name == "morgan:r2:256" and vecs.shape == (2, 256)
    assert set(np.unique(vecs)) <= {0.0, 1.0}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Morgan" in warnings[0].getMessage()


def test_an_unparsable_smiles_is_named():
    with pytest.raises(PipelineError, match="not-a-smiles"):
        encode_drugs(["not-a-smiles"], "morgan", "")


def test_config_defaults_are_valid():
    Config().validate()


@pytest.mark.parametrize("embedding", ["linear", "scaled"])
def test_the_pooled_token_equals_the_mean_or_scaled_sum_of_the_gene_tokens(embedding):
    torch.manual_seed(0)
    m = IC50Transformer(50, 8, gene_dim=8, d_model=16, n_heads=2, n_layers=1, ff_dim=16, head_dim=8,
                        tokens="pooled", expr_embedding=embedding).eval()
    genes = torch.randint(1, 50, (4, 10))
    genes[:, 7:] = 0
    values = torch.randn(4, 10) * (genes != 0)
    listed = genes != 0
    if embedding == "scaled":   # sum of e_g * v_g over sqrt(number of genes)
        want = (m.gene_emb(genes) * values.unsqueeze(-1)).sum(1) / listed.sum(1, keepdim=True).sqrt()
    else:                       # mean of e_g + map(v_g), the study's two-token design
        x = (m.gene_emb(genes) + m.expr_emb(values.unsqueeze(-1))) * listed.unsqueeze(-1)
        want = x.sum(1) / listed.sum(1, keepdim=True)
    assert torch.allclose(m.pooled(genes, values, listed, listed), want, atol=1e-6)


def test_gene_dropout_keeps_the_scaled_tokens_expected_size():
    torch.manual_seed(0)
    m = IC50Transformer(200, 8, gene_dim=4, d_model=8, n_heads=2, n_layers=1, ff_dim=8, head_dim=8,
                        tokens="pooled", expr_embedding="scaled", gene_dropout=0.5).eval()
    genes = torch.arange(3, 195).repeat(2000, 1)
    values = torch.ones_like(genes, dtype=torch.float32)
    full = m.pooled(genes[:1], values[:1], genes[:1] != 0, genes[:1] != 0)
    m.train()
    keep = (genes != 0) & (torch.rand(genes.shape) >= 0.5)
    dropped = m.pooled(genes, values, keep, genes != 0).mean(0)
    assert torch.allclose(dropped, full[0], rtol=0.05, atol=0.02)

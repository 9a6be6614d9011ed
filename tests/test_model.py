"""The regressor: the study's size, what it can fit, padding, pooling, gene dropout, per-drug heads."""
import pytest
import torch
from conftest import ROOT, train_steps

from config import ModelConfig, from_dict, load_yaml
from model import IC50Transformer, build_model, count_parameters


def net(n_tokens: int, drug_dim: int, n_drug_heads: int = 0, **settings) -> IC50Transformer:
    small = {"gene_dim": 8, "d_model": 32, "n_heads": 4, "n_layers": 2, "ff_dim": 32, "head_dim": 16}
    return IC50Transformer(ModelConfig(**{**small, **settings}), n_tokens, drug_dim, n_drug_heads)


def test_paper_config_has_the_studys_parameter_count():
    cfg = from_dict(load_yaml(ROOT / "configs/paper.yaml"), "paper.yaml")
    assert count_parameters(build_model(cfg.model, n_tokens=47_278, drug_dim=768)) == 11_378_177


@pytest.mark.parametrize("gene_tokens, pos", [("pooled", "none"), ("each", "none"), ("each", "sinusoidal")])
def test_every_design_fits_a_fixed_batch_where_the_label_is_a_gene_and_a_drug(gene_tokens, pos):
    torch.manual_seed(0)
    model = net(50, 16, gene_tokens=gene_tokens, pos_encoding=pos, dropout=0.0)
    genes = torch.randint(1, 50, (32, 10))
    genes[:, -2:] = 0  # some padding
    values, drug = torch.rand(32, 10), torch.rand(32, 16)
    y = 3 * values[:, 0] * (genes[:, 0] % 2 * 2 - 1) + drug[:, 0]
    losses = train_steps(model, genes, values, drug, y, steps=150)
    assert losses[-1] < 0.05 * losses[0]


def test_padding_tokens_do_not_change_the_prediction():
    torch.manual_seed(0)
    for gene_tokens, pos in (("each", "sinusoidal"), ("pooled", "none")):
        model = net(50, 16, gene_tokens=gene_tokens, pos_encoding=pos).eval()
        genes, values, drug = torch.randint(1, 50, (2, 6)), torch.rand(2, 6), torch.rand(2, 16)
        padded_g = torch.cat([genes, torch.zeros(2, 4, dtype=torch.long)], 1)
        padded_v = torch.cat([values, torch.rand(2, 4)], 1)
        with torch.no_grad():
            assert torch.allclose(model(genes, values, drug), model(padded_g, padded_v, drug), atol=1e-5)


@pytest.mark.parametrize("embedding", ["linear", "scaled"])
def test_the_pooled_token_equals_the_mean_or_scaled_sum_of_the_gene_tokens(embedding):
    torch.manual_seed(0)
    m = net(50, 8, d_model=16, n_heads=2, n_layers=1, ff_dim=16, head_dim=8, expr_embedding=embedding).eval()
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
    m = net(200, 8, gene_dim=4, d_model=8, n_heads=2, n_layers=1, ff_dim=8, head_dim=8,
            gene_dropout=0.5).eval()
    genes = torch.arange(3, 195).repeat(2000, 1)
    values = torch.ones_like(genes, dtype=torch.float32)
    full = m.pooled(genes[:1], values[:1], genes[:1] != 0, genes[:1] != 0)
    m.train()
    keep = (genes != 0) & (torch.rand(genes.shape) >= 0.5)
    dropped = m.pooled(genes, values, keep, genes != 0).mean(0)
    assert torch.allclose(dropped, full[0], rtol=0.05, atol=0.02)


def test_per_drug_heads_start_at_zero_and_leave_unknown_drugs_to_the_shared_head():
    torch.manual_seed(0)
    m = net(20, 4, n_drug_heads=2, gene_dim=4, d_model=8, n_heads=2, n_layers=1, ff_dim=8, head_dim=8).eval()
    g, v, vec = torch.randint(1, 20, (3, 5)), torch.rand(3, 5), torch.rand(3, 4)
    before = m(g, v, vec, torch.tensor([0, 1, 5]))
    with torch.no_grad():
        m.drug_heads.weight.fill_(1.0)
    after = m(g, v, vec, torch.tensor([0, 1, 5]))
    assert not torch.allclose(before[:2], after[:2]) and torch.allclose(before[2], after[2])
    assert net(20, 4, n_drug_heads=2, head="shared").drug_heads is None   # the study's head alone

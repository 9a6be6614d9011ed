"""Drug structures: ChemBERTa from a local RoBERTa, once per SMILES and cached; Morgan fingerprints."""
import logging

import numpy as np
import pytest

from common import PipelineError
from ingest import drugs
from ingest.drugs import encode_drugs


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


def test_chemberta_vectors_are_cached_per_model_pooling_and_smiles(tiny_roberta, monkeypatch):
    real, calls = drugs.chemberta_embeddings, []

    def counted(smiles, *a, **k):
        calls.append(list(smiles))
        return real(smiles, *a, **k)

    monkeypatch.setattr(drugs, "chemberta_embeddings", counted)
    first, _ = drugs.encode_drugs(["CCO", "c1ccccc1"], "chemberta", str(tiny_roberta))
    again, _ = drugs.encode_drugs(["c1ccccc1", "CCO"], "chemberta", str(tiny_roberta))
    assert np.allclose(again, first[::-1]) and calls == [["CCO", "c1ccccc1"]]   # the second from the cache
    drugs.encode_drugs(["CCO", "CCN"], "chemberta", str(tiny_roberta))
    assert calls[1:] == [["CCN"]]                                             # only the new SMILES
    drugs.encode_drugs(["CCO"], "chemberta", str(tiny_roberta), pooling="cls")
    assert calls[2:] == [["CCO"]]                                             # another pooling, another entry

"""Training: resume to the same result, torchrun (Gloo) = one process, predict = the run's own
predictions, the drug-embedding cache, and the optional model paths."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ROOT, SMALL

import main
import train
from ingest import drugs
from ingest.table import with_value_kind
from predictor import Predictor


def metrics(run):
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.e2e
def test_resume_after_a_stop_at_epoch_1_reaches_the_same_result(tmp_path, table_path, monkeypatch):
    args = ["--data", str(table_path), "--epochs", "4", "--patience", "10", *SMALL]
    assert main.main([*args, "--out", str(tmp_path / "straight")]) == 0
    real, calls = train.epoch_plan, []

    def stop_before_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after epoch 1 was checkpointed
        return real(*a, **k)

    monkeypatch.setattr(train, "epoch_plan", stop_before_epoch_2)
    assert main.main([*args, "--out", str(tmp_path / "resumed")]) == 130
    assert (tmp_path / "resumed.incomplete" / "last.pt").exists()
    monkeypatch.setattr(train, "epoch_plan", real)
    assert main.main([*args, "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert a["test"] == b["test"]
    assert [h["val_mse"] for h in a["history"]] == [h["val_mse"] for h in b["history"]]
    assert not (tmp_path / "resumed" / "last.pt").exists() and (tmp_path / "resumed" / "best.pt").exists()


@pytest.mark.e2e
def test_torchrun_with_two_gloo_processes_matches_one_process(tmp_path):
    assert main.main(["--stop-after", "merge", "--out", str(tmp_path / "prep"),
                      "--cells-per-group", "2", *SMALL]) == 0     # builds the token store too
    merged = tmp_path / "prep" / "merged.parquet"
    a, b = run_both(tmp_path, ["--data", str(merged), "--epochs", "1", "--dropout", "0", *SMALL])
    for k in ("mse", "pcc", "scc"):
        assert b["test"][k] == pytest.approx(a["test"][k], rel=1e-3, abs=1e-4), (
            f"{k}: one process {a['test']}, two {b['test']}")
    pa_, pb = (pd.read_parquet(tmp_path / r / "predictions.parquet") for r in ("one", "two"))
    assert np.allclose(pa_["prediction"], pb["prediction"], atol=1e-3)
    # both mapped the token store the preparation run built beside the table
    assert len(list((tmp_path / "prep" / "tokens").glob("*/meta.json"))) == 1
    assert not (tmp_path / "one" / "tokens").exists() and not (tmp_path / "two" / "tokens").exists()


def run_both(tmp_path, args: list[str]) -> tuple[dict, dict]:
    """The same run in one process and under torchrun with two Gloo processes."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(ROOT / "main.py"), *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(ROOT / "main.py"), *args,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "x 2 processes" in two.stderr
    return metrics(tmp_path / "one"), metrics(tmp_path / "two")


@pytest.mark.e2e
def test_one_torchrun_command_prepares_raw_inputs_on_rank_0_then_trains(tmp_path):
    a, b = run_both(tmp_path, ["--cells-per-group", "2", "--epochs", "1", "--dropout", "0", *SMALL])
    for k in ("mse", "pcc", "scc"):
        assert b["test"][k] == pytest.approx(a["test"][k], rel=1e-3, abs=1e-4)
    assert (tmp_path / "two" / "merged.parquet").exists()
    assert len(list((tmp_path / "two" / "tokens").glob("*/meta.json"))) == 1














@pytest.mark.e2e
def test_every_gene_a_token_trains_with_bucketed_batches_and_loader_workers(tmp_path, table_path):
    run = tmp_path / "run"
    assert main.main(["--data", str(table_path), "--epochs", "2", "--out", str(run), *SMALL, "--gene-tokens",
                      "each", "--top-k", "0", "--pos-encoding", "sinusoidal", "--loader-workers", "1"]) == 0
    network = Predictor.load(run / "best.pt").network
    assert (network.cfg.gene_tokens, network.cfg.top_k) == ("each", 0)
    assert main.main(["predict", "--checkpoint", str(run / "best.pt"), "--data", str(table_path),
                      "--out", str(tmp_path / "p.parquet")]) == 0
    preds = pd.read_parquet(run / "predictions.parquet")
    again = pd.read_parquet(tmp_path / "p.parquet").iloc[preds["row"].to_numpy()]["prediction"]
    assert np.allclose(again, preds["prediction"], atol=1e-5)


@pytest.mark.e2e
def test_finetuning_updates_the_drug_encoder(tmp_path, table_path, tiny_roberta):
    run = tmp_path / "ft"
    assert main.main(["--data", str(table_path), "--epochs", "1", "--out", str(run), *SMALL,
                      "--drug-encoder", "chemberta", "--smiles-model", str(tiny_roberta),
                      "--finetune-drug-encoder"]) == 0
    state = torch.load(run / "best.pt", weights_only=False)
    base = drugs.load_chemberta(str(tiny_roberta))[1].state_dict()
    tuned = {k.removeprefix("encoder."): v for k, v in state["tower"].items()}
    changed = {k for k in base if k in tuned and not torch.equal(base[k], tuned[k])}
    layers = {k.split(".")[2] for k in base if k.startswith("encoder.layer.")}
    for layer in layers:     # every layer of the encoder learnt, not a stray parameter
        assert any(k.startswith(f"encoder.layer.{layer}.attention.") for k in changed), layer
    # the checkpoint's tuned encoder is the one prediction uses: the run's test predictions again
    assert main.main(["predict", "--checkpoint", str(run / "best.pt"), "--data", str(table_path),
                      "--out", str(tmp_path / "p.parquet")]) == 0
    preds = pd.read_parquet(run / "predictions.parquet")
    again = pd.read_parquet(tmp_path / "p.parquet").iloc[preds["row"].to_numpy()]["prediction"]
    assert np.allclose(again, preds["prediction"], atol=1e-5)


def bulk_table(seed: int = 0):
    """One row per pair, a z-scored profile per cell line (negatives included), declared normalised."""

    rng = np.random.default_rng(seed)
    lines = rng.normal(size=(8, 12)).astype(np.float32)
    rows = []
    for d in range(4):
        for c in range(8):
            rows.append({"genes": list(range(3, 15)), "expressions": lines[c].tolist(),
                         "cell_line_id": f"L{c}", "drug": f"drug{d}",
                         "canonical_smiles": ["CCO", "c1ccccc1O", "CC(=O)O", "CCN"][d],
                         "LN_IC50": float(d + 2 * lines[c, 0] * (d % 2 * 2 - 1))})
    schema = pa.schema([("genes", pa.list_(pa.int32())), ("expressions", pa.list_(pa.float32())),
                        ("cell_line_id", pa.string()), ("drug", pa.string()),
                        ("canonical_smiles", pa.string()), ("LN_IC50", pa.float64())])
    return with_value_kind(pa.Table.from_pylist(rows, schema=schema), "normalised")


@pytest.mark.e2e
@pytest.mark.parametrize("levers", [
    ["--gene-tokens", "pooled", "--expr-embedding", "scaled", "--head", "per_drug", "--gene-dropout", "0.2",
     "--pos-encoding", "none"],
    ["--expr-embedding", "scaled", "--ensemble", "2"]])
def test_a_normalised_table_trains_and_predicts_with_its_value_kind_recorded(tmp_path, levers):
    import yaml
    path, run = tmp_path / "bulk.parquet", tmp_path / "run"
    pq.write_table(bulk_table(), path)
    assert main.main(["--data", str(path), "--epochs", "3", "--out", str(run), *SMALL, *levers]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["value_kind"] == "normalised"
    network = Predictor.load(run / "best.pt").network
    assert network.cfg.value_kind == "normalised" and len(network.domain["mean"]) == len(network.vocab)
    split = pd.read_parquet(run / "split.parquet")
    test_rows = pq.read_table(path).take(split.index[split["part"] == "test"].to_numpy())
    pq.write_table(test_rows, tmp_path / "new.parquet")
    assert main.main(["predict", "--checkpoint", str(run / "best.pt"),
                      "--data", str(tmp_path / "new.parquet"),
                      "--out", str(tmp_path / "p.parquet")]) == 0
    want = pd.read_parquet(run / "predictions.parquet")["prediction"]
    assert np.allclose(pd.read_parquet(tmp_path / "p.parquet")["prediction"], want, atol=1e-5)
    pq.write_table(test_rows.replace_schema_metadata({"value_kind": "counts"}), tmp_path / "counts.parquet")
    assert main.main(["predict", "--checkpoint", str(run / "best.pt"), "--data",
                      str(tmp_path / "counts.parquet")]) == 2


def test_compile_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    net = torch.nn.Linear(3, 1)

    def broken(module):
        def call(*args):
            raise RuntimeError("no compiler for this platform")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    forward = train.compiled(net)
    x = torch.ones(2, 3)
    assert torch.equal(forward(x), net(x)) and torch.equal(forward(x), net(x))
    assert caplog.text.count("torch.compile failed (RuntimeError: no compiler for this platform)") == 1

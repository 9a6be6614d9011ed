"""main.py end to end: the demo, --data, --stop-after, configuration, and errors on bad input."""
import json
import os
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, SMALL, gdsc_frame, merged_table

import config
import main

FAST = ["--epochs", "2", *SMALL]



def cli(*args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.e2e
def test_the_demo_runs_end_to_end_and_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "demo-run"
    r = cli("--out", out, "--epochs", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("config.yaml", "gdsc_combined.parquet", "match_report.csv", "merged.parquet", "report.md",
                 "split.parquet", "predictions.parquet", "metrics.json", "loss_curve.png", "best.pt",
                 "log.txt"):
        assert (out / name).exists(), name
    assert not (tmp_path / "demo-run.incomplete").exists()
    merged = pq.read_table(out / "merged.parquet")
    split = pd.read_parquet(out / "split.parquet")
    assert len(split) == merged.num_rows and set(split["part"]) == {"train", "val", "test"}
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text  # strict JSON: the constant global-mean baseline has no correlation
    metrics = json.loads(text)
    assert metrics["split"] == "pair"
    assert metrics["baselines"]["global_mean"]["pcc"] is None
    assert set(metrics["test"]) >= {"mse", "pcc", "scc"}
    assert metrics["drug_encoder"].startswith("morgan")  # auto fell back: the hub is offline
    assert metrics["test"]["n"] == (split["part"] == "test").sum()
    preds = pd.read_parquet(out / "predictions.parquet")
    assert len(preds) == metrics["test"]["n"] and preds["prediction"].notna().all()
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2
    assert "test set" in r.stdout and "drug_mean" in r.stdout and "ridge" in r.stdout
    import torch
    best = torch.load(out / "best.pt", weights_only=True)      # plain tensors and lists only
    assert all(s.startswith("DEMO") for s in best["genes"]["gene_symbol"])   # Tahoe's gene table
    assert best["drugs"]["Erlotinib"].startswith("COCCOC1")


@pytest.mark.e2e
def test_data_flag_trains_on_a_hand_built_merged_table(tmp_path):
    path = tmp_path / "mine.parquet"
    pq.write_table(merged_table(n_drugs=4, n_lines=6), path)
    assert main.main(["--data", str(path), "--out", str(tmp_path / "run"), *FAST]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    split = pd.read_parquet(tmp_path / "run" / "split.parquet")
    pairs = {p: set(zip(g["drug"], g["cell_line_id"])) for p, g in split.groupby("part")}
    assert len(split) == 4 * 6 * 5 and not pairs["test"] & (pairs["train"] | pairs["val"])  # pair split
    for part in ("train", "val", "test"):   # every row of the user's table in one part, counted right
        rows = split[split["part"] == part]
        assert metrics["parts"][part] == {"cells": len(rows), "pairs": len(pairs[part]),
                                          "drugs": rows["drug"].nunique(),
                                          "cell_lines": rows["cell_line_id"].nunique()}
    assert metrics["test"]["n"] == metrics["parts"]["test"]["cells"]
    assert not (tmp_path / "run" / "merged.parquet").exists()  # the user's table is not copied


@pytest.mark.e2e
def test_a_fixed_seed_gives_the_same_split_and_metrics_on_cpu(tmp_path):
    path = tmp_path / "mine.parquet"
    pq.write_table(merged_table(n_drugs=4, n_lines=6), path)
    runs = []
    for name in ("a", "b"):
        assert main.main(["--data", str(path), "--out", str(tmp_path / name), "--seed", "5", *FAST]) == 0
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert runs[0]["test"] == runs[1]["test"]
    assert pd.read_parquet(tmp_path / "a/split.parquet").equals(pd.read_parquet(tmp_path / "b/split.parquet"))


@pytest.mark.e2e
def test_stop_after_gdsc_writes_only_the_gdsc_stage(tmp_path):
    assert main.main(["--stop-after", "gdsc", "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "gdsc_combined.parquet").exists()
    assert not (tmp_path / "g" / "merged.parquet").exists()


@pytest.mark.e2e
def test_a_missing_input_file_fails_cleanly(tmp_path):
    r = cli("--gdsc1", tmp_path / "GDSC1_missing.csv", "--out", tmp_path / "run")
    assert r.returncode == 2
    assert "GDSC1_missing.csv" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("run*"))


@pytest.mark.e2e
def test_a_missing_column_fails_cleanly_with_no_run_directory(tmp_path):
    bad = tmp_path / "g2.csv"
    gdsc_frame([("Erlotinib", "A549", 1.0)]).drop(columns="LN_IC50").to_csv(bad, index=False)
    assert main.main(["--gdsc2", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert not list(tmp_path.glob("run*"))


@pytest.mark.e2e
def test_an_empty_merge_fails_cleanly_and_names_the_closest_names(tmp_path, caplog):
    g = tmp_path / "g.csv"
    gdsc_frame([("Cisplatin", "MCF7", 1.0), ("Paclitaxel", "MCF7", 2.0)]).to_csv(g, index=False)
    assert main.main(["--gdsc1", str(g), "--gdsc2", str(g), "--out", str(tmp_path / "run")]) == 2
    assert "no Tahoe drug matches any GDSC drug" in caplog.text and "Cisplatin" in caplog.text
    assert not list(tmp_path.glob("run*"))


@pytest.mark.e2e
def test_an_existing_run_directory_is_never_overwritten(tmp_path, caplog):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("a result")
    assert main.main(["--out", str(tmp_path / "run")]) == 2
    assert f"run directory '{tmp_path / 'run'}' already exists; pass another --out" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["keep.txt"]


def test_every_setting_given_as_a_flag_reaches_the_run_and_its_config_yaml(tmp_path):
    argv, want = [], {}
    for f, _ in config._settings():   # a value other than the default, of the setting's type
        choices, default, kind = f.metadata.get("choices"), f.default, config._field_type(f)
        if choices:
            value = next(c for c in choices if c != default)
        elif kind is bool:
            value = not default
        elif kind is int:
            value = (default or 0) + 2
        elif kind is float:
            value = (default or 0) / 2 + 0.125
        elif config.get_origin(kind) is list:
            value = [3, 4]
        else:
            value = f"x_{f.name}"
        want[f.name] = value
        flag = "--" + f.name.replace("_", "-")
        argv += [flag] if kind is bool else [flag, *map(str, value if isinstance(value, list) else [value])]
    args = main.parse_args(argv)
    got = {f.name: getattr(args, f.name) for f, _ in config._settings()}
    assert got == want                                          # parsed to the setting's type
    cfg = config.from_dict(got, "command line")
    config.save_yaml(cfg, tmp_path / "config.yaml")             # what the run keeps reads back the same
    assert config.from_dict(config.load_yaml(tmp_path / "config.yaml"), "config.yaml") == cfg


def test_yaml_settings_are_overridden_by_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 7\nlr: 0.01\nsplit: drug\n")
    cfg = config.resolve(main.parse_args(["--config", str(y), "--epochs", "3"]))
    assert (cfg.epochs, cfg.lr, cfg.split) == (3, 0.01, "drug")
    y.write_text("epoch: 7\n")
    with pytest.raises(config.PipelineError, match="unknown setting.*epoch"):
        config.resolve(main.parse_args(["--config", str(y)]))
    y.write_text("epochs: many\n")
    with pytest.raises(config.PipelineError, match="'epochs' should be int"):
        config.resolve(main.parse_args(["--config", str(y)]))


@pytest.mark.e2e
def test_a_two_task_array_then_a_combining_run_equals_one_run(tmp_path):
    single = tmp_path / "single"
    assert main.main(["--stop-after", "merge", "--out", str(single), "--cells-per-group", "3"]) == 0
    parts = tmp_path / "parts"
    for task in ("0", "1"):
        assert main.main(["--stop-after", "merge", "--out", str(tmp_path / f"task{task}"),
                          "--cells-per-group", "3", "--parts-dir", str(parts), "--num-shards", "2",
                          "--shard-index", task]) == 0
        assert not (tmp_path / f"task{task}" / "merged.parquet").exists()
    assert main.main(["--stop-after", "merge", "--out", str(tmp_path / "final"), "--cells-per-group", "3",
                      "--parts-dir", str(parts), "--num-workers", "2"]) == 0
    summary = json.loads((tmp_path / "final" / "downsample_summary.json").read_text())
    assert summary["shards_resumed"] == 3 and summary["shards_scanned_now"] == 0
    combined = pq.read_table(tmp_path / "final" / "merged.parquet")
    assert combined.equals(pq.read_table(single / "merged.parquet"))
    assert not (single / "downsample_parts").exists() and not (single / "cells.parquet").exists()


@pytest.mark.e2e
def test_an_interrupted_run_is_only_continued_with_resume(tmp_path):
    (tmp_path / "run.incomplete" / "downsample_parts").mkdir(parents=True)
    assert main.main(["--stop-after", "gdsc", "--out", str(tmp_path / "run")]) == 2
    assert main.main(["--stop-after", "gdsc", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert (tmp_path / "run" / "gdsc_combined.parquet").exists()
    assert main.main(["--stop-after", "gdsc", "--out", str(tmp_path / "new"), "--resume"]) == 2


@pytest.mark.e2e
def test_without_identifier_tables_matching_falls_back_to_names(tmp_path):
    out = tmp_path / "names"
    assert main.main(["--stop-after", "merge", "--out", str(out), "--gdsc-compounds", "",
                      "--cell-model-list", ""]) == 0
    report = pd.read_csv(out / "match_report.csv").set_index("tahoe_name")
    assert report.loc["Sirolimus", "how"] == "none"          # GDSC calls it Rapamycin: needs the CID
    assert report.loc["SW 1417", "how"] == "normalised name"
    assert report.loc["olaparib", "how"] == "normalised name"
    assert report.loc["A549", "how"] == "exact name"


def test_the_demo_identifier_tables_are_used_only_with_the_demo_gdsc(tmp_path):
    demo = config.Config()
    assert all(p and p.endswith(".csv") for p in demo.identifier_tables())
    real = config.Config(gdsc1=str(tmp_path / "GDSC1.xlsx"))
    assert real.identifier_tables() == (None, None)
    mine = config.Config(gdsc1=str(tmp_path / "GDSC1.xlsx"), cell_model_list="models.csv")
    assert mine.identifier_tables() == (None, "models.csv")


@pytest.mark.e2e
def test_an_error_is_one_paragraph_and_its_cause_shows_under_verbose(tmp_path, caplog):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    assert main.main(["--data", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "is not a readable parquet file" in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    assert main.main(["-v", "--data", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "is not a readable parquet file" in caplog.text
    assert "caused by" in caplog.text and "Traceback" in caplog.text

"""Settings: the shipped files are valid, bad values are refused by name, a run's config.yaml reads
back as the same settings, and each command's --help shows only the settings it reads."""
import pytest
from conftest import ROOT

import main
import predict
from common import PipelineError
from config import Config, ModelConfig, from_dict, load_yaml, save_yaml


def test_every_shipped_config_is_valid_and_bad_values_are_named():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        from_dict(load_yaml(path), path.name).validate()
    with pytest.raises(PipelineError, match=r"gene_tokens='all' is not one of \['pooled', 'each'\]"):
        from_dict({"gene_tokens": "all"}, "run.yaml").validate()
    with pytest.raises(PipelineError, match="d_model must be divisible by n_heads"):
        from_dict({"d_model": 30, "n_heads": 4}, "run.yaml").validate()
    with pytest.raises(PipelineError, match=r"unknown setting\(s\) \['lr_schedule'\]"):   # removed settings
        from_dict({"lr_schedule": "cosine"}, "old.yaml")
    with pytest.raises(PipelineError, match="with folds=5 each fold holds out 1/5 of the groups for the "
                                            "test, so test_frac=0.2 does not apply"):
        from_dict({"folds": 5, "test_frac": 0.2}, "run.yaml").validate()
    from_dict({"folds": 5}, "run.yaml").validate()          # --folds alone is not refused


def test_a_runs_config_yaml_reads_back_as_the_same_settings_and_optional_inputs_switch_off(tmp_path):
    cfg = from_dict(load_yaml(ROOT / "configs" / "paper.yaml"), "paper.yaml").validate()
    save_yaml(cfg, tmp_path / "config.yaml")                  # flat, as --config reads it
    again = from_dict(load_yaml(tmp_path / "config.yaml"), "config.yaml")
    assert again == cfg and isinstance(again.model, ModelConfig) and again.model.d_model == 512
    cfg = from_dict({"gene_table": "", "smiles_table": "", "tahoe": ""}, "run.yaml")
    assert (cfg.gene_table, cfg.smiles_table, cfg.tahoe) == (None, None, "")   # tahoe is not optional
    assert Config().to_dict().keys() == load_yaml(tmp_path / "config.yaml").keys()


@pytest.mark.parametrize("command, shown, hidden", [
    ("reference", ["--epochs", "--d-model", "--gdsc2", "--expression", "--drug-encoder", "--seed"],
     ["--split", "--folds", "--test-frac", "--seeds", "--tahoe", "--data", "--out", "--cells-per-group",
      "--layer", "--match-overrides"]),
    ("predict", ["--layer", "--gene-column", "--min-gene-fraction", "--gene-table"],
     ["--epochs", "--d-model", "--split", "--tahoe", "--gdsc2"]),
])
def test_each_command_lists_only_the_settings_it_reads(command, shown, hidden):
    parser = main.reference_parser() if command == "reference" else predict.parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    assert set(shown) <= flags and not set(hidden) & flags
    with pytest.raises(SystemExit):     # a setting the command does not read is an unknown flag
        parser.parse_args([hidden[0], "1"] + (["--data", "x.h5ad"] if command == "predict" else []))

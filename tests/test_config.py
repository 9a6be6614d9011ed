"""The one typed configuration: defaults, shipped YAML files, and values that are refused by name."""
import pytest
from conftest import ROOT

from common import PipelineError
from config import Config, from_dict, load_yaml, stage_settings


def test_the_defaults_and_every_shipped_config_are_valid_and_bad_values_are_named():
    assert Config().validate().gene_tokens == "pooled"
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        from_dict(load_yaml(path), path.name).validate()
    with pytest.raises(PipelineError, match=r"gene_tokens='all' is not one of \['pooled', 'each'\]"):
        Config(gene_tokens="all").validate()
    with pytest.raises(PipelineError, match="d_model must be divisible by n_heads"):
        Config(d_model=30, n_heads=4).validate()
    with pytest.raises(PipelineError, match=r"unknown setting\(s\) \['lr_schedule'\]"):   # removed settings
        from_dict({"lr_schedule": "cosine"}, "old.yaml")
    with pytest.raises(PipelineError, match="with folds=5 each fold holds out 1/5 of the groups for the "
                                            "test, so test_frac=0.2 does not apply"):
        Config(folds=5, test_frac=0.2).validate()
    assert Config(folds=5).validate().test_frac == 0.1           # the default does not conflict


def test_the_stages_read_their_own_settings_and_optional_inputs_switch_off_with_an_empty_value():
    assert stage_settings("gdsc") == ("gdsc1", "gdsc2", "ic50_average")
    assert set(stage_settings("predict")) < set(stage_settings("convert"))   # convert reads obs columns too
    assert "smiles_column" in stage_settings("convert") and "batch_size" in stage_settings("checkpoint")
    cfg = from_dict({"gene_table": "", "smiles_table": "", "tahoe": ""}, "run.yaml")
    assert (cfg.gene_table, cfg.smiles_table, cfg.tahoe) == (None, None, "")   # tahoe is not optional

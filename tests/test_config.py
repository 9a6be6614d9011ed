"""The one typed configuration: defaults, shipped YAML files, and values that are refused by name."""
import pytest
from conftest import ROOT

from common import PipelineError
from config import Config, from_dict, load_yaml


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

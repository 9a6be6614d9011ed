"""Downsampling Tahoe: only labelled cells, no control, no CLS marker, a seeded per-group cap."""
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import downsample
from common import PipelineError
from conftest import write_tahoe

PAIRS = [("Erlotinib", "CVCL_0023"), ("Erlotinib", "CVCL_0320"),
         ("Trametinib (DMSO_TF solvate)", "CVCL_0023"), ("DMSO_TF", "CVCL_0023")]


def run(root, cap=100, fraction=1.0, seed=0, pairs=PAIRS):
    table, stats = downsample.downsample(downsample.TahoeSource(str(root)), pairs, cap, fraction, seed)
    return table, stats


def read_all_cells(root):
    return pq.ParquetDataset(sorted((root / "data").glob("*.parquet"))).read().to_pandas()


def test_the_cls_marker_is_dropped_and_lists_stay_parallel(tiny_tahoe):
    table, _ = run(tiny_tahoe)
    src = read_all_cells(tiny_tahoe).set_index("BARCODE_SUB_LIB_ID")
    for bc, genes, exprs in zip(table["BARCODE_SUB_LIB_ID"].to_pylist(), table["genes"].to_pylist(),
                                table["expressions"].to_pylist()):
        assert genes == list(src.loc[bc, "genes"][1:])
        assert exprs == pytest.approx(list(src.loc[bc, "expressions"][1:]))
        assert min(exprs) >= 0 and 1 not in genes
    assert str(table.schema.field("genes").type) == "list<item: int32>"


def test_only_labelled_pairs_are_kept_and_never_the_control(tiny_tahoe):
    table, stats = run(tiny_tahoe)
    kept = set(zip(table["drug"].to_pylist(), table["cell_line_id"].to_pylist()))
    assert kept == set(PAIRS) - {("DMSO_TF", "CVCL_0023")}
    assert "Trametinib (DMSO_TF solvate)" in table["drug"].to_pylist()
    assert stats["cells_scanned"] == 4 * 3 * 2 * 6


def test_the_cap_holds_per_drug_line_dose_group(tiny_tahoe):
    table, _ = run(tiny_tahoe, cap=4)
    groups = table.select(["drug", "cell_line_id", "dose_uM"]).to_pandas().value_counts()
    assert (groups == 4).all() and len(groups) == 3 * 2


def test_dose_comes_from_sample_metadata(tiny_tahoe):
    table, _ = run(tiny_tahoe)
    assert set(pc.unique(table["dose_uM"]).to_pylist()) == {np.float32(0.05), np.float32(5.0)}


def test_same_seed_same_cells_whatever_the_shard_layout(tiny_tahoe, tmp_path):
    cells = read_all_cells(tiny_tahoe)
    doses = downsample.parse_doses(pd.read_parquet(tiny_tahoe / "metadata/sample_metadata.parquet"))
    records = [{"drug": r.drug, "line": r.cell_line_id, "genes": list(r.genes[1:]),
                "counts": list(r.expressions[1:]), "barcode": r.BARCODE_SUB_LIB_ID,
                "dose": doses[r.sample]} for r in cells.itertuples()]
    other = write_tahoe(tmp_path / "reshard", records[::-1], n_shards=3)  # same cells, other order
    a, _ = run(tiny_tahoe, cap=3, seed=7)
    b, _ = run(other, cap=3, seed=7)
    assert a.equals(b)
    c, _ = run(tiny_tahoe, cap=3, seed=8)
    assert not a.equals(c)


def test_fraction_keeps_about_that_share(tiny_tahoe):
    full, _ = run(tiny_tahoe)
    half, _ = run(tiny_tahoe, fraction=0.5)
    assert 0.25 < half.num_rows / full.num_rows < 0.75
    assert set(half["BARCODE_SUB_LIB_ID"].to_pylist()) <= set(full["BARCODE_SUB_LIB_ID"].to_pylist())


def test_streaming_through_datasets_gives_the_same_cells(tiny_tahoe):
    local, _ = run(tiny_tahoe, cap=3)
    source = downsample.TahoeSource(str(tiny_tahoe))
    source.stream = dict(path="parquet",
                         data_files={"train": sorted(str(p) for p in (tiny_tahoe / "data").glob("*.parquet"))})
    streamed, _ = downsample.downsample(source, PAIRS, 3, 1.0, 0)
    assert streamed.equals(local)


def test_a_hub_id_is_recognised_and_a_bad_path_is_an_error(tmp_path):
    assert downsample.TahoeSource("tahoebio/Tahoe-100M").is_hub
    with pytest.raises(PipelineError, match="neither an existing directory"):
        downsample.TahoeSource(str(tmp_path / "missing" / "dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no data/train"):
        downsample.TahoeSource(str(tmp_path / "empty"))


def test_a_truncated_shard_is_reported_by_name(tiny_tahoe):
    shard = sorted((tiny_tahoe / "data").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(PipelineError, match=shard.name):
        run(tiny_tahoe)


def test_dose_strings_are_parsed_without_eval():
    sm = pd.DataFrame({"sample": ["a", "b", "c"],
                       "drugname_drugconc": ["[('Erlotinib', 0.5, 'uM')]", "[('X', 50.0, 'nM')]",
                                             "__import__('os').system('true')"]})
    assert downsample.parse_doses(sm) == {"a": 0.5, "b": 0.05}

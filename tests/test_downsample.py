"""Downsampling Tahoe: only labelled cells, no control, no CLS marker, a seeded per-group cap that
does not depend on workers, array tasks or shard layout; resumable; bad shards reported by name."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import write_tahoe

import downsample
from common import PipelineError

PAIRS = [("Erlotinib", "CVCL_0023"), ("Erlotinib", "CVCL_0320"),
         ("Trametinib (DMSO_TF solvate)", "CVCL_0023"), ("DMSO_TF", "CVCL_0023")]


def run(root, tmp_path, cap=100, fraction=1.0, seed=0, pairs=PAIRS, name="cells", stream=False, **kw):
    out = tmp_path / f"{name}.parquet"
    summary = downsample.downsample(downsample.TahoeSource(str(root), stream=stream), pairs,
                                    cells_per_group=cap, fraction=fraction, seed=seed, out=out, **kw)
    return (pq.read_table(out) if summary["complete"] else None), summary


def read_all_cells(root):
    return pq.ParquetDataset(sorted((root / "data").glob("*.parquet"))).read().to_pandas()


def test_the_cls_marker_is_dropped_and_lists_stay_parallel(tiny_tahoe, tmp_path):
    table, _ = run(tiny_tahoe, tmp_path)
    src = read_all_cells(tiny_tahoe).set_index("BARCODE_SUB_LIB_ID")
    assert table.num_rows > 0
    for bc, genes, exprs in zip(table["BARCODE_SUB_LIB_ID"].to_pylist(), table["genes"].to_pylist(),
                                table["expressions"].to_pylist()):
        assert genes == list(src.loc[bc, "genes"][1:])
        assert exprs == pytest.approx(list(src.loc[bc, "expressions"][1:]))
        assert min(exprs) >= 0 and 1 not in genes
    assert table.schema.field("genes").type.value_type == pa.int32()
    assert table.schema.field("expressions").type.value_type == pa.float32()


def test_only_labelled_pairs_are_kept_and_never_the_control(tiny_tahoe, tmp_path):
    table, summary = run(tiny_tahoe, tmp_path)
    kept = set(zip(table["drug"].to_pylist(), table["cell_line_id"].to_pylist()))
    assert kept == set(PAIRS) - {("DMSO_TF", "CVCL_0023")}
    assert "Trametinib (DMSO_TF solvate)" in table["drug"].to_pylist()
    assert summary["cells_scanned"] == 4 * 3 * 2 * 6
    assert summary["cells_labelled"] == 3 * 2 * 6


def test_the_cap_holds_per_drug_line_dose_group(tiny_tahoe, tmp_path):
    table, summary = run(tiny_tahoe, tmp_path, cap=4)
    groups = table.select(["drug", "cell_line_id", "dose_uM"]).to_pandas().value_counts()
    assert (groups == 4).all() and len(groups) == 3 * 2
    assert summary["cells_per_group_max"] == 4 and len(summary["kept_per_group"]) == 6


def test_the_cap_keeps_the_smallest_keys_across_shards(tiny_tahoe, tmp_path):
    table, _ = run(tiny_tahoe, tmp_path, cap=2, seed=3)
    cells = read_all_cells(tiny_tahoe)
    cells = cells[cells.drug.eq("Erlotinib") & cells.cell_line_id.eq("CVCL_0023")]
    keys = downsample.cell_keys(pa_array(cells.BARCODE_SUB_LIB_ID), pa_array(cells["sample"]), 3)
    doses = downsample.parse_doses(pd.read_parquet(tiny_tahoe / "metadata/sample_metadata.parquet"))
    cells = cells.assign(key=keys, dose=cells["sample"].map(doses))
    expected = set(cells.sort_values("key").groupby("dose").head(2).BARCODE_SUB_LIB_ID)
    got = table.filter(pc.and_(pc.equal(table["drug"], "Erlotinib"),
                               pc.equal(table["cell_line_id"], "CVCL_0023")))
    assert set(got["BARCODE_SUB_LIB_ID"].to_pylist()) == expected


def pa_array(series):
    return pa.array(series.tolist(), pa.string())


def test_dose_comes_from_sample_metadata(tiny_tahoe, tmp_path):
    table, _ = run(tiny_tahoe, tmp_path)
    assert set(pc.unique(table["dose_uM"]).to_pylist()) == {np.float32(0.05), np.float32(5.0)}


def test_same_seed_same_cells_whatever_the_shard_layout(tiny_tahoe, tmp_path):
    cells = read_all_cells(tiny_tahoe)
    doses = downsample.parse_doses(pd.read_parquet(tiny_tahoe / "metadata/sample_metadata.parquet"))
    records = [{"drug": r.drug, "line": r.cell_line_id, "genes": list(r.genes[1:]),
                "counts": list(r.expressions[1:]), "barcode": r.BARCODE_SUB_LIB_ID,
                "dose": doses[r.sample]} for r in cells.itertuples()]
    other = write_tahoe(tmp_path / "reshard", records[::-1], n_shards=3)  # same cells, other order
    a, _ = run(tiny_tahoe, tmp_path, cap=3, seed=7, name="a")
    b, _ = run(other, tmp_path, cap=3, seed=7, name="b")
    key = ["drug", "cell_line_id", "dose_uM", "BARCODE_SUB_LIB_ID"]
    assert a.sort_by([(k, "ascending") for k in key]).equals(b.sort_by([(k, "ascending") for k in key]))
    c, _ = run(tiny_tahoe, tmp_path, cap=3, seed=8, name="c")
    assert set(a["BARCODE_SUB_LIB_ID"].to_pylist()) != set(c["BARCODE_SUB_LIB_ID"].to_pylist())


def test_one_and_two_workers_and_a_two_task_array_give_identical_output(tiny_tahoe, tmp_path):
    one, _ = run(tiny_tahoe, tmp_path, cap=3, name="one", num_workers=1)
    two, s2 = run(tiny_tahoe, tmp_path, cap=3, name="two", num_workers=2)
    assert s2["workers"] == 2 and one.equals(two)
    parts = tmp_path / "shared-parts"
    for task in (0, 1):
        table, s = run(tiny_tahoe, tmp_path, cap=3, name="array", parts_dir=parts, num_shards=2,
                       shard_index=task)
        assert table is None and not s["complete"] and s["shards_scanned_now"] == 1
    combined, s = run(tiny_tahoe, tmp_path, cap=3, name="array", parts_dir=parts)
    assert s["shards_scanned_now"] == 0 and s["shards_resumed"] == 2
    assert combined.equals(one)
    assert s["cells_scanned"] == 144  # the scan counts survive in the parts


def test_combining_before_every_task_ran_names_the_missing_shards(tiny_tahoe, tmp_path):
    parts = tmp_path / "p"
    run(tiny_tahoe, tmp_path, parts_dir=parts, num_shards=2, shard_index=0)
    source = downsample.TahoeSource(str(tiny_tahoe))
    sampling = downsample.Sampling.make(PAIRS, 100, 1.0, 0, downsample.parse_doses(source.metadata("sample")))
    with pytest.raises(PipelineError, match="1 of 2 shards are not scanned.*train-00001"):
        downsample.combine(source, sampling, parts / sampling.fingerprint(), tmp_path / "x.parquet")


def test_an_interrupted_run_resumes_without_redoing_finished_shards(tiny_tahoe, tmp_path, monkeypatch):
    full, _ = run(tiny_tahoe, tmp_path, cap=3, name="full")
    calls = []
    real = downsample.scan_shard

    def crash_on_second(shard, *args):
        calls.append(shard)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed mid-scan
        return real(shard, *args)

    monkeypatch.setattr(downsample, "scan_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_tahoe, tmp_path, cap=3, name="resumed")
    assert not (tmp_path / "resumed.parquet").exists()  # nothing half-written passed off as output
    calls.clear()
    monkeypatch.setattr(downsample, "scan_shard", lambda *a: (calls.append(a[0]), real(*a))[1])
    resumed, s = run(tiny_tahoe, tmp_path, cap=3, name="resumed")
    assert len(calls) == 1 and s["shards_resumed"] == 1
    assert resumed.equals(full)


def test_other_settings_never_reuse_stale_parts(tiny_tahoe, tmp_path):
    a, s1 = run(tiny_tahoe, tmp_path, cap=3, name="same")
    b, s2 = run(tiny_tahoe, tmp_path, cap=2, name="same")
    assert s1["parts_dir"] != s2["parts_dir"] and s2["shards_resumed"] == 0
    assert b.num_rows < a.num_rows


def test_fraction_keeps_about_that_share(tiny_tahoe, tmp_path):
    full, _ = run(tiny_tahoe, tmp_path, name="full")
    half, _ = run(tiny_tahoe, tmp_path, fraction=0.5, name="half")
    assert 0.25 < half.num_rows / full.num_rows < 0.75
    assert set(half["BARCODE_SUB_LIB_ID"].to_pylist()) <= set(full["BARCODE_SUB_LIB_ID"].to_pylist())


def test_streaming_through_datasets_gives_the_same_cells(tiny_tahoe, tmp_path):
    local, _ = run(tiny_tahoe, tmp_path, cap=3, name="local")
    streamed, _ = run(tiny_tahoe, tmp_path, cap=3, name="streamed", stream=True)
    assert streamed.equals(local)


def test_a_hub_id_is_recognised_and_a_bad_path_is_an_error(tmp_path):
    assert downsample.TahoeSource("tahoebio/Tahoe-100M").is_hub
    with pytest.raises(PipelineError, match="neither an existing directory"):
        downsample.TahoeSource(str(tmp_path / "missing" / "dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no data/train"):
        downsample.TahoeSource(str(tmp_path / "empty"))


def truncate(root):
    shard = sorted((root / "data").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard


def test_a_truncated_shard_is_fatal_by_default_and_named(tiny_tahoe, tmp_path):
    shard = truncate(tiny_tahoe)
    with pytest.raises(PipelineError, match=shard.name):
        run(tiny_tahoe, tmp_path)
    assert not (tmp_path / "cells.parquet").exists()


def test_a_truncated_shard_can_be_skipped_and_is_counted(tiny_tahoe, tmp_path, caplog):
    shard = truncate(tiny_tahoe)
    table, s = run(tiny_tahoe, tmp_path, on_bad_shard="skip")
    assert s["shards_skipped"] == 1 and s["skipped"] == [shard.name] and shard.name in caplog.text
    assert 0 < table.num_rows and s["cells_scanned"] == 72
    out = json.loads(json.dumps(s))
    assert out["complete"]


def test_dose_strings_are_parsed_without_eval():
    sm = pd.DataFrame({"sample": ["a", "b", "c"],
                       "drugname_drugconc": ["[('Erlotinib', 0.5, 'uM')]", "[('X', 50.0, 'nM')]",
                                             "__import__('os').system('true')"]})
    assert downsample.parse_doses(sm) == {"a": 0.5, "b": 0.05}


def test_the_stand_alone_stage_takes_its_flags_from_the_config(tiny_tahoe, tmp_path):
    pd.DataFrame(PAIRS, columns=["drug", "cell_line_id"]).to_csv(tmp_path / "pairs.csv", index=False)
    out = tmp_path / "alone.parquet"
    assert downsample.main(["--tahoe", str(tiny_tahoe), "--pairs", str(tmp_path / "pairs.csv"),
                            "--cells-per-group", "3", "--out", str(out)]) == 0
    alone = pq.read_table(out)
    want, _ = run(tiny_tahoe, tmp_path, cap=3)
    assert alone.sort_by("BARCODE_SUB_LIB_ID").equals(want.sort_by("BARCODE_SUB_LIB_ID"))
    assert downsample.main(["--tahoe", str(tiny_tahoe), "--pairs", str(tmp_path / "none.csv")]) == 2
    assert downsample.main(["--tahoe", str(tiny_tahoe), "--pairs", str(tmp_path / "pairs.csv"),
                            "--on-bad-shard", "skip", "--fraction", "2"]) == 2   # validated as in main.py


@pytest.mark.parametrize("stream", [False, True])
def test_a_shard_without_the_genes_column_is_named_and_can_be_skipped(tiny_tahoe, tmp_path, stream):
    shard = sorted((tiny_tahoe / "data").glob("*.parquet"))[0]
    pq.write_table(pq.read_table(shard).drop_columns(["genes"]), shard)
    with pytest.raises(PipelineError, match=rf"'{shard.name}' lacks column\(s\) \['genes'\]"):
        run(tiny_tahoe, tmp_path, stream=stream)
    assert not (tmp_path / "cells.parquet").exists()
    table, s = run(tiny_tahoe, tmp_path, stream=stream, on_bad_shard="skip", name="skipped")
    assert s["skipped"] == [shard.name] and table.num_rows > 0

"""`main.py predict`: read cells, samples or a table, ask the Predictor, write what it answers.

    python main.py predict --data cells.h5ad --groupby sample      # answered by the ready reference
    python main.py predict --data tumours.csv                      # bulk samples, one row each
    python main.py predict --checkpoint RUN/best.pt --data new_cells.parquet   # each row, its own drug
    python main.py predict --explain Venetoclax                    # the genes a drug reads, no data

An .h5ad (or a matrix of bulk samples, each sample a group of one) gets every drug the predictor
knows, or those asked for (new ones from their SMILES), ranked per --groupby group by relative
sensitivity (predictor/cells.py). A merged table, or a reference's pairs, gets one prediction per
row, for the row's own drug. Everything is answered by Predictor.answer; this module reads the
inputs and writes the outputs, which appear only once everything is written: a bad input leaves
nothing behind.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import anndata.io
import h5py
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

import config as config_mod
import dist
from common import UMASK, PipelineError, atomic_path, command, setup_logging, write_parquet, write_text
from ingest import bulk, h5ad, table
from ingest.tokens import cell_tokens
from predictor import Predictor, reference
from predictor.cells import RANK_BY, Answer, samples_anndata
from predictor.samples import Samples
from predictor.skill import BAR
from reporting.plots import pathway_colours, plot_group, plot_ranking
from reporting.report import ranking_report

log = logging.getLogger("ic50.predict")

MATRIX_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py predict", description="Predict ln IC50 with a ready reference (default: the "
        f"reference {reference.DEFAULT!r} that `main.py reference` builds) or a trained checkpoint. An "
        "AnnData file (.h5ad) gets one prediction per cell and drug, and the drugs are ranked per "
        "--groupby group by z against the drug's training lines. A matrix of bulk samples (.csv, .tsv "
        "or .parquet: one row per sample, one column per gene, or genes as rows; RNA-seq TPM or counts, "
        "or microarray) is predicted sample by sample, each sample a group. A merged table or a "
        "reference's pairs.parquet (LN_IC50 optional) gets one prediction per row, for the row's own "
        "drug. docs/predicting.md says what each output holds.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--reference", metavar="NAME", help=f"a reference built by `main.py reference "
                       f"NAME` (default: {reference.DEFAULT!r})")
    which.add_argument("--checkpoint", help="best.pt of a run, instead of a reference")
    p.add_argument("--data", help="AnnData (.h5ad) of cells, a matrix of bulk samples (.csv, .tsv, "
                   ".parquet), or a merged table (.parquet)")
    p.add_argument("--explain", nargs="+", metavar="DRUG", help="print what drives each of these drugs in "
                   "the reference (its genes, strongest weight first, and its skill on unseen lines) and "
                   "stop; no --data needed")
    p.add_argument("--top", type=int, default=20, help="--explain: genes printed per drug (default: 20)")
    p.add_argument("--min-skill", type=float, default=BAR, help="cells or samples: mark drugs whose skill "
                   f"on unseen lines is below this as low_skill; they stay listed (default: {BAR})")
    p.add_argument("--out", help="a merged table: output parquet (default: <data>_predictions.parquet "
                   "beside it); cells or samples: a new output directory (default: <data>_ln_ic50/ "
                   "beside it)")
    p.add_argument("--drugs", nargs="+", metavar="NAME", help="cells or samples: the drugs to predict "
                   "(default: every drug the checkpoint knows, and those of --smiles)")
    p.add_argument("--smiles", metavar="CSV", help="cells or samples: name,smiles of drugs new to the "
                   "checkpoint")
    p.add_argument("--groupby", metavar="OBS_COLUMN", help=".h5ad: rank the drugs per group of this obs "
                   "column (sample, patient, cluster); default: all cells together. A bulk model "
                   "predicts each group's mean profile and ranks groups against each other")
    p.add_argument("--rank-by", choices=RANK_BY, default="z", help="cells or samples: order each "
                   "group's drugs by z, the prediction against the drug's training lines, most "
                   "specifically sensitive first (default); or by predicted ln IC50, which puts the drugs "
                   "potent against every line first for every group")
    p.add_argument("--block-cells", type=int, default=8192, help=".h5ad: cells read and predicted at a "
                   "time; memory grows with it, not with the file (default: 8192)")
    config_mod.add_arguments(p, "predict")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail, and the cause of an error")
    return p


@command(log)
def main(argv: list[str]) -> int:
    """python main.py predict --data CELLS_H5AD_OR_SAMPLES_OR_TABLE [...]"""
    args = parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    if not args.data and not args.explain:
        raise PipelineError("main.py predict needs --data (cells, samples or a table), or --explain DRUG.")
    predictor = Predictor.load(args.checkpoint, reference_name=args.reference,
                               device=dist.pick_device(args.device))
    if args.explain:
        print(explain_text(predictor, args.explain, max(1, args.top)))
        return 0
    data = Path(args.data)
    cards = reference.card_files(predictor.path)
    if h5ad.is_h5ad(data) or is_sample_matrix(data):
        cfg = config_mod.resolve(args)
        stem = Path(data.name.removesuffix(".gz")).stem
        out = Path(args.out) if args.out else data.with_name(stem + "_ln_ic50")
        options = dict(drugs=args.drugs, smiles=args.smiles, groupby=args.groupby, rank_by=args.rank_by,
                       layer=cfg.layer, gene_column=cfg.gene_column, min_fraction=cfg.min_gene_fraction,
                       gene_table=table.load_gene_table(cfg.gene_table) if cfg.gene_table else None,
                       min_skill=args.min_skill, block_cells=max(1, args.block_cells))
        predict_cells(predictor, data, out, cards, **options)
        return 0
    cells_only = [f for f, v in (("--drugs", args.drugs), ("--smiles", args.smiles),
                                 ("--groupby", args.groupby), ("--rank-by", args.rank_by != "z"),
                                 ("--min-skill", args.min_skill != BAR)) if v]
    if cells_only:
        raise PipelineError(f"{', '.join(cells_only)} apply to cells (.h5ad) and sample matrices; a merged "
                            f"table is predicted for each row's own drug.")
    target = predict_table(predictor, data, args.out)
    for name in ("card.md", "card.json"):   # the card beside the table: <out>_card.md, <out>_card.json
        beside = target.with_name(f"{target.stem}_{name}")
        card = next((c for c in cards if c.name == name), None)
        if card is not None:
            with atomic_path(beside) as tmp:
                shutil.copyfile(card, tmp)
        elif beside.exists():   # an earlier prediction's card, not this one's
            beside.unlink()
            log.info("removed %s: the card of an earlier prediction (this checkpoint has none)", beside)
    return 0


def is_sample_matrix(path: str | Path) -> bool:
    """A plain matrix of samples x genes (the layouts --expression reads), not a table of the
    project's contract: a text table, or a parquet file that neither holds the merged table's
    genes and expressions lists nor names a reference's profiles."""
    name = str(path).lower()
    if name.endswith(MATRIX_SUFFIXES):
        return True
    if name.endswith((".parquet", ".pq")) and Path(path).exists():
        try:
            schema = pq.read_schema(path)
        except pa.ArrowInvalid as e:
            raise PipelineError(f"'{path}' is not a readable parquet file: {e}") from e
        return not ({"genes", "expressions"} <= set(schema.names)
                    or table.PROFILES_KEY.encode() in (schema.metadata or {}))
    return False


# ----------------------------------------------------------------------------- cells and samples

def predict_cells(predictor: Predictor, path: Path, out: Path, cards: list[Path] = (), **options) -> Answer:
    """Cells of an .h5ad, or bulk samples of a matrix, into `out` (a new directory, which appears
    only once everything is written): a copy of the .h5ad (for samples, the samples as an .h5ad)
    with obsm['ln_ic50'] (and obsm['ln_ic50_z']) and uns['ln_ic50_drugs'], predictions.parquet,
    ranking.csv, general_sensitivity.csv, ranking_heatmap.png and copies of `cards`."""
    _check_new(out)
    matrix = None
    if not h5ad.is_h5ad(path):
        if options.get("groupby"):
            raise PipelineError(f"'{path}' is a matrix of samples: each sample is its own group, so "
                                f"--groupby does not apply.")
        matrix = bulk.read_matrix(path)
        log.info("'%s': %d samples x %d genes (%s)", path.name, len(matrix.lines), len(matrix.genes),
                 matrix.layout)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{socket.gethostname()}-{os.getpid()}-",
                                 dir=out.parent))
    work.chmod(0o777 & ~UMASK)   # mkdtemp makes it private; the outputs are for the user's group too
    try:
        if matrix is not None:
            adata = samples_anndata(matrix.lines, matrix.genes, matrix.values)
            answer = predictor.answer(adata, **{**options, "groupby": "sample"})
            logging.getLogger("anndata").setLevel(logging.WARNING)
            adata.write_h5ad(work / f"{Path(path.name.removesuffix('.gz')).stem}.h5ad")
        else:
            answer = _predict_h5ad(predictor, path, work, **options)
        if answer.table is not None:
            write_parquet(pa.Table.from_pandas(answer.table, preserve_index=False),
                          work / "predictions.parquet")
        _write_rankings(answer, work, options.get("groupby") or "all cells", cards,
                        options.get("min_skill", BAR))
        try:
            work.rename(out)   # atomic: the outputs appear together or not at all
        except OSError as e:
            raise PipelineError(f"output directory '{out}' was filled by another process while this "
                                f"prediction ran ({e.strerror}); nothing of this one was written there. "
                                f"Give each job its own --out.") from e
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("outputs in %s", out)
    return answer


def _remove_dead_partials(out: Path) -> None:
    """The hidden work directories that predictions into `out` killed on this host left behind."""
    host = socket.gethostname()
    for partial in out.parent.glob(f".{out.name}.partial-{host}-*"):
        pid = partial.name.removeprefix(f".{out.name}.partial-{host}-").split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


def _check_new(out: Path) -> None:
    """An output directory holds one prediction's files: an earlier one's are never mixed in."""
    if out.is_dir() and not any(out.iterdir()):
        return   # an empty directory made for the job: filled at the end, at once
    if out.exists():
        held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        raise PipelineError(f"output directory '{out}' already exists"
                            + (f" and holds {', '.join(held[:12])}{' ...' if len(held) > 12 else ''}"
                               if held else "")
                            + "; its files are kept as they are. Pass another --out, or delete it first.")


def _predict_h5ad(predictor: Predictor, path: Path, work: Path, *, layer=None, gene_column=None, **options
                  ) -> Answer:
    """An .h5ad read in blocks; a single-cell model's rows streamed into predictions.parquet; the
    answer written into a copy of the file."""
    fields = [("cell", pa.string()), ("group", pa.string()), ("drug", pa.string()), ("ln_ic50", pa.float32())]
    fields += [("z", pa.float32()), ("percentile", pa.float32())] if predictor.spread is not None else []
    schema = pa.schema(fields + [("new_drug", pa.bool_()), ("similarity_to_training", pa.float32())])
    with h5ad.H5ad(path, layer, gene_column) as cells:
        if predictor.bulk:
            answer = predictor.answer(cells, **options)
        else:
            with pq.ParquetWriter(work / "predictions.parquet", schema, compression="zstd") as writer:
                answer = predictor.answer(cells, **options, each_block=lambda rows: writer.write_table(
                    pa.Table.from_pandas(rows, schema=schema, preserve_index=False)))
    shutil.copyfile(path, work / path.name)
    with h5py.File(work / path.name, "r+") as f:   # the entries alone, not the whole file through memory
        for group in ("obsm", "uns"):
            if group not in f:
                anndata.io.write_elem(f, group, {})
        for group, key, value in answer.entries():
            if key in f[group]:
                del f[group][key]
            anndata.io.write_elem(f[group], key, value)
    return answer


def _write_rankings(answer: Answer, work: Path, groupby: str, cards: list[Path], min_skill: float) -> None:
    """ranking.csv, general_sensitivity.csv, drivers.parquet, the heatmap, one picture per group
    (groups/) and report.md."""
    for card in cards:
        shutil.copyfile(card, work / Path(card).name)
    ranking = answer.ranking
    with atomic_path(work / "ranking.csv") as tmp:
        ranking.to_csv(tmp, index=False)
    if answer.general is not None:
        with atomic_path(work / "general_sensitivity.csv") as tmp:
            answer.general.to_csv(tmp, index=False)
    if answer.drivers is not None and len(answer.drivers):
        write_parquet(pa.Table.from_pandas(answer.drivers, preserve_index=False), work / "drivers.parquet")
    plot_ranking(ranking, work / "ranking_heatmap.png", groupby)
    pictures = {}
    if "z" in ranking.columns:
        (work / "groups").mkdir()
        colours = pathway_colours(ranking)
        groups = ranking.groupby("group", sort=True)
        digits = len(str(len(groups)))
        bar = tqdm(groups, desc="pictures", unit=" group", disable=len(groups) < 20)
        for i, (group, part) in enumerate(bar):
            name = f"groups/{i + 1:0{digits}d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', str(group))[:60]}.png"
            plot_group(part, work / name, f"{groupby} {group}", colours, min_skill)
            pictures[group] = name
    write_text(ranking_report(ranking, pictures, groupby, min_skill), work / "report.md")


def explain_text(predictor: Predictor, drugs: list[str], top: int) -> str:
    """What `--explain` prints: each drug's genes, strongest weight first, with its skill."""
    out = []
    for drug in drugs:
        genes, about = predictor.explain(drug, top)
        out += [about, "", genes.to_string(index=False, float_format=lambda v: f"{v:+.4f}"), ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- tables

def predict_table(predictor: Predictor, path: str | Path, out: str | Path | None = None) -> Path:
    """One prediction per row of a merged table or a reference's pairs, for the row's own drug."""
    kind = predictor.network.cfg.value_kind
    declared = table.declared_value_kind(path)
    if declared and declared != kind:
        raise PipelineError(f"'{path}' declares {declared} values, but the model was trained on "
                            f"{kind} values; give it a table of the same kind.")
    tokens, keys = read_table(predictor, Path(path))
    columns = predictor.answer(Samples.of_rows(tokens), table.drug_smiles(keys))
    columns = columns.drop(columns=["sample", "drug"]).rename(columns={"ln_ic50": "prediction"})
    result = table.key_columns(keys)
    for name in columns.columns:
        result = result.append_column(name, pa.array(columns[name].to_numpy()))
    target = Path(out) if out else Path(path).with_name(Path(path).stem + "_predictions.parquet")
    write_parquet(result, target)
    log.info("%d predictions written to %s (drug encoder %s)", len(columns), target,
             predictor.network.drug_encoder)
    return target


def read_table(predictor: Predictor, path: Path):
    """The tokens of every row of a table (a reference's once per profile), with the rows' drugs,
    and the table's key columns."""
    cfg = predictor.network.cfg
    table.merged_columns(path, labelled=False)
    keys = table.read_keys(path, labelled=False)
    profiles = table.profiles_path(path)
    if profiles is not None:
        rows = table.read_profiles(profiles, cfg.value_kind)
        lines = table.profile_index(keys, rows["cell_line_id"].to_pylist(), str(path))
        return cell_tokens(rows, cfg.top_k, cfg.value_kind).with_keys(keys, lines), keys
    rows = table.load_merged(path, labelled=False, value_kind=cfg.value_kind)
    return cell_tokens(rows, cfg.top_k, cfg.value_kind).with_keys(keys), keys


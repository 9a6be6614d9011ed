"""Training throughput of the paper model: samples/s and peak memory at K gene tokens, with drug
vectors from the cached table (this tool) and with ChemBERTa run on every batch (the original).

    python benchmarks/bench_train.py                       # CPU, small batches
    python benchmarks/bench_train.py --device cuda --batch-size 256 --steps 20   # GPU, bf16

The paper model: 47,278 gene tokens, 768-d drug vectors, d_model 512, 3 layers, 4 heads,
feed-forward 512 (11,378,177 parameters). `top_k` feeds K+1 tokens to the Transformer;
`pooled` (the study's design) mean-pools the K genes into one token. ChemBERTa here is a
RoBERTa of ChemBERTa-zinc-base-v1's shape (6 layers, 768 wide, 12 heads), randomly initialised:
the same compute, no download, with about one token per SMILES character. Each configuration
runs in its own process, so peak memory is its own. On CUDA the script also reports model FLOP
utilisation (MFU)
against the GPU's dense bf16 peak (--peak-tflops, default 989 for an H100 SXM).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config import Config, from_dict, load_yaml  # noqa: E402
from model import IC50Transformer, build_model, count_parameters  # noqa: E402
from train import compiled  # noqa: E402

N_TOKENS, DRUG_DIM = 47_278, 768
SMILES = ["COCCOC1=C(C=C2C(=C1)C(=NC=N2)NC3=CC=CC(=C3)C#C)OCCOC", "C1=C(C(=O)NC(=O)N1)F",
          "CC1=C2C(=C(N(C1=O)C)NC3=C(C=C(C=C3)I)F)C(=O)N(C(=O)N2C4=CC=CC(=C4)NC(=O)C)C5CC5",
          "CS(=O)(=O)C1=CC(=C(C=C1)C(=O)NC2=CC(=C(C=C2)Cl)C3=CC=CC=N3)Cl"]


def chemberta_like(device: torch.device):
    import tempfile

    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast
    d = tempfile.mkdtemp()
    bpe = ByteLevelBPETokenizer()
    # few merges: about one token per SMILES character, as long as ChemBERTa's real inputs or longer
    bpe.train_from_iterator(SMILES * 50, vocab_size=290, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(d)
    files = ({"vocab_file": f"{d}/vocab.json", "merges_file": f"{d}/merges.txt"}
             if "vocab_file" in inspect.signature(RobertaTokenizerFast.__init__).parameters
             else {"vocab": f"{d}/vocab.json", "merges": f"{d}/merges.txt"})  # transformers 4 / 5
    tok = RobertaTokenizerFast(**files)
    cfg = RobertaConfig(vocab_size=767, hidden_size=768, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=514, pad_token_id=tok.pad_token_id)
    return tok, RobertaModel(cfg).to(device).eval()


def flops_per_sample(m: IC50Transformer, seq: int, k: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one sample, matmuls only."""
    d = m.drug_proj.out_features
    ff = m.layers[0].ff1.out_features
    per_token = 2 * (3 * d * d + d * d + 2 * d * ff)          # qkv, out, feed-forward
    attention = 2 * 2 * seq * seq * d                          # scores and weighted sum
    embed = 2 * k * m.gene_proj.in_features * d + 2 * DRUG_DIM * d
    return 3 * (len(m.layers) * (seq * per_token + attention) + embed)


def run(cfg: Config, k: int, batch: int, steps: int, device: torch.device, per_batch_chemberta: bool,
        chem=None, compile_model: bool = False) -> dict:
    torch.manual_seed(0)
    m = build_model(cfg.model, N_TOKENS, DRUG_DIM).to(device)
    forward = compiled(m) if compile_model else m   # the training loop's --compile
    opt = torch.optim.Adam(m.parameters(), lr=1e-4, weight_decay=1e-5)
    genes = torch.randint(2, N_TOKENS, (batch, k), device=device)
    values = torch.rand(batch, k, device=device)
    y = torch.randn(batch, device=device)
    table = torch.randn(len(SMILES), DRUG_DIM, device=device)
    drugs = torch.randint(0, len(SMILES), (batch,))
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        if per_batch_chemberta:   # the original: tokenise and encode every row's SMILES
            tok, enc = chem
            t = tok([SMILES[i] for i in drugs.tolist()], padding=True, return_tensors="pt").to(device)
            with torch.no_grad(), amp:
                h = enc(**t).last_hidden_state
            dv = (h * t["attention_mask"][..., None]).sum(1) / t["attention_mask"].sum(1, keepdim=True)
            dv = dv.float()
        else:
            dv = table[drugs.to(device)]
        with amp:
            loss = torch.nn.functional.mse_loss(forward(genes, values, dv).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    seq = k + 1 if cfg.model.gene_tokens == "each" else 2
    out = {"samples_s": steps * batch / secs, "params": count_parameters(m),
           "tflops": flops_per_sample(m, seq, k) * steps * batch / secs / 1e12}
    if device.type == "cuda":
        out["peak_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    else:
        out["peak_gb"] = next(int(x.split()[1]) for x in open("/proc/self/status")
                              if x.startswith("VmHWM")) / 2 ** 20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--k", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network, as --compile does")
    ap.add_argument("--one", nargs=3, metavar=("TOKENS", "K", "CHEMBERTA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    base = from_dict(load_yaml(ROOT / "configs/paper.yaml"), "paper.yaml")
    if args.one:  # a single measurement, in this (fresh) process
        tokens, k, per_batch = args.one[0], int(args.one[1]), args.one[2] == "1"
        cfg = from_dict({**base.to_dict(), "gene_tokens": tokens}, "bench")
        print(json.dumps(run(cfg, k, args.batch_size, args.steps, device, per_batch,
                             chemberta_like(device) if per_batch else None, args.compile)))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))

    def one(tokens: str, k: int, per_batch: bool) -> dict:
        cmd = [sys.executable, __file__, "--device", args.device, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--one", tokens, str(k), "1" if per_batch else "0",
               *(["--compile"] if args.compile else [])]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            sys.exit(p.stderr[-2000:])
        return json.loads(p.stdout.strip().splitlines()[-1])

    for tokens in ("each", "pooled"):
        for k in args.k:
            ours, orig = one(tokens, k, False), one(tokens, k, True)
            mfu = (f", MFU {100 * ours['tflops'] / args.peak_tflops:.1f}%" if device.type == "cuda" else "")
            print(f"{tokens:6s} K={k:5d} batch {args.batch_size}: cached drug table "
                  f"{ours['samples_s']:9.1f} samples/s ({ours['tflops']:.2f} TFLOP/s{mfu}, peak "
                  f"{ours['peak_gb']:.2f} GB) | ChemBERTa every batch {orig['samples_s']:9.1f} samples/s "
                  f"(peak {orig['peak_gb']:.2f} GB) | {ours['samples_s'] / orig['samples_s']:.1f}x")
    print(f"parameters: {ours['params']:,}")


if __name__ == "__main__":
    main()

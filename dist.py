"""The process group: one process, or many under torchrun (NCCL on GPUs, Gloo on CPUs).

Rank 0 prepares data and writes files; every rank trains on its share of each global batch and
predicts its share of the rows, gathered here. Outside torchrun every helper is a no-op.
"""
from __future__ import annotations

import os
import random
from datetime import timedelta
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed as torch_dist

from common import PipelineError

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init(device_name: str, timeout_min: int = 720) -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op otherwise. The other
    ranks wait up to timeout_min for rank 0 (data preparation, the token store)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch_dist.is_initialized():
        return
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch_dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_min))


def close() -> None:
    """Leave the process group (after a barrier where the run succeeded)."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def on_main(fn: Callable[[], T]) -> T:
    """fn() on rank 0 while the other ranks wait; its result, or its error, reaches every rank."""
    if world()[1] == 1:
        return fn()
    box: list = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except BaseException as e:
            box[0] = ("error", str(e) if isinstance(e, PipelineError) else
                      f"rank 0 failed: {type(e).__name__}: {e}")
            torch_dist.broadcast_object_list(box, src=0)
            raise
    torch_dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise PipelineError(value)
    return value


def broadcast(obj: Any) -> Any:
    """Rank 0's value on every rank."""
    if world()[1] == 1:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world()[1] > 1:
        torch_dist.barrier()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over the ranks."""
    if world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(t)
    return t.tolist()


def all_gather(obj: Any) -> list:
    """Every rank's obj, in rank order."""
    if world()[1] == 1:
        return [obj]
    out = [None] * world()[1]
    torch_dist.all_gather_object(out, obj)
    return out


def gather(values: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """Reassemble per-rank predictions (rank r holds rows index) into one array of n rows."""
    if world()[1] == 1:
        return values
    out = np.empty(n, dtype=np.float64)
    for idx, vals in all_gather((index, values)):
        out[idx] = vals
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """auto: this rank's CUDA device where torch sees one, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda was asked for, but torch sees no CUDA GPU "
                            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}).")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

#!/bin/bash
# Train on a SLURM cluster:  sbatch [sbatch options] train.sh [main.py flags...]
#
#   all in one job: sbatch --gres=gpu:4 --cpus-per-task=32 train.sh --tahoe /data/tahoe --gdsc1 ... --num-workers 16
#   one GPU:        sbatch train.sh --data runs/prep/merged.parquet
#   4 GPUs:         sbatch --gres=gpu:4 --cpus-per-task=32 train.sh --data runs/prep/merged.parquet
#   2 nodes x 4:    sbatch --nodes=2 --gres=gpu:4 --cpus-per-task=32 train.sh --data ...
#   seeds 0..4:     sbatch --array=0-4 train.sh --data ...      (the array index is the seed)
#   prepare once:   sbatch --gres=gpu:0 train.sh --stop-after merge --tahoe ... --num-workers 16
#
# Several GPUs or nodes run data-parallel (DistributedDataParallel, NCCL) through torchrun, one
# launcher per node started by srun, meeting at the first node of the allocation. On raw inputs
# rank 0 prepares the data and the token store while the others wait (nodes share the run
# directory's filesystem). Logs go to slurms/<job name>-<job id>_<array index>.out; results to
# runs/<job name>-<job id>[-seed<i>].
#SBATCH --job-name=ic50
#SBATCH --output=slurms/%x-%A_%a.out
#SBATCH --time=12:00:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")}"
mkdir -p slurms runs
# Activate the environment made from env.yaml (override with IC50_ENV=name).
if command -v conda >/dev/null 2>&1; then
    eval "$(conda shell.bash hook)"
    conda activate "${IC50_ENV:-ic50}"
fi

job="${SLURM_JOB_NAME:-ic50}-${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-$(date +%Y%m%d-%H%M%S)}}"
extra=()
if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then          # job array: one seed per task
    job="$job-seed$SLURM_ARRAY_TASK_ID"
    extra+=(--seed "$SLURM_ARRAY_TASK_ID")
fi

nodes="${SLURM_NNODES:-1}"
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
gpus_per_node="${SLURM_GPUS_ON_NODE:-$gpus}"
echo "job $job: $nodes node(s) x ${gpus_per_node:-0} GPU(s), starting $(date -Is)"

args=(--config "${CONFIG:-configs/paper.yaml}" --out "runs/$job" "${extra[@]}" "$@")
if [[ "$nodes" -le 1 && "${gpus_per_node:-0}" -le 1 ]]; then
    python main.py "${args[@]}"
else
    head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    srun --ntasks-per-node=1 torchrun \
        --nnodes="$nodes" --nproc_per_node="$gpus_per_node" \
        --rdzv_id="$job" --rdzv_backend=c10d --rdzv_endpoint="$head:${MASTER_PORT:-29500}" \
        main.py "${args[@]}"
fi

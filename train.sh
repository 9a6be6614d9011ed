#!/bin/bash
# Train on a SLURM cluster:  sbatch train.sh [main.py flags...]
#   sbatch train.sh --config configs/paper.yaml --data runs/prep/merged.parquet
# Logs go to slurms/<job name>-<job id>_<array index>.out; results to runs/<job name>-<job id>.
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

echo "job ${SLURM_JOB_ID:-local} on $(hostname) at $(date -Is)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU visible"

python main.py --config "${CONFIG:-configs/paper.yaml}" \
    --out "runs/${SLURM_JOB_NAME:-ic50}-${SLURM_JOB_ID:-$(date +%Y%m%d-%H%M%S)}" "$@"

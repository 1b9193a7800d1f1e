#!/usr/bin/env bash
# RWKV-6 1b5 on nodes of 8 GPUs. See slurm/ptbr_job.sh for arguments, environment and exit codes.
#   sbatch slurm/train_1b5.sh [--config PATH] [key=value ...]
#SBATCH --job-name=ptbr-1b5
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
exec bash "${PTBR_HOME:-$(dirname "$(scontrol show job "$SLURM_JOB_ID" -o | sed -n 's/.* Command=\([^ ]*\).*/\1/p')")/..}/slurm/ptbr_job.sh" configs/train/1b5.yaml "$@"

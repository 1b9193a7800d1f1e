#!/usr/bin/env bash
# Tokenize a corpus into MDS shards in N parts (a Slurm array job), then join them into one dataset with one
# manifest in a merge job. See slurm/ptbr_data_job.sh for the ways to submit, the environment and the exit codes.
#   bash slurm/build_shards.sh --parts 8 --input clean/ --tokenizer tok.json --output data/v1 --seq-len 4096
#SBATCH --job-name=ptbr-shards
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=ptbr-%x-%A_%a.out
if [ -n "${SLURM_JOB_ID:-}" ]; then
    HERE=${PTBR_HOME:-$(dirname "$(scontrol show job "$SLURM_JOB_ID" -o | sed -n 's/.* Command=\([^ ]*\).*/\1/p')")/..}
else
    HERE=$(cd "$(dirname "$0")/.." && pwd)
fi
exec bash "$HERE/slurm/ptbr_data_job.sh" "shards build" "$HERE/slurm/build_shards.sh" "$@"

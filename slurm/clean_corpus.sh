#!/usr/bin/env bash
# Clean a corpus in N parts (a Slurm array job), then deduplicate across all of them in one merge job.
# See slurm/ptbr_data_job.sh for the ways to submit, the environment and the exit codes.
#   bash slurm/clean_corpus.sh --parts 8 --input raw/ --output clean/ [ptbr corpus clean options]
#SBATCH --job-name=ptbr-clean
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
exec bash "$HERE/slurm/ptbr_data_job.sh" "corpus clean" "$HERE/slurm/clean_corpus.sh" "$@"

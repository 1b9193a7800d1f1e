#!/usr/bin/env bash
# The body of slurm/clean_corpus.sh and slurm/build_shards.sh: a corpus step in N parts as a Slurm array job,
# then one merge job that runs only when every part succeeded.
#
# Three ways in, one script:
#   bash slurm/clean_corpus.sh --parts N ARGS...   (on a login node) submits both jobs itself:
#       sbatch --array=0-(N-1) slurm/clean_corpus.sh --parts N ARGS...                      the parts
#       sbatch --dependency=afterok:PARTS --kill-on-invalid-dep=yes slurm/clean_corpus.sh --parts N ARGS...
#   an array task (SLURM_ARRAY_TASK_ID=I) runs   ptbr <step> ARGS --part I/N
#   a job outside an array runs                  ptbr <step> ARGS --merge N
# ARGS are those of `ptbr corpus clean` / `ptbr shards build` (--input, --output, ...); give the same to all.
#
# Re-running is always safe: a finished part does nothing, an interrupted one starts again from scratch, a
# done merge does nothing. So a preempted or requeued part restarts cleanly (#SBATCH --requeue), and after a
# failed part the same submission again re-runs only what is missing (or: sbatch --array=I ... then the merge).
#
# Environment (all optional):
#   PTBR_HOME              the ptbr checkout (default: the directory above this script)
#   PTBR_PYTHON            Python with ptbr installed (default: $PTBR_HOME/.venv/bin/python, else python3)
#   PTBR_SBATCH_ARGS       extra sbatch options for the parts when this script submits (e.g. "--partition=cpu")
#   PTBR_MERGE_SBATCH_ARGS extra sbatch options for the merge job (it needs one core and the dedup's memory)
# Exit codes: those of ptbr (0 done, 2 bad input: one line says which, 1 a bug: traceback in the log).
set -uo pipefail

STEP=${1:?the wrapper passes the ptbr command, e.g. "corpus clean"}
SELF=${2:?the wrapper passes its own path}
shift 2
PARTS=
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --parts) PARTS=${2:-}; shift 2 ;;
        --parts=*) PARTS=${1#--parts=}; shift ;;
        --part | --part=* | --merge | --merge=*)
            echo "ptbr-data: error: $1 is set by this script; give --parts N instead" >&2; exit 2 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
case "$PARTS" in
    '' | *[!0-9]* | 0) echo "ptbr-data: error: --parts N (the number of parts, >= 1) is required" >&2; exit 2 ;;
esac

# Paths in ARGS are relative to where the jobs were submitted (Slurm's working directory), not to PTBR_HOME.
PTBR_HOME=${PTBR_HOME:-$(cd "$(dirname "$SELF")/.." && pwd)}
[ -d "$PTBR_HOME/ptbr" ] || { echo "ptbr-data: error: PTBR_HOME=$PTBR_HOME is not a ptbr checkout" >&2; exit 2; }
PYTHON=${PTBR_PYTHON:-$PTBR_HOME/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH=$PTBR_HOME${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
read -r -a STEP_WORDS <<< "$STEP"
if [ "$STEP" = "corpus clean" ] && [ -f "$PTBR_HOME/configs/clean/pt-br.yaml" ]; then
    STEP_WORDS+=(--config "$PTBR_HOME/configs/clean/pt-br.yaml")  # a --config in ARGS comes later and wins
fi

if [ -z "${SLURM_JOB_ID:-}" ]; then
    # shellcheck disable=SC2086
    parts_job=$(sbatch --parsable --array=0-$((PARTS - 1)) --export=ALL,PTBR_HOME="$PTBR_HOME" \
        ${PTBR_SBATCH_ARGS:-} "$SELF" --parts "$PARTS" "${ARGS[@]}") || exit $?
    parts_job=${parts_job%%;*}
    # shellcheck disable=SC2086
    merge_job=$(sbatch --parsable --dependency=afterok:"$parts_job" --kill-on-invalid-dep=yes --cpus-per-task=1 \
        --output="ptbr-%x-merge-%j.out" --export=ALL,PTBR_HOME="$PTBR_HOME" ${PTBR_MERGE_SBATCH_ARGS:-} \
        "$SELF" --parts "$PARTS" "${ARGS[@]}") || { scancel "$parts_job"; exit 1; }
    echo "ptbr-data: submitted $STEP in $PARTS part(s): array job ${parts_job%%;*}, merge job ${merge_job%%;*}" \
        "(starts when every part succeeded)"
    exit 0
fi

RESTART=${SLURM_RESTART_COUNT:-0}
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    PART="$SLURM_ARRAY_TASK_ID/$PARTS"
    echo "ptbr-data: $STEP part $PART: job ${SLURM_ARRAY_JOB_ID:-?}_$SLURM_ARRAY_TASK_ID, start $((RESTART + 1))," \
        "on $(hostname) with ${SLURM_CPUS_PER_TASK:-1} core(s)"
    "$PYTHON" -m ptbr.cli "${STEP_WORDS[@]}" --workers "${SLURM_CPUS_PER_TASK:-1}" "${ARGS[@]}" --part "$PART"
    code=$?
    echo "ptbr-data: $STEP part $PART: exit $code after ${SECONDS} s"
    exit $code
fi

echo "ptbr-data: $STEP merge of $PARTS part(s): job $SLURM_JOB_ID, start $((RESTART + 1)), on $(hostname)"
"$PYTHON" -m ptbr.cli "${STEP_WORDS[@]}" "${ARGS[@]}" --merge "$PARTS"
code=$?
echo "ptbr-data: $STEP merge: exit $code after ${SECONDS} s"
exit $code

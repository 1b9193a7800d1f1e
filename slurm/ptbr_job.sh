#!/usr/bin/env bash
# The body of every slurm/train_*.sh: validate, run one srun task per GPU, requeue on preemption.
#
# Why one srun task per GPU (and no torchrun / deepspeed launcher inside the job): Slurm then sees every
# rank. A signal reaches the ranks directly, srun --kill-on-bad-exit ends the step as soon as one rank
# dies, and the step's exit code is the ranks' own (75 = preempted and checkpointed), with no launcher
# in between that kills ranks on SIGTERM or turns their exit code into 1. Ranks and node counts come
# from the SLURM_* variables (ptbr/dist.py).
#
# Usage (from the preset scripts):  sbatch [sbatch options] slurm/train_1b5.sh [--config PATH] [key=value ...]
#   sbatch options override the #SBATCH defaults (--nodes, --time, --signal=B:TERM@900, --partition, ...);
#   --config replaces the preset's config; key=value arguments override config keys (train.max_steps=100).
#
# Environment (all optional):
#   PTBR_HOME            the ptbr checkout (default: the directory above this script; the preset scripts find
#                        it through the job record, since Slurm runs a copy of the batch script)
#   PTBR_PYTHON          Python with ptbr installed (default: $PTBR_HOME/.venv/bin/python, else python3)
#   PTBR_RUN_DIR         run directory (default: the config's train.run_dir, relative to PTBR_HOME)
#   PTBR_CACHE_DIR       shard cache, node-local disk (default: ${TMPDIR:-/tmp}/ptbr-cache-$USER; each node
#                        uses its own sub-directory named after the node)
#   PTBR_MAX_REQUEUES    stop requeueing after this many restarts (default 100)
#   PTBR_DRY_RUN_ARGS    extra arguments for the pre-flight `ptbr train --dry-run` (e.g. --tokens-per-s 5e5)
#   S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_DEFAULT_REGION
#                        the S3 endpoint and credentials, taken from the submitting shell's environment (sbatch
#                        exports it) or an AWS profile; never written to the job log or the run directory.
#
# Exit codes: those of `ptbr train` (see README, "Faults and exit codes"). On 75 (preempted, checkpoint
# committed) the job requeues itself; the next start continues with --resume auto. On 69 (the data source
# stayed unreachable; a checkpoint was saved) it requeues too: Slurm starts a requeued job after its requeue
# delay (about 2 minutes), and if the source is still down the pre-flight check stops the job. On anything
# else it stops: a config error or a non-finite stop would only fail again.
set -uo pipefail

PRESET_CONFIG=${1:?the preset script passes its default config}
shift
CONFIG=$PRESET_CONFIG
OVERRIDES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --config) CONFIG=${2:?--config needs a path}; shift 2 ;;
        --config=*) CONFIG=${1#--config=}; shift ;;
        *=*) OVERRIDES+=("$1"); shift ;;
        *) echo "ptbr-job: error: unexpected argument '$1' (expected --config PATH or key=value)" >&2; exit 2 ;;
    esac
done

PTBR_HOME=${PTBR_HOME:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$PTBR_HOME" || { echo "ptbr-job: error: PTBR_HOME=$PTBR_HOME does not exist" >&2; exit 2; }
PYTHON=${PTBR_PYTHON:-$PTBR_HOME/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
[ -f "$CONFIG" ] || { echo "ptbr-job: error: config file not found: $CONFIG" >&2; exit 2; }

RESTART=${SLURM_RESTART_COUNT:-0}
NODES=${SLURM_NNODES:-1}
NTASKS=${SLURM_NTASKS:-1}
PER_NODE=$((NTASKS / NODES))
CACHE_DIR=${PTBR_CACHE_DIR:-${TMPDIR:-/tmp}/ptbr-cache-${USER:-$(id -un)}}
if [ -z "${PTBR_RUN_DIR:-}" ]; then
    PTBR_RUN_DIR=$("$PYTHON" -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get("train", {}).get("run_dir", "runs/default"))' "$CONFIG" 2>/dev/null || echo runs/default)
    for o in "${OVERRIDES[@]}"; do case "$o" in train.run_dir=*) PTBR_RUN_DIR=${o#train.run_dir=} ;; esac; done
fi
RUN_DIR=$PTBR_RUN_DIR
LOG_DIR=$RUN_DIR/logs/job-${SLURM_JOB_ID:-local}-$RESTART
mkdir -p "$LOG_DIR" || { echo "ptbr-job: error: cannot create $LOG_DIR" >&2; exit 2; }
# one cache per node (expanded by each rank), so that nodes sharing a file system never write the same files
ARGS=(--config "$CONFIG" "${OVERRIDES[@]}" "train.run_dir=$RUN_DIR" "data.cache_dir=$CACHE_DIR/\$SLURMD_NODENAME")

first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$first_node" -o 2>/dev/null | sed -n 's/.* NodeAddr=\([^ ]*\).*/\1/p')
export MASTER_ADDR=${MASTER_ADDR:-$first_node}
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export LOCAL_WORLD_SIZE=$PER_NODE
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1

echo "ptbr-job: job ${SLURM_JOB_ID:-?} start $((RESTART + 1)) on $NODES node(s) x $PER_NODE task(s): $SLURM_JOB_NODELIST"
echo "ptbr-job: config $CONFIG ${OVERRIDES[*]:-}; run dir $RUN_DIR; logs $LOG_DIR; cache $CACHE_DIR"
echo "ptbr-job: master $MASTER_ADDR:$MASTER_PORT; S3 endpoint ${S3_ENDPOINT_URL:-default}"

# Preemption / time limit: Slurm signals this script (--signal=B:SIG@lead); pass the signal to the ranks
# through srun, which forwards it to every task; they checkpoint at the next step and exit 75.
STOP_SIGNAL=
forward() {
    echo "ptbr-job: received SIG$1, asking the ranks to checkpoint and stop"
    STOP_SIGNAL=$1
    [ -n "${SRUN_PID:-}" ] && kill -s "$1" "$SRUN_PID" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT

requeue() {
    if [ "$RESTART" -ge "${PTBR_MAX_REQUEUES:-100}" ]; then
        echo "ptbr-job: not requeueing: already restarted $RESTART times (PTBR_MAX_REQUEUES)"
        return 1
    fi
    echo "ptbr-job: requeueing job $SLURM_JOB_ID; the next start resumes from the last checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
}

# Pre-flight in one process: a bad config, missing shards or an unreachable S3 fail here, in seconds.
# shellcheck disable=SC2086
"$PYTHON" -m ptbr.cli train --dry-run "${ARGS[@]}" --world-size "$NTASKS" --nodes "$NODES" ${PTBR_DRY_RUN_ARGS:-}
code=$?
if [ $code -ne 0 ]; then
    echo "ptbr-job: pre-flight check failed (exit $code); not starting the ranks"
    exit $code
fi
if [ -n "$STOP_SIGNAL" ]; then  # signalled before the ranks started: nothing to save
    requeue
    exit 75
fi

srun --kill-on-bad-exit=1 --ntasks-per-node="$PER_NODE" --output="$LOG_DIR/rank-%t.log" \
    "$PYTHON" -m ptbr.train "${ARGS[@]}" &
SRUN_PID=$!
tail -n +1 -F "$LOG_DIR/rank-0.log" 2>/dev/null &  # rank 0's log, live, in the job log
TAIL_PID=$!
code=0
while :; do
    wait "$SRUN_PID"
    code=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break  # wait returned because of a trapped signal: keep waiting
done
sleep 1
kill "$TAIL_PID" 2>/dev/null
echo "ptbr-job: ranks exited with $code"

case $code in
    0) echo "ptbr-job: training finished" ;;
    75 | 69) requeue || exit $code ;;
    *)
        echo "ptbr-job: failed (exit $code); not requeueing. Last lines of the ranks that reported an error:"
        for f in "$LOG_DIR"/rank-*.log; do
            if grep -qE "^ptbr: error:|Traceback|Error" "$f"; then
                echo "--- $f"; tail -n 5 "$f"
            fi
        done
        ;;
esac
exit $code

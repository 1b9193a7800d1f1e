#!/usr/bin/env bash
# The body of every slurm/train_*.sh: validate, run one srun task per GPU, requeue when the time runs out.
#
# Why one srun task per GPU (and no torchrun / deepspeed launcher inside the job): Slurm then sees every
# rank. A signal reaches the ranks directly, srun --kill-on-bad-exit ends the step as soon as one rank
# dies, and the step's exit code is the ranks' own (75 = stopped by a signal and checkpointed), with no
# launcher in between that kills ranks on SIGTERM or turns their exit code into 1. Ranks and node counts
# come from the SLURM_* variables (ptbr/dist.py).
#
# Usage (from the preset scripts):
#   sbatch [sbatch options] slurm/train_1b5.sh [--config PATH] [--resume auto|never|PATH]
#          [--allow-config-change] [--allow-fresh-start] [key=value ...]
#   sbatch options override the #SBATCH defaults (--nodes, --time, --signal=B:USR1@900, --partition, ...);
#   --config replaces the preset's config; --resume, --allow-config-change and --allow-fresh-start go to
#   `ptbr train` (see its --help and the README's Troubleshooting); key=value arguments override config keys
#   (train.max_steps=100). A relative --config or --resume PATH is relative to the directory the job was
#   submitted from.
#
# Environment (all optional):
#   PTBR_HOME            the ptbr checkout (default: the directory above this script; the preset scripts find
#                        it through the job record, since Slurm runs a copy of the batch script)
#   PTBR_PYTHON          Python with ptbr installed (default: $PTBR_HOME/.venv/bin/python, else python3 from
#                        PATH, which the job log then says)
#   PTBR_RUN_DIR         run directory (default: the config's train.run_dir, relative to PTBR_HOME)
#   PTBR_CACHE_DIR       shard cache, node-local disk (default: ${TMPDIR:-/tmp}/ptbr-cache-$USER; each node
#                        uses its own sub-directory named after the node); a data.cache_dir=... argument wins
#   PTBR_MAX_REQUEUES    stop requeueing after this many restarts (default 100)
#   PTBR_REQUEUE_SIGNAL  the signal sbatch --signal=B:SIG@lead sends before the time limit (default USR1): on
#                        it the job checkpoints and requeues itself
#   PTBR_REQUEUE_ON_TERM 1: requeue on SIGTERM too (sites whose preemption cancels jobs instead of requeueing
#                        them); off by default, so that `scancel` stops a job
#   PTBR_DRY_RUN_ARGS    extra arguments for the pre-flight `ptbr train --dry-run` (e.g. --tokens-per-s 5e5)
#   S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_REGION / AWS_DEFAULT_REGION
#                        the S3 endpoint (unset for AWS itself) and credentials, taken from the submitting
#                        shell's environment (sbatch exports it) or an AWS profile; never written to the job log
#                        or the run directory.
#
# Stopping: every stop signal makes the ranks checkpoint at the next step and exit 75. What happens next
# depends on who sent it:
#   - the time-limit lead signal (PTBR_REQUEUE_SIGNAL, --signal=B:USR1@600 in the presets): the job requeues
#     itself and the next start resumes (--resume auto) with the exact next sample;
#   - SIGTERM: `scancel` (the job ends CANCELLED, with its checkpoint) or Slurm's preemption with
#     PreemptMode=REQUEUE / `scontrol requeue` (Slurm requeues the job itself): the script does not requeue a
#     second time, unless PTBR_REQUEUE_ON_TERM=1.
# Exit codes: those of `ptbr train` (ptbr/errors.py EXIT_CODES, the README's "Faults and exit codes"). On 69
# (the data source stayed unreachable; a checkpoint was saved, or the pre-flight could not reach it) the job
# requeues too: Slurm starts a requeued job after its requeue delay (about 2 minutes), and PTBR_MAX_REQUEUES
# bounds the restarts. On anything else it stops: a config error or a non-finite stop would only fail again.
set -uo pipefail

PRESET_CONFIG=${1:?the preset script passes its default config}
shift
CONFIG=$PRESET_CONFIG
CONFIG_GIVEN=
OVERRIDES=()
TRAIN_FLAGS=()
SUBMIT_DIR=${SLURM_SUBMIT_DIR:-$PWD}
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$SUBMIT_DIR/$1" ;; esac; }
while [ $# -gt 0 ]; do
    case "$1" in
        --config) CONFIG=$(absolute "${2:?--config needs a path}"); CONFIG_GIVEN=1; shift 2 ;;
        --config=*) CONFIG=$(absolute "${1#--config=}"); CONFIG_GIVEN=1; shift ;;
        --resume)
            value=${2:?--resume needs auto, never or a checkpoint path}
            case "$value" in auto | never) ;; *) value=$(absolute "$value") ;; esac
            TRAIN_FLAGS+=(--resume "$value"); shift 2 ;;
        --resume=*)
            value=${1#--resume=}
            case "$value" in auto | never) ;; *) value=$(absolute "$value") ;; esac
            TRAIN_FLAGS+=(--resume "$value"); shift ;;
        --allow-config-change | --allow-fresh-start) TRAIN_FLAGS+=("$1"); shift ;;
        *=*) OVERRIDES+=("$1"); shift ;;
        *) echo "ptbr-job: error: unexpected argument '$1' (expected --config PATH, --resume auto|never|PATH," \
                "--allow-config-change, --allow-fresh-start or key=value)" >&2; exit 2 ;;
    esac
done

PTBR_HOME=${PTBR_HOME:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$PTBR_HOME" || { echo "ptbr-job: error: PTBR_HOME=$PTBR_HOME does not exist" >&2; exit 2; }
[ -n "$CONFIG_GIVEN" ] || CONFIG=$PTBR_HOME/$PRESET_CONFIG
PYTHON=${PTBR_PYTHON:-$PTBR_HOME/.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
    echo "ptbr-job: $PYTHON not found; using $(command -v python3 || echo python3) from PATH (set PTBR_PYTHON to choose)"
    PYTHON=python3
fi
[ -f "$CONFIG" ] || { echo "ptbr-job: error: config file not found: $CONFIG" >&2; exit 2; }

RESTART=${SLURM_RESTART_COUNT:-0}
NODES=${SLURM_NNODES:-1}
NTASKS=${SLURM_NTASKS:-1}
PER_NODE=$((NTASKS / NODES))
REQUEUE_SIGNAL=${PTBR_REQUEUE_SIGNAL:-USR1}
REQUEUE_SIGNAL=${REQUEUE_SIGNAL#SIG}
if [ -z "${PTBR_RUN_DIR:-}" ]; then
    PTBR_RUN_DIR=$("$PYTHON" -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get("train", {}).get("run_dir", "runs/default"))' "$CONFIG" 2>/dev/null || echo runs/default)
    for o in "${OVERRIDES[@]}"; do case "$o" in train.run_dir=*) PTBR_RUN_DIR=${o#train.run_dir=} ;; esac; done
fi
RUN_DIR=$PTBR_RUN_DIR
LOG_DIR=$RUN_DIR/logs/job-${SLURM_JOB_ID:-local}-$RESTART
mkdir -p "$LOG_DIR" || { echo "ptbr-job: error: cannot create $LOG_DIR" >&2; exit 2; }
ARGS=(--config "$CONFIG" "${TRAIN_FLAGS[@]}" "${OVERRIDES[@]}" "train.run_dir=$RUN_DIR")
CACHE_NOTE="data.cache_dir from the command line"
if ! printf '%s\n' "${OVERRIDES[@]}" | grep -q '^data\.cache_dir='; then
    # one cache per node (expanded by each rank), so that nodes sharing a file system never write the same files
    CACHE_DIR=${PTBR_CACHE_DIR:-${TMPDIR:-/tmp}/ptbr-cache-${USER:-$(id -un)}}
    ARGS+=("data.cache_dir=$CACHE_DIR/\$SLURMD_NODENAME")
    CACHE_NOTE="$CACHE_DIR/<node> (PTBR_CACHE_DIR, or pass data.cache_dir=...)"
fi

first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$first_node" -o 2>/dev/null | sed -n 's/.* NodeAddr=\([^ ]*\).*/\1/p')
export MASTER_ADDR=${MASTER_ADDR:-$first_node}
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export LOCAL_WORLD_SIZE=$PER_NODE
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1
ENDPOINT=$(printf '%s' "${S3_ENDPOINT_URL:-}" | sed -E 's#^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@#\1#')

echo "ptbr-job: job ${SLURM_JOB_ID:-?} start $((RESTART + 1)) on $NODES node(s) x $PER_NODE task(s): $SLURM_JOB_NODELIST"
echo "ptbr-job: config $CONFIG ${TRAIN_FLAGS[*]:-} ${OVERRIDES[*]:-}; run dir $RUN_DIR; logs $LOG_DIR"
echo "ptbr-job: cache $CACHE_NOTE; python $PYTHON"
echo "ptbr-job: master $MASTER_ADDR:$MASTER_PORT; S3 endpoint ${ENDPOINT:-AWS (S3_ENDPOINT_URL unset)}"

# Stop signals: forward to the ranks through srun (which passes it to every task); they checkpoint at the
# next step and exit 75. The signal decides whether this script requeues (see the top of this file).
STOP_SIGNAL=
forward() {
    echo "ptbr-job: received SIG$1, asking the ranks to checkpoint and stop"
    [ -z "$STOP_SIGNAL" ] && STOP_SIGNAL=$1  # the first one decides; a later one only repeats the request
    [ -n "${SRUN_PID:-}" ] && kill -s "$1" "$SRUN_PID" 2>/dev/null
}
for sig in USR1 TERM INT; do
    # shellcheck disable=SC2064
    trap "forward $sig" "$sig"
done
[ "$REQUEUE_SIGNAL" = USR1 ] || [ "$REQUEUE_SIGNAL" = TERM ] || trap "forward $REQUEUE_SIGNAL" "$REQUEUE_SIGNAL"

requeue() {
    if [ "$RESTART" -ge "${PTBR_MAX_REQUEUES:-100}" ]; then
        echo "ptbr-job: not requeueing: already restarted $RESTART times (PTBR_MAX_REQUEUES)"
        return 1
    fi
    echo "ptbr-job: requeueing job $SLURM_JOB_ID; the next start resumes from the last checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
}

# After the ranks stopped on a signal (exit 75): requeue on the time-limit signal; on SIGTERM leave it to
# Slurm (scancel: the job ends; preemption / scontrol requeue: Slurm requeues it) unless asked otherwise.
after_signal() {
    if [ "$STOP_SIGNAL" = "$REQUEUE_SIGNAL" ] || { [ "$STOP_SIGNAL" = TERM ] && [ "${PTBR_REQUEUE_ON_TERM:-0}" = 1 ]; }; then
        requeue
        return
    fi
    echo "ptbr-job: stopped by SIG${STOP_SIGNAL:-?} with a checkpoint; not requeueing (scancel ends the job; a" \
         "preemption that requeues does it itself; PTBR_REQUEUE_ON_TERM=1 requeues on SIGTERM)"
}

# Pre-flight in one process: a bad config, missing shards or an unreachable S3 fail here, in seconds.
# shellcheck disable=SC2086
"$PYTHON" -m ptbr.cli train --dry-run "${ARGS[@]}" --world-size "$NTASKS" --nodes "$NODES" ${PTBR_DRY_RUN_ARGS:-}
code=$?
if [ $code -eq 69 ]; then  # the data source is unreachable now; it may be back after the requeue delay
    echo "ptbr-job: pre-flight: the data source is unreachable (exit 69); not starting the ranks"
    requeue || exit $code
    exit $code
elif [ $code -ne 0 ]; then
    echo "ptbr-job: pre-flight check failed (exit $code); not starting the ranks"
    exit $code
fi
if [ -n "$STOP_SIGNAL" ]; then  # signalled before the ranks started: nothing to save
    after_signal
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
    75) after_signal || exit $code ;;
    69) requeue || exit $code ;;
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

#!/usr/bin/env bash
# Multi-node training under SLURM: one `accelerate launch` per node, which starts one worker per GPU.
#
#   sbatch scripts/slurm_train.sh --config configs/default.yaml train.max_steps=10000 output_dir=runs/big
#   sbatch --nodes=4 --gpus-per-node=4 scripts/slurm_train.sh [--config ...] [key=value ...]
#
# Everything after the script name goes to scripts/train.py unchanged. Submit from the repository
# root (or set REPO_DIR) on a filesystem every node sees: output_dir, checkpoints and metrics are
# written there by global rank 0 only, and `train.resume=auto` (the default) makes a requeued or
# resubmitted job continue from the newest complete checkpoint.
#
# What it does: every node runs the same command (srun, one task per node); the node's rank is
# SLURM_NODEID (= SLURM_PROCID with one task per node); node 0 hosts the rendezvous, its address is
# the first host of SLURM_JOB_NODELIST (expanded by `scontrol show hostnames`). Accelerate settings
# come from configs/accelerate_multinode.yaml; the values that depend on the allocation are passed
# as flags, which win over the file.
#
# Environment knobs: GPUS_PER_NODE (default: from SLURM, else nvidia-smi), MAIN_PORT (default:
# derived from the job id), ACCELERATE_CONFIG, REPO_DIR, PYTHON (the interpreter with the deps).
# Batch semantics do not change with the allocation: train.batch_size is the GLOBAL batch, so the
# same config gives the same training on 1 GPU or on N nodes (it must divide by the world size).
#
#SBATCH --job-name=template-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # ONE launcher per node; accelerate spawns the per-GPU workers
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32           # shared by the node's workers (data loading, OMP threads)
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --requeue                    # a preempted job is requeued and resumes from its last checkpoint
#SBATCH --signal=TERM@120            # 2 min before the time limit: SIGTERM to the training processes,
                                     # which checkpoint and exit (resubmit the same command to go on)

set -euo pipefail

REPO_DIR="${REPO_DIR:-${SLURM_SUBMIT_DIR:-$(pwd)}}"
cd "$REPO_DIR"
PYTHON="${PYTHON:-python}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-configs/accelerate_multinode.yaml}"

: "${SLURM_JOB_NODELIST:?run this through sbatch (or inside salloc)}"
NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"

# GPUs per node: SLURM_GPUS_ON_NODE is set on the batch host when --gpus-per-node was requested.
if [[ -z "${GPUS_PER_NODE:-}" ]]; then
    if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then
        GPUS_PER_NODE="$SLURM_GPUS_ON_NODE"
    elif [[ -n "${SLURM_GPUS_PER_NODE:-}" ]]; then
        GPUS_PER_NODE="${SLURM_GPUS_PER_NODE##*:}"   # "a100:8" -> "8"
    else
        GPUS_PER_NODE="$({ nvidia-smi --list-gpus 2>/dev/null || true; } | wc -l)"
    fi
fi
if ! [[ "$GPUS_PER_NODE" =~ ^[0-9]+$ ]] || (( GPUS_PER_NODE < 1 )); then
    echo "error: GPUS_PER_NODE: cannot tell how many GPUs each node has (got '${GPUS_PER_NODE}'); set it" >&2
    exit 2
fi

# awk, not head: head would exit early and, under pipefail, SIGPIPE scontrol and the whole job (status 141)
MAIN_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')"
# Prefer an address: the hostname may resolve differently (or not at all) on the other nodes.
MAIN_IP="$({ getent ahostsv4 "$MAIN_HOST" 2>/dev/null || true; } | awk 'NR == 1 { print $1 }')"
MAIN_IP="${MAIN_IP:-$MAIN_HOST}"
# One port per job, so two jobs sharing a node do not collide (override with MAIN_PORT).
MAIN_PORT="${MAIN_PORT:-$(( 20000 + ${SLURM_JOB_ID:-0} % 20000 ))}"
NUM_PROCESSES=$(( NNODES * GPUS_PER_NODE ))

export NNODES GPUS_PER_NODE MAIN_IP MAIN_PORT NUM_PROCESSES ACCELERATE_CONFIG PYTHON
# CPU threads per worker: the task's CPUs shared by the node's workers (accelerate passes it on).
THREADS=$(( ${SLURM_CPUS_PER_TASK:-$GPUS_PER_NODE} / GPUS_PER_NODE ))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}"

echo "job ${SLURM_JOB_ID:-?}: ${NNODES} node(s) x ${GPUS_PER_NODE} GPU(s) = ${NUM_PROCESSES} processes;" \
     "rendezvous at ${MAIN_IP}:${MAIN_PORT} (${MAIN_HOST})" >&2

# The single quotes matter: SLURM_NODEID must be expanded by each node's own task, not here.
# --kill-on-bad-exit: if one node's training dies, the others are stopped instead of waiting forever
# in a collective.
srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
    exec "$PYTHON" -m accelerate.commands.launch \
        --config_file "$ACCELERATE_CONFIG" \
        --num_machines "$NNODES" \
        --num_processes "$NUM_PROCESSES" \
        --machine_rank "${SLURM_NODEID:-$SLURM_PROCID}" \
        --main_process_ip "$MAIN_IP" \
        --main_process_port "$MAIN_PORT" \
        scripts/train.py "$@"
' slurm_train "$@"

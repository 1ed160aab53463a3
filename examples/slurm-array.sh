#!/bin/bash
# A study on a SLURM cluster: each array task is one runner on one GPU. The runners share a
# PostgreSQL store (claims, results) and a runs folder on the cluster's shared filesystem
# (checkpoints, trained models, feature caches). Submit from the repository root:
#   mkdir -p logs && sbatch examples/slurm-array.sh
#   CONFIG=my-study.toml sbatch --array=0-7 examples/slurm-array.sh
# Watch it from anywhere: TRANSFERLAB_STORE=postgresql://... transferlab status
#SBATCH --job-name=transferlab
#SBATCH --array=0-3
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=48G
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

CONFIG=${CONFIG:-cifar10}  # a shipped config by name, or a .toml file
# The store: a database on a server every node reaches. Keep the password out of the URL
# (~/.pgpass or PGPASSWORD; psycopg reads them like psql does).
export TRANSFERLAB_STORE=${TRANSFERLAB_STORE:-postgresql://transferlab@dbhost:5432/studies}
# Must be shared: experiment folders (a runner taking over a dead one resumes from its
# checkpoint; the trained models end up in one place). The feature cache lives here too.
RUNS=${RUNS:-$HOME/shared/transferlab/runs}
# Need not be shared: the decoded-data cache and the weights cache, node-local and fast.
export TRANSFERLAB_DATA=${TRANSFERLAB_DATA:-${TMPDIR:-/tmp}/transferlab-data-$USER}
export TORCH_HOME=${TORCH_HOME:-${TMPDIR:-/tmp}/torch-$USER}
# A claim whose runner stops heartbeating for this long is taken over (node lost, preempted).
export TRANSFERLAB_LEASE_SECONDS=${TRANSFERLAB_LEASE_SECONDS:-120}

cd "${SLURM_SUBMIT_DIR:-.}"
source .venv/bin/activate
echo "task ${SLURM_ARRAY_TASK_ID:-0} on $(hostname), GPU ${CUDA_VISIBLE_DEVICES:-none}"
# --wait: when nothing is left to claim, wait for the experiments other tasks hold and take
# over any whose task died. Drop it to free the GPU as soon as there is nothing to claim (a
# later `transferlab run` then picks up what a dead task left).
srun transferlab run "$CONFIG" --runs-dir "$RUNS" --wait

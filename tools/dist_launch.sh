#!/usr/bin/env bash
# torchrun for dist_train.sh / dist_test.sh:  bash tools/dist_launch.sh NPROC SCRIPT ARGS...
# runs NPROC processes of tools/SCRIPT with ARGS. Multi-node: NNODES, NODE_RANK, MASTER_ADDR,
# PORT as for torchrun. PYTHON picks the interpreter.
set -euo pipefail
NPROC=$1
SCRIPT=$2
HERE="$(cd "$(dirname "$0")" && pwd)"
PYTHON=${PYTHON:-python}

exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$NPROC" \
    --master_port="${PORT:-29500}" \
    "$HERE/$SCRIPT" "${@:3}"

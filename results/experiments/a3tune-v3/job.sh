#!/usr/bin/env bash
# One run of the experiment: job.sh RUNS SPLIT SEED METHOD [METHOD-ARGS...]
set -euo pipefail
runs=$1 split=$2 seed=$3 method=$4
shift 4
args=()
if [ $# -gt 0 ]; then args=(--method-args "$@"); fi
medbench -q run --task phantom-vqa --method "$method" --split "$split" --seed "$seed" \
  --output-dir "$runs/$split/seed$seed" "${args[@]}" > /dev/null
echo "done: $split seed $seed $method $*" >&2

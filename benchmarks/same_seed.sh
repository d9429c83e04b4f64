#!/bin/bash
# One cell, one seed, at a given commit, alone in its process: the test AUC and the weights' SHA-256.
# Two rows with the same SHA-256 trained the same weights bit for bit.
#
#   benchmarks/same_seed.sh COMMIT [THREADS] [SEED] [CELL] [OUT]
#   HEGL_CPU_KERNELS=native benchmarks/same_seed.sh caa989e 1 0 1,0     # the kernels as before 43c1999
#
# It prepares the built-in benchmark with that commit's code (the cache's SHA-256 list is kept), trains
# CELL (ALPHA,BETA[+section.key=value...]) with examples/ablation.yaml, train.seed=SEED and
# train.deterministic, evaluates it on test, and prints one line.
# Uses the python of the active environment; RESULTS.md "the human-only drop, bisected" is its table.
set -euo pipefail
commit=$1; threads=${2:-1}; seed=${3:-0}; cell=${4:-1,0}; out=${5:-/tmp/hegl-same-seed}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$out/$commit-t$threads-s$seed-${HEGL_CPU_KERNELS:-default}
rm -rf "$work"; mkdir -p "$work/code"
git -C "$repo" archive "$commit" | tar -x -C "$work/code"
export PYTHONPATH=$work/code OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m hegl_cli prepare --out "$work/cache" > "$work/prepare.log" 2>&1
(cd "$work/cache" && find . -type f ! -name '*.lock' ! -name checksums.json ! -name manifest.json ! -name inventory.txt \
   | sort | xargs sha256sum) > "$work/cache.sha"
alpha=${cell%%,*}; rest=${cell#*,}; beta=${rest%%+*}; sets=()
IFS='+' read -ra extra <<< "$rest"; for kv in "${extra[@]:1}"; do sets+=(--set "$kv"); done
python -m hegl_cli train --config "$work/code/examples/ablation.yaml" --alpha "$alpha" --beta "$beta" --data "$work/cache" \
   --name cell --runs-dir "$work/runs" --set train.deterministic=true --set "train.seed=$seed" "${sets[@]}" \
   > "$work/train.log" 2>&1
python -m hegl_cli evaluate "$work/runs/cell" --no-faithfulness > "$work/evaluate.log" 2>&1
auc=$(grep -a -o -m1 'macro AUC [0-9.]*' "$work/evaluate.log" | cut -d' ' -f3)
echo "$commit threads=$threads seed=$seed cell=$cell kernels=${HEGL_CPU_KERNELS:-default} test_auc=$auc" \
     "weights=$(sha256sum "$work/runs/cell/best.safetensors" | cut -c1-16) cache=$(sha256sum "$work/cache.sha" | cut -c1-16)"

#!/usr/bin/env bash
# The A³TUNE experiment on phantom-vqa v3 (paper Tables 1–2, Fig. 4/8 on the embedded tier), on the
# shipped tiny-med-llava v2. Run from the repository root:
#   bash results/experiments/a3tune-v3/reproduce.sh            # JOBS=2 processes of 1 thread each
# 1. λ, then R and K, are chosen on the val split (seed 0; never on test): select.py scores each
#    val run by the mean of closed accuracy and open recall and keeps the best.
# 2. With the chosen (λ, R, K): LoRA, A³TUNE with weak / ground-truth / randomly moved labels, and
#    A³MoE only (λ=0), at seeds 0, 1, 2 on the test split.
# 3. summarise.py: table with CIs, paired differences against LoRA of the same seed, figure.
# Runs and adapters resume by fingerprint, so an interrupted script picks up where it stopped.
set -euo pipefail
HERE=results/experiments/a3tune-v3
RUNS=$HERE/runs
JOBS=${JOBS:-2}
export HF_HUB_OFFLINE=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}

# one job per line: "<split> <seed> <method> [method args...]", JOBS at a time
run_jobs() { xargs -P "$JOBS" -L 1 bash "$HERE/job.sh" "$RUNS"; }

# the weak labels and the embedded scorer are built once, before the parallel jobs share them
medbench -q weak-labels build --task phantom-vqa

printf '%s\n' "val 0 a3tune lam=0.1" "val 0 a3tune lam=1" "val 0 a3tune lam=10" | run_jobs
LAM=$(python "$HERE/select.py" "$RUNS/val" --stage lam)
printf '%s\n' "val 0 a3tune lam=$LAM top_heads=2" "val 0 a3tune lam=$LAM top_heads=8" \
              "val 0 a3tune lam=$LAM top_k=2" "val 0 a3tune lam=$LAM top_k=8" | run_jobs
read -r LAM R K < <(python "$HERE/select.py" "$RUNS/val" --stage all)
CHOSEN="lam=$LAM top_heads=$R top_k=$K"

for s in 0 1 2; do
  echo "test $s lora"
  for labels in weak gt random; do echo "test $s a3tune $CHOSEN labels=$labels"; done
  echo "test $s a3tune lam=0 top_heads=$R top_k=$K"
done | run_jobs
python "$HERE/summarise.py" "$RUNS" "$HERE"

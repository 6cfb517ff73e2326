#!/usr/bin/env bash
# The A³TUNE experiment on phantom-vqa v3 (paper Tables 1–2, Fig. 4/8 on the embedded tier), on the
# shipped tiny-med-llava v2. Run from the repository root:
#   bash results/experiments/a3tune-v3/reproduce.sh            # JOBS=2 processes of 1 thread each
# 1. λ, R and K are chosen on the val split (seed 0; never on test), one at a time around the
#    paper's defaults (λ=0.1, R=4 of 32 heads, K=4): λ ∈ {0.1, 1, 10}, R=8, K=2. choose.py scores
#    each val run by the mean of closed accuracy and open recall and keeps the best.
# 2. On the test split at seeds 0, 1, 2: LoRA and A³MoE only (λ=0: no alignment, so R and K do not
#    enter its training) alongside step 1; then, with the chosen (λ, R, K), A³TUNE with weak,
#    ground-truth and randomly moved labels.
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

{
  for args in "lam=0.1" "lam=1" "lam=10" "top_heads=8" "top_k=2"; do echo "val 0 a3tune $args"; done
  for s in 0 1 2; do echo "test $s lora"; echo "test $s a3tune lam=0"; done
  echo "val 0 lora"; echo "val 0 greedy"  # context for the choice (not candidates)
} | run_jobs
CHOSEN=$(python "$HERE/choose.py" "$RUNS/val")  # e.g. "lam=1": the winning val run's arguments
for s in 0 1 2; do
  for labels in weak gt random; do echo "test $s a3tune $CHOSEN labels=$labels"; done
done | run_jobs
python "$HERE/summarise.py" "$RUNS" "$HERE"

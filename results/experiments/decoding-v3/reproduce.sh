#!/usr/bin/env bash
# The decoding experiment on phantom-vqa v3 (issue: every decoding method on the shipped
# tiny-med-llava v2 and on it + LoRA, full test split, paired against greedy). Run from the
# repository root:
#   bash results/experiments/decoding-v3/reproduce.sh
# Deterministic methods run once (seed 0); sampled methods (nucleus, VCD, AVISC, M3ID, DAMRO) at
# seeds 0, 1, 2. On LoRA the seed also trains the adapter (the same adapters as the A³TUNE
# experiment's LoRA arm, reused by fingerprint from results/checkpoints), so greedy runs at every
# seed there and each sampled run is paired with greedy on its own adapter.
# Runs resume by fingerprint, so an interrupted script picks up where it stopped.
set -euo pipefail
HERE=results/experiments/decoding-v3
RUNS=$HERE/runs
export HF_HUB_OFFLINE=1
for m in greedy beam dola opera pai controlmllm; do
  medbench -q run --task phantom-vqa --method "$m" --seed 0 --output-dir "$RUNS/seed0"
done
for m in nucleus vcd avisc m3id damro; do
  for s in 0 1 2; do
    medbench -q run --task phantom-vqa --method "$m" --seed "$s" --output-dir "$RUNS/seed$s"
  done
done
for s in 0 1 2; do
  medbench -q run --task phantom-vqa --method greedy --tuning lora --seed "$s" --output-dir "$RUNS/seed$s"
done
for m in beam dola opera pai controlmllm; do
  medbench -q run --task phantom-vqa --method "$m" --tuning lora --seed 0 --output-dir "$RUNS/seed0"
done
for m in nucleus vcd avisc m3id damro; do
  for s in 0 1 2; do
    medbench -q run --task phantom-vqa --method "$m" --tuning lora --seed "$s" --output-dir "$RUNS/seed$s"
  done
done
python "$HERE/summarise.py" "$RUNS" "$HERE"

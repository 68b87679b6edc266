#!/usr/bin/env bash
# The evaluations behind docs/training.md, written as JSON into docs/results/ (after
# scripts/train_scifact.sh). The text rankers read every candidate's text, so on a CPU they are
# run on the first 100 SciFact test queries at depth 20 (about 25 minutes); the embedding-based
# methods also run on all 300 test queries at depth 100, and zero-shot on Cranfield.
#   RUNS   run directories (default runs/)
set -euo pipefail
runs=${RUNS:-runs}
out=docs/results
mkdir -p "$out"
scifact=(--dataset data/scifact --split test)

mixlm eval "${scifact[@]}" --bundle "$runs/joint-ts1/bundle" --teacher "$runs/teacher/bundle" \
  --rerank-depth 20 --max-queries 100 -o json > "$out/scifact-q100-d20-ts1.json"
for ts in 4 8; do
  mixlm eval "${scifact[@]}" --bundle "$runs/joint-ts$ts/bundle" --methods mixlm \
    --rerank-depth 20 --max-queries 100 -o json > "$out/scifact-q100-d20-ts$ts.json"
done
for ts in 1 4 8; do
  mixlm eval "${scifact[@]}" --bundle "$runs/joint-ts$ts/bundle" --methods bm25,dense,mixlm \
    --rerank-depth 100 -o json > "$out/scifact-all-d100-ts$ts.json"
done
mixlm eval --dataset data/cranfield --split test --bundle "$runs/joint-ts1/bundle" --methods bm25,dense,mixlm \
  --rerank-depth 100 -o json > "$out/cranfield-all-d100-ts1.json"

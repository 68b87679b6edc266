#!/usr/bin/env bash
# The evaluations behind docs/training.md, written as JSON into docs/results/ (after
# scripts/train_scifact.sh). The text rankers read every candidate's text, so on a CPU they run
# on the first 100 SciFact test queries at depth 20 (about 25 minutes); the embedding methods
# run there too, then on all 300 test queries at depth 100, and zero-shot on Cranfield.
#   RUNS   run directories (default runs/)
#   ONLY   run just the named parts (chance, text, mixlm, full, cranfield), space-separated
#   TS     the T_S values of the mixlm part (default "1 4 8")
set -euo pipefail
runs=${RUNS:-runs}
only=${ONLY:-chance text mixlm full cranfield}
sizes=${TS:-1 4 8}
out=docs/results
mkdir -p "$out"
scifact=(--dataset data/scifact --split test)
subset=(--rerank-depth 20 --max-queries 100)
wanted() { [[ " $only " == *" $1 "* ]]; }

if wanted chance; then  # BM25 and random orderings of the same candidates: seconds, no model
  mixlm eval "${scifact[@]}" "${subset[@]}" --bundle "$runs/joint-ts1/bundle" --methods bm25,random \
    -o json > "$out/scifact-q100-d20-chance.json"
  mixlm eval "${scifact[@]}" --rerank-depth 100 --bundle "$runs/joint-ts1/bundle" --methods bm25,random \
    -o json > "$out/scifact-all-d100-chance.json"
  mixlm eval --dataset data/cranfield --split test --rerank-depth 100 --bundle "$runs/joint-ts1/bundle" \
    --methods bm25,random -o json > "$out/cranfield-all-d100-chance.json"
fi
if wanted text; then  # the teacher's ranker on item text
  mixlm eval "${scifact[@]}" "${subset[@]}" --bundle "$runs/teacher/bundle" --methods bm25,truncated,fulltext \
    -o json > "$out/scifact-q100-d20-text.json"
fi
if wanted mixlm; then
  for ts in $sizes; do
    mixlm eval "${scifact[@]}" "${subset[@]}" --bundle "$runs/joint-ts$ts/bundle" --methods bm25,dense,mixlm \
      -o json > "$out/scifact-q100-d20-ts$ts.json"
  done
fi
if wanted full; then
  mixlm eval "${scifact[@]}" --rerank-depth 100 --bundle "$runs/joint-ts1/bundle" --methods bm25,dense,mixlm \
    -o json > "$out/scifact-all-d100-ts1.json"
fi
if wanted cranfield; then
  mixlm eval --dataset data/cranfield --split test --rerank-depth 100 --bundle "$runs/joint-ts1/bundle" \
    --methods bm25,dense,mixlm -o json > "$out/cranfield-all-d100-ts1.json"
fi

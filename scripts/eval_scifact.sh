#!/usr/bin/env bash
# The evaluations behind docs/training.md, as JSON in docs/results/ (after scripts/train_scifact.sh).
#   scifact   SciFact test, all 300 queries, BM25 top-100: BM25, chance, dense, BM25+dense, MixLM, final
#   text      SciFact test, first 100 queries, BM25 top-20: the same plus the teacher on full and
#             truncated text (the text rankers read every candidate's text: about 10 minutes on a CPU)
#   zeroshot  Cranfield and ADI (never trained on), all queries, BM25 top-100; NFCorpus test too when
#             ../shared/data/_incomplete/nfcorpus is there (incomplete: 238 documents missing)
#   specialist  the SciFact bundle (bundles/scifact) on SciFact test: all 300 queries at BM25 top-100,
#             and the first 100 at top-20 (embedding methods only); and on Cranfield and ADI, which
#             it is not meant for, to show what it gives up there
#   RUNS      run directories (default runs/);  BUNDLE  the MixLM bundle (default $RUNS/joint/bundle)
#   SPECIALIST  the SciFact bundle (default $RUNS/scifact-specialist/bundle)
#   ONLY      run just the named parts, space-separated
set -euo pipefail
runs=${RUNS:-runs}
bundle=${BUNDLE:-$runs/joint/bundle}
specialist=${SPECIALIST:-$runs/scifact-specialist/bundle}
only=${ONLY:-scifact text zeroshot specialist}
out=docs/results  # tracked: a run rewrites the figures docs/training.md cites
wanted() { [[ " $only " == *" $1 "* ]]; }
needed=()
if wanted scifact || wanted text || wanted zeroshot; then needed+=("$bundle"); fi
if wanted text; then needed+=("$runs/teacher/bundle"); fi
if wanted specialist; then needed+=("$specialist"); fi
for dir in "${needed[@]}"; do
  if [ ! -f "$dir/mixlm.json" ]; then
    echo "eval_scifact.sh: no bundle in $dir: run 'make train' first (or set RUNS / BUNDLE / SPECIALIST)" >&2
    exit 1
  fi
done
mkdir -p "$out"
embedding=bm25,random,dense,bm25+dense,mixlm,final

if wanted scifact; then
  mixlm eval --dataset data/scifact --split test --rerank-depth 100 --bundle "$bundle" --methods "$embedding" \
    -o json > "$out/scifact-all-d100.json"
fi
if wanted text; then
  mixlm eval --dataset data/scifact --split test --rerank-depth 20 --max-queries 100 --bundle "$bundle" \
    --teacher "$runs/teacher/bundle" --methods "$embedding,truncated,fulltext" -o json > "$out/scifact-q100-d20.json"
fi
if wanted zeroshot; then
  for name in cranfield adi; do
    mixlm eval --dataset "data/$name" --split test --rerank-depth 100 --bundle "$bundle" --methods "$embedding" \
      -o json > "$out/$name-all-d100.json"
  done
  nfcorpus=../shared/data/_incomplete/nfcorpus
  if [ -d "$nfcorpus" ]; then
    mixlm eval --dataset "$nfcorpus" --split test --rerank-depth 100 --bundle "$bundle" --methods "$embedding" \
      -o json > "$out/nfcorpus-incomplete-all-d100.json"
  fi
fi
if wanted specialist; then
  mixlm eval --dataset data/scifact --split test --rerank-depth 100 --bundle "$specialist" --methods "$embedding" \
    -o json > "$out/scifact-specialist-all-d100.json"
  mixlm eval --dataset data/scifact --split test --rerank-depth 20 --max-queries 100 --bundle "$specialist" \
    --methods "$embedding" -o json > "$out/scifact-specialist-q100-d20.json"
  for collection in cranfield adi; do
    mixlm eval --dataset "data/$collection" --split test --rerank-depth 100 --bundle "$specialist" \
      --methods "$embedding" -o json > "$out/scifact-specialist-$collection-all-d100.json"
  done
fi

#!/usr/bin/env bash
# Trains the SciFact bundles of docs/training.md from the pretrained bases, on SciFact train only:
# stage 2 (the full-text teacher), then stage 3 (joint MixLM) for T_S = 1, 4 and 8; copies the
# T_S = 1 bundle to bundles/scifact-ts1 (what `make demo` uses). Every stage resumes from its
# checkpoint when run again. About 70 minutes on 2 CPU cores; a GPU is used when present.
#   RUNS   run directories (default runs/)
set -euo pipefail
runs=${RUNS:-runs}
data=data/scifact
mixlm models fetch minilm-l6 > /dev/null
mixlm models fetch smollm2-135m > /dev/null
[ -f "$runs/base/mixlm.json" ] || mixlm bundle init --encoder minilm-l6 --ranker smollm2-135m --max-length 256 \
  --out "$runs/base" > /dev/null

mixlm train teacher --bundle "$runs/base" --dataset "$data" --steps 160 --lr 5e-4 --run "$runs/teacher"

# Teacher targets are computed once for the 80 distinct batches (1,280 items) and shared by the three runs.
for ts in 1 4 8; do
  steps=$([ "$ts" = 1 ] && echo 200 || echo 50)
  if [ "$ts" != 1 ] && [ -f "$runs/joint-ts1/targets.safetensors" ] && [ ! -f "$runs/joint-ts$ts/targets.safetensors" ]; then
    mkdir -p "$runs/joint-ts$ts" && cp "$runs/joint-ts1/targets.safetensors" "$runs/joint-ts$ts/"
  fi
  mixlm train joint --teacher "$runs/teacher/bundle" --dataset "$data" --n-tokens "$ts" --steps "$steps" \
    --distinct-steps 80 --fulltext-targets teacher --lr 5e-4 --run "$runs/joint-ts$ts"
done

rm -rf bundles/scifact-ts1
mkdir -p bundles
cp -r "$runs/joint-ts1/bundle" bundles/scifact-ts1
mixlm bundle show bundles/scifact-ts1 > /dev/null
echo "bundles/scifact-ts1 ready"

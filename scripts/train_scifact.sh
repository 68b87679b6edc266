#!/usr/bin/env bash
# Rebuilds bundles/default from the pretrained bases (docs/training.md): stage 2, the full-text
# teacher on SciFact train; pseudo-queries from Debian package descriptions (a second domain,
# data/debian-descriptions); stage 3, the MixLM student (frozen encoder, projection, interaction
# and a fresh ranker adapter) on SciFact train and the pseudo-queries together, with the
# teacher's targets on each query's hardest pair and the encoder's cosine order as a listwise prior;
# a second, smaller student on SciFact alone;
# then the fusion weights fitted on the held-out dev queries (every 8th query by a hash of its
# id) of both collections, and on the Debian ones as the SciFact-only student scores them.
# Every stage resumes from its checkpoint when run again; progress and ETA go to stderr.
# About 65 to 90 minutes on 2 CPU cores with bfloat16 units; a GPU is used when present.
#   RUNS     run directories (default runs/)
#   CATALOG  the corpus (a BEIR corpus.jsonl[.gz] folder) the student's pseudo-queries come from, in place
#            of the Debian descriptions: a catalog of your own trains a bundle for it (docs/training.md)
#   OUT      where the bundle goes (default bundles/default); an existing folder there must be a bundle
set -euo pipefail
runs=${RUNS:-runs}
data=data/scifact
catalog=${CATALOG:-data/debian-descriptions}
out=${OUT:-bundles/default}
if [ -n "${CATALOG:-}" ]; then name=$(basename "$catalog"); else name=debian; fi
pseudo=$runs/$name-pq  # its name is part of the bundle's fusion.fitted_on
if [ -e "$out" ] && [ ! -f "$out/mixlm.json" ]; then
  echo "error: $out exists and is not a bundle; give OUT a new folder" >&2
  exit 1
fi
mixlm models fetch minilm-l6 > /dev/null
mixlm models fetch smollm2-135m > /dev/null
[ -f "$runs/base/mixlm.json" ] || mixlm bundle init --encoder minilm-l6 --ranker smollm2-135m --max-length 256 \
  --out "$runs/base" > /dev/null

mixlm train teacher --bundle "$runs/base" --dataset "$data" --steps 160 --lr 5e-4 --run "$runs/teacher"

[ -f "$pseudo/qrels/train.tsv" ] || mixlm train pseudo-queries --corpus "$catalog" --out "$pseudo" \
  --max-queries 900 > /dev/null

mixlm train joint --teacher "$runs/teacher/bundle" --dataset "$data" --dataset "$pseudo" --group-size 16 \
  --queries-per-step 2 --steps 1000 --lr 2e-3 --teacher-negatives 1 --run "$runs/joint"

# A student that never saw the catalog: its scores there stand for a catalog nobody trained on,
# so the fusion weights are fitted to hold there too, not only on the collections the bundle learned.
mixlm train joint --teacher "$runs/teacher/bundle" --dataset "$data" --group-size 16 \
  --queries-per-step 2 --steps 400 --lr 2e-3 --teacher-negatives 1 --run "$runs/joint-scifact"
mixlm train fusion --bundle "$runs/joint/bundle" --dataset "$data" --dataset "$pseudo" \
  --held-out "$runs/joint-scifact/bundle=$pseudo" > /dev/null

rm -rf "$out"
mkdir -p "$(dirname "$out")"
cp -r "$runs/joint/bundle" "$out"
mixlm bundle show "$out" > /dev/null
echo "$out ready ($(du -sh "$out" | cut -f1))"

#!/usr/bin/env bash
# Rebuilds bundles/default from the pretrained bases (docs/training.md): stage 2, the full-text
# teacher on SciFact train; pseudo-queries from Debian package descriptions (a second domain,
# data/debian-descriptions); stage 3, the MixLM student (frozen encoder, projection, interaction
# and a fresh ranker adapter) on SciFact train and the pseudo-queries together, with the
# teacher's targets on each query's hardest pair and the encoder's cosine order as a listwise prior;
# a second, smaller student on SciFact alone;
# then the fusion weights fitted on the held-out dev queries (every 8th query by a hash of its
# id) of both collections, and on the Debian ones as the SciFact-only student scores them;
# last, bundles/scifact: that bundle trained further on SciFact alone without the prior, for SciFact only.
# Every stage resumes from its checkpoint when run again; progress and ETA go to stderr.
# 81 minutes measured on 2 CPU cores with AMX, up to about 120 without; a GPU is used when present.
#   RUNS     run directories (default runs/)
#   CATALOG  the corpus (a BEIR corpus.jsonl[.gz] folder) the student's pseudo-queries come from, in place
#            of the Debian descriptions: a catalog of your own trains a bundle for it (docs/training.md)
#   OUT      where the bundle goes (default bundles/default); an existing folder there must be a bundle
#   SPECIALIST  where the SciFact bundle goes (default bundles/scifact; not built with a CATALOG of your own)
set -euo pipefail
runs=${RUNS:-runs}
data=data/scifact
catalog=${CATALOG:-data/debian-descriptions}
out=${OUT:-bundles/default}
specialist=${SPECIALIST:-bundles/scifact}
if [ -n "${CATALOG:-}" ]; then name=$(basename "$catalog"); else name=debian; fi
pseudo=$runs/$name-pq  # its name is part of the bundle's fusion.fitted_on
for bundle in "$out" "$specialist"; do
  if [ -e "$bundle" ] && [ ! -f "$bundle/mixlm.json" ]; then
    echo "error: $bundle exists and is not a bundle; give OUT or SPECIALIST a new folder" >&2
    exit 1
  fi
done
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
# The run above already holds SciFact's encodings and the teacher's targets on its hardest pairs.
mkdir -p "$runs/joint-scifact"
for cached in encoded.safetensors targets.safetensors; do
  [ -f "$runs/joint-scifact/$cached" ] || cp "$runs/joint/$cached" "$runs/joint-scifact/"
done
mixlm train joint --teacher "$runs/teacher/bundle" --dataset "$data" --group-size 16 \
  --queries-per-step 2 --steps 400 --lr 2e-3 --teacher-negatives 1 --run "$runs/joint-scifact"
mixlm train fusion --bundle "$runs/joint/bundle" --dataset "$data" --dataset "$pseudo" \
  --held-out "$runs/joint-scifact/bundle=$pseudo" > /dev/null

publish() {  # publish RUN_BUNDLE OUT
  rm -rf "$2"
  mkdir -p "$(dirname "$2")"
  cp -r "$1" "$2"
  mixlm bundle show "$2" > /dev/null
  echo "$2 ready ($(du -sh "$2" | cut -f1))"
}
publish "$runs/joint/bundle" "$out"
if [ -n "${CATALOG:-}" ]; then exit 0; fi

# The bundle for SciFact, the catalog with judged queries: the one above trained further on them
# without the encoder's prior, which makes MixLM add more to BM25 and dense there and less on a
# catalog it never saw; its fusion is fitted on SciFact's dev queries. The teacher's targets cover
# each query's 3 hardest negatives here (weight 0.2). Its projection stays the shipped bundle's, so it
# reads the same store records. The SciFact-only student's run already holds the texts' encodings and
# the teacher's targets on the hardest negative; the other two are computed here.
mkdir -p "$runs/scifact-specialist"
for cached in encoded.safetensors targets.safetensors; do
  [ -f "$runs/scifact-specialist/$cached" ] || cp "$runs/joint-scifact/$cached" "$runs/scifact-specialist/"
done
mixlm train joint --start-from "$runs/joint/bundle" --teacher "$runs/teacher/bundle" --dataset "$data" \
  --group-size 16 --queries-per-step 2 --steps 800 --lr 2e-3 --teacher-negatives 3 --distill-weight 0.2 \
  --encoder-prior-weight 0 --run "$runs/scifact-specialist"
publish "$runs/scifact-specialist/bundle" "$specialist"

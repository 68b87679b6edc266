#!/usr/bin/env bash
# The store walk-through: a snapshot (the output of a distributed backfill) is loaded into
# the online store, promoted, inspected, exported and re-loaded. The vectors are random:
# the encoder and the Beam pipelines that produce real ones come with the pipelines issue.
set -euo pipefail
out=${DEMO_OUT:-demo-out}
rm -rf "$out"
export MIXLM_STORE="$out/store"

echo "== 1. a Parquet snapshot of 2,000 SciFact item ids (random float16 vectors, T_S=1, dim 576)"
python - "$out/snapshots" <<'PY'
import gzip, json, sys, time
import numpy as np
from mixlm.schemas import EmbeddingRecord, ItemEvent
from mixlm.store import SnapshotWriter

rng = np.random.default_rng(0)
with gzip.open("data/scifact/corpus.jsonl.gz", "rt") as corpus, \
        SnapshotWriter(sys.argv[1], "demo-random", "bf-demo", dtype="float16", rows_per_file=1000) as writer:
    for line_no, line in zip(range(2000), corpus):
        doc = json.loads(line)
        event = ItemEvent(doc["_id"], "upsert", 1, doc["title"], doc["text"])
        writer.write([EmbeddingRecord(doc["_id"], 1, "demo-random", event.content_hash(),
                                      rng.standard_normal((1, 576)).astype("float16"),
                                      job_id="bf-demo", encoded_at=time.time())])
print(f"wrote {len(writer.files)} part files under {sys.argv[1]}")
PY

echo "== 2. mixlm-store load (builds LMDB from the snapshot)"
mixlm-store load "$out/snapshots" -o yaml
job_id=$(mixlm-store jobs -o json | python -c 'import json,sys; print(json.load(sys.stdin)[0]["job_id"])')

echo "== 3. a replay of the same snapshot writes nothing (every record is stale)"
mixlm-store load "$out/snapshots" -o json | python -c 'import json,sys; print(json.load(sys.stdin)["counts"])'

echo "== 4. promote, stats, one item, the job list and the first job's manifest"
mixlm-store promote demo-random
mixlm-store stats
first_id=$(python -c 'import gzip, json; print(json.loads(gzip.open("data/scifact/corpus.jsonl.gz").readline())["_id"])')
mixlm-store item "$first_id"
mixlm-store jobs
mixlm-store get "$job_id"

echo "== 5. export to Parquet and load into a second store"
mixlm-store export "$out/export"
mixlm-store --store "$out/store-copy" load "$out/export" -o json | python -c 'import json,sys; print(json.load(sys.stdin)["counts"])'
echo "demo finished: store in $MIXLM_STORE"

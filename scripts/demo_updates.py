"""Write a batch of item updates, deletes, late (stale) versions and malformed events as JSONL.

Usage: python scripts/demo_updates.py CORPUS.jsonl.gz N > updates.jsonl
"""

import gzip
import json
import sys
import time

corpus, count = sys.argv[1], int(sys.argv[2])
now = int(time.time() * 1000)
with gzip.open(corpus, "rt", encoding="utf-8") as lines:
    docs = [json.loads(line) for _, line in zip(range(count), lines, strict=False)]
out = sys.stdout
for index, doc in enumerate(docs):
    version = now + index
    if index % 5 == 0:
        out.write(json.dumps({"item_id": doc["_id"], "op": "delete", "version": version}) + "\n")
    else:
        text = doc["text"] + " [Updated: an erratum was added to this abstract.]"
        out.write(json.dumps({"item_id": doc["_id"], "op": "upsert", "version": version, "title": doc["title"],
                              "text": text}) + "\n")
    if index % 10 == 1:  # a late, older event for the same item: it must not win
        out.write(json.dumps({"item_id": doc["_id"], "op": "upsert", "version": 1, "title": "stale",
                              "text": "an old copy"}) + "\n")
out.write('{"item_id": "broken", "op": "upsert", "version": "12a", "text": "bad version"}\n')
out.write('{"item_id": "broken-2", "op": "merge", "version": 3}\n')
out.write("this line is not JSON\n")

"""Stage 1 (optional): domain adaptation of the ranker LM on corpus text (next-token loss, an adapter).

It reads documents only, never queries or judgments, so every document of the collection may
be used. The teacher stage then continues this adapter instead of starting a fresh one.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import torch

from mixlm.encoders.bundle import Bundle, load_bundle
from mixlm.schemas.beir import read_corpus
from mixlm.schemas.errors import InputError
from mixlm.training.config import DomainConfig
from mixlm.training.export import write_bundle
from mixlm.training.run import RunDir, seed_everything, train_loop
from mixlm.training.stages import named, trainable


def train_domain(bundle_dir: str | Path, run_dir: str | Path, config: DomainConfig, *, log=print) -> Bundle:
    """Train (or resume) stage 1; writes ``run_dir/bundle`` with the ranker's adapter and returns it."""
    seed_everything(config.loop.seed)
    source = load_bundle(bundle_dir)
    run = RunDir(run_dir, "domain", {"bundle": str(Path(bundle_dir).resolve()), **asdict(config)})
    docs = list(read_corpus(config.dataset))
    if not docs:
        raise InputError(f"{config.dataset} has no documents")
    random.Random(config.loop.seed).shuffle(docs)
    log(f"domain: {len(docs)} documents of {Path(config.dataset).name}")
    model, params = trainable(source.load_ranker(merge_adapter=False), config.ranker_lora, config.loop.seed, log,
                              "ranker")
    tokenizer = source.ranker_tokenizer
    device = next(model.parameters()).device

    def step(index: int) -> dict[str, float]:
        total = 0.0
        for k in range(config.docs_per_step):
            doc = docs[(index * config.docs_per_step + k) % len(docs)]
            text = source.config.encoding.format_item(doc.title, doc.text)
            ids = torch.tensor([tokenizer.encode(text, add_special_tokens=True)[: config.max_tokens]], device=device)
            if ids.shape[1] < 2:
                continue
            loss = model(input_ids=ids, labels=ids).loss / config.docs_per_step
            loss.backward()
            total += loss.item()
        return {"lm": total}

    train_loop(run, named(params, "ranker"), step, config.loop, log=log)
    bundle = write_bundle(run.bundle_dir, source, source.config, ranker=model)
    log(f"domain: bundle {bundle.path}")
    return bundle

"""Stage 2: the full-text teacher, the ranker fine-tuned on (query, full item text) with ``KL(p* || p)``."""

from __future__ import annotations

from pathlib import Path

import torch

from mixlm.encoders.bundle import Bundle
from mixlm.training.config import TeacherConfig
from mixlm.training.export import write_bundle
from mixlm.training.losses import bernoulli_kl
from mixlm.training.run import train_loop
from mixlm.training.stages import named, start_ranking_stage


def item_token_embeddings(ranker, bundle: Bundle, doc, max_tokens: int):
    text = bundle.config.encoding.format_item(doc.title, doc.text)
    return ranker.item_text_embeddings(text)[:max_tokens]


def train_teacher(bundle_dir: str | Path, run_dir: str | Path, config: TeacherConfig, *, log=print) -> Bundle:
    """Train (or resume) the teacher; writes ``run_dir/bundle`` with the ranker's adapter and returns it."""
    stage = start_ranking_stage("teacher", bundle_dir, run_dir, config, log)
    source, run, dataset, sampler, ranker, params = (stage.source, stage.run, stage.dataset, stage.sampler,
                                                      stage.ranker, stage.ranker_params)
    per_step = config.data.queries_per_step

    def step(index: int) -> dict[str, float]:
        total = 0.0
        for group in sampler.groups(index, per_step):
            items = [item_token_embeddings(ranker, source, dataset.corpus[d], config.max_item_tokens)
                     for d in group.doc_ids]
            log_odds, _ = ranker.forward_group(dataset.queries[group.query_id], items)
            loss = bernoulli_kl(torch.tensor(group.labels), log_odds) / per_step
            loss.backward()
            total += loss.item()
        return {"task": total}

    log(f"teacher: {len(params)} adapter tensors, {sum(p.numel() for p in params):,} parameters trained")
    train_loop(run, named(params, "ranker"), step, config.loop, log=log)
    bundle = write_bundle(run.bundle_dir, source, source.config, ranker=ranker.model)
    log(f"teacher: bundle {bundle.path} (encoder_id {bundle.encoder_id})")
    return bundle

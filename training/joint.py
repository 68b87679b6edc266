"""Stage 3: the projection and the ranker (and, optionally, the encoder) trained on mixed inputs.

The student ranker reads ``[prompt + query text][query tokens][item tokens][end]`` (see
``RankerInputs``): the query's own vectors close the shared prefix, and each item token carries
the projected elementwise product of the query's and the item's retrieval vectors besides the
item's projected vector. It starts from the base ranker with a fresh adapter on every block, or
from a trained bundle's adapter with that bundle's projection frozen (``start_from``: the item
tokens, and so the store's records, stay valid); the teacher teaches through its targets.

The loss (``losses.mixlm_loss``) is listwise (softmax over each group) plus pointwise on the
gold labels, plus distillation of the teacher's full-text scores and self-alignment to its
last hidden states on the pairs the teacher scored: each training query's judged documents
and its ``teacher_negatives`` hardest negatives (``targets.safetensors`` in the run directory,
computed once). The other negatives of a group, sampled from BM25's and the encoder's own
top candidates, have gold labels only: the student is ~100x cheaper per pair than the teacher,
so most pairs go to it.

With the encoder frozen (the default, ``encoder_lora=None``) its pooled states and retrieval
vectors are computed once for the corpus and the queries (``encoded.safetensors``), so a step
costs only the ranker's few positions per candidate. After training, MixLM scores the held-out
dev queries and the final score's fusion weights are fitted there (``dev.json``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mixlm.encoders.batching import token_budget_batches
from mixlm.encoders.bundle import Bundle, load_bundle, reading_difference
from mixlm.encoders.config import EncodingConfig, ProjectionConfig, default_pooling
from mixlm.encoders.item_encoder import EncodedItem, ItemEncoder
from mixlm.encoders.lora import add_lora, load_lora_state, read_adapter
from mixlm.encoders.projection import init_interaction, init_projection
from mixlm.ranker.fusion import standardise
from mixlm.ranker.model import MixedInputRanker
from mixlm.ranker.retrieval import BM25Index
from mixlm.schemas.beir import BeirDataset
from mixlm.schemas.errors import InputError
from mixlm.training.candidates import Group, GroupSampler, bm25_candidates, bm25_index, merged_candidates
from mixlm.training.config import JointConfig
from mixlm.training.export import write_bundle
from mixlm.training.fusion_fit import FusionCase, fit_fusion, log_odds_scale
from mixlm.training.late_interaction import MaxSimScores
from mixlm.training.losses import mixlm_loss
from mixlm.training.run import RunDir, seed_everything, train_loop
from mixlm.training.stages import named, trainable, training_data
from mixlm.training.teacher import item_token_embeddings

TARGETS_FILE = "targets.safetensors"
ENCODED_FILE = "encoded.safetensors"
MAXSIM_FILE = "maxsim.json"
DEV_REPORT = "dev.json"
DEV_RERANK_DEPTH = 100


def _student_bundle_config(teacher: Bundle, config: JointConfig):
    encoder = teacher.config.encoder
    encoding = teacher.config.encoding
    encoding = EncodingConfig(config.pooling or default_pooling(encoder.kind, config.n_tokens), config.n_tokens,
                              config.encoder_max_length or encoding.max_length, encoding.item_template)
    projection = ProjectionConfig(config.projection, encoder.hidden_size, teacher.config.ranker.hidden_size)
    prompt = dataclasses.replace(teacher.config.prompt, end=config.end)
    return dataclasses.replace(teacher.config, encoding=encoding, projection=projection, prompt=prompt,
                               inputs=config.inputs, fusion=None, encoder_id="")


def read_keyed_tensors(path: Path) -> tuple[list[str], dict[str, torch.Tensor]] | None:
    """A run's cache: its row keys and tensors, or None when it is absent or unreadable (then it is rebuilt)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as stored:
            keys = json.loads((stored.metadata() or {}).get("keys", "null"))
            tensors = {name: stored.get_tensor(name) for name in stored.keys()}
    except (SafetensorError, ValueError):
        return None
    return (keys, tensors) if isinstance(keys, list) else None


def write_keyed_tensors(path: Path, keys: list[str], tensors: dict[str, torch.Tensor]) -> None:
    """Save a cache with its row keys in the metadata, replaced atomically: a kill leaves the old file or the new."""
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"keys": json.dumps(keys)})
    tmp.replace(path)


class TeacherTargets:
    """The teacher's full-text log-odds and last hidden state of each (query, item), cached in the run."""

    def __init__(self, path: Path):
        self.path = path
        self.index: dict[str, int] = {}
        self.log_odds: list[torch.Tensor] = []
        self.hidden: list[torch.Tensor] = []
        stored = read_keyed_tensors(path)
        if stored is not None:
            keys, tensors = stored
            self.log_odds, self.hidden = list(tensors["log_odds"]), list(tensors["hidden"])
            self.index = {key: row for row, key in enumerate(keys)}

    @staticmethod
    def key(query_id: str, doc_id: str) -> str:
        return f"{query_id}\t{doc_id}"

    def missing(self, groups: list[Group]) -> list[Group]:
        """The groups narrowed to their uncovered candidates (a run with more teacher negatives than the
        cached targets' computes only the new pairs); groups already covered are left out."""
        todo = []
        for group in groups:
            rows = [i for i, d in enumerate(group.doc_ids) if self.key(group.query_id, d) not in self.index]
            if rows:
                todo.append(Group(group.query_id, tuple(group.doc_ids[i] for i in rows),
                                  tuple(group.labels[i] for i in rows)))
        return todo

    def add(self, group: Group, log_odds: torch.Tensor, hidden: torch.Tensor) -> None:
        for row, doc in enumerate(group.doc_ids):
            key = self.key(group.query_id, doc)
            if key not in self.index:
                self.index[key] = len(self.log_odds)
                self.log_odds.append(log_odds[row].detach().float().cpu())
                self.hidden.append(hidden[row].detach().float().cpu())

    def get(self, group: Group) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(log_odds [N], hidden [N, H])`` with NaN rows for uncovered candidates; None when none is covered."""
        rows = [self.index.get(self.key(group.query_id, d)) for d in group.doc_ids]
        if all(r is None for r in rows):
            return None
        width = self.hidden[next(r for r in rows if r is not None)].shape[0]
        nan = torch.full((width,), float("nan"))
        return (torch.stack([self.log_odds[r] if r is not None else nan[0] for r in rows]),
                torch.stack([self.hidden[r] if r is not None else nan for r in rows]))

    def save(self) -> None:
        write_keyed_tensors(self.path, sorted(self.index, key=self.index.get),
                            {"log_odds": torch.stack(self.log_odds), "hidden": torch.stack(self.hidden)})


class EncodedTexts:
    """The frozen encoder's pooled states ``[T_S, width]`` and retrieval vectors of texts, by key, cached in the run."""

    def __init__(self, keys: list[str], pooled: torch.Tensor, retrieval: torch.Tensor):
        self.row = {key: n for n, key in enumerate(keys)}
        self.keys, self.pooled, self.retrieval = keys, pooled, retrieval

    @classmethod
    def build(cls, path: Path | None, encoder: ItemEncoder, texts: dict[str, str], *, log) -> EncodedTexts:
        """Encode ``texts`` (key -> text, items already formatted by their template), or load them from ``path``
        (None: encode, cache nothing). The keys travel in the file's metadata and the file is replaced
        atomically, so a run killed while saving finds the whole cache or none. A cache that holds every
        key, and more (another run's over a larger corpus, copied in), serves its rows for them."""
        stored = read_keyed_tensors(path) if path is not None else None
        if stored is not None:
            row = {key: n for n, key in enumerate(stored[0])}
            if all(key in row for key in texts):
                rows = torch.tensor([row[key] for key in texts], dtype=torch.long)
                return cls(list(texts), stored[1]["pooled"][rows], stored[1]["retrieval"][rows])
        keys = list(texts)
        pooled: list[torch.Tensor | None] = [None] * len(keys)
        retrieval: list[torch.Tensor | None] = [None] * len(keys)
        chunk = 256
        with torch.no_grad():
            for start in range(0, len(keys), chunk):
                tokenized = encoder.tokenizer([texts[k] for k in keys[start:start + chunk]])
                lengths = [len(t.ids) for t in tokenized]
                for batch in token_budget_batches(lengths, encoder.token_budget):  # length-bucketed: not in order
                    states, vectors = encoder.forward([tokenized[i] for i in batch], project=False)
                    for row, index in enumerate(batch):
                        pooled[start + index] = states[row].float().cpu()
                        retrieval[start + index] = vectors[row].float().cpu()
                log(f"joint: encoded {min(start + chunk, len(keys))}/{len(keys)} texts")
        encoded = cls(keys, torch.stack(pooled), torch.stack(retrieval))
        if path is not None:
            write_keyed_tensors(path, keys, {"pooled": encoded.pooled, "retrieval": encoded.retrieval})
        return encoded

    def get(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.row[k] for k in keys]
        return self.pooled[rows], self.retrieval[rows]


def calibrate_projection(projection: torch.nn.Module, pooled: torch.Tensor, target_rms: float) -> float:
    """Scale the projection so its outputs have the rms of the ranker's token embeddings; returns the factor."""
    with torch.no_grad():
        rms = projection(pooled).pow(2).mean().sqrt().item()
        factor = target_rms / max(rms, 1e-12)
        for parameter in projection.parameters():
            parameter.mul_(factor ** (1.0 / sum(1 for p in projection.parameters() if p.dim() == 2))
                           if parameter.dim() == 2 else factor)
    return factor


def _dense_candidates(encoded: EncodedTexts, queries: list[str], doc_ids: list[str], depth: int) -> dict:
    """Each query's top-``depth`` documents by cosine of the encoder's retrieval vectors."""
    _, docs = encoded.get([f"doc:{d}" for d in doc_ids])
    out = {}
    for qid in queries:
        _, query = encoded.get([f"query:{qid}"])
        scores = (docs @ query[0]).numpy()
        top = np.argsort(-scores)[:depth]
        out[qid] = [(doc_ids[i], float(scores[i])) for i in top]
    return out


def prior_scores(source: str, retrieval: torch.Tensor, query_id: str, query: str, doc_ids: Sequence[str], *,
                 bm25: BM25Index, maxsim: MaxSimScores | None) -> torch.Tensor:
    """The scores of a group's candidates that λ_e's prior orders them by.

    ``retrieval``: the query's retrieval vector, then the candidates'. ``dense`` is their cosine;
    ``bm25+dense`` adds the z-scores of the cosines and of BM25's scores (the ``bm25+dense`` of
    ``mixlm eval``), so the prior also carries the lexical match the vectors miss; ``maxsim`` is
    the encoder's token-level match (``late_interaction``), which the pooled vectors summarise.
    """
    if source == "maxsim":
        return maxsim.get(query_id, doc_ids)
    cosines = torch.cosine_similarity(retrieval[1:].float(), retrieval[:1].float())
    if source == "dense":
        return cosines
    return torch.from_numpy(standardise(bm25.scores(query, doc_ids)) + standardise(cosines.cpu().numpy()))


def _student_ranker(teacher: Bundle, prompt, config: JointConfig, start: Bundle | None,
                    start_adapter: dict[str, torch.Tensor] | None, log) -> tuple[MixedInputRanker, list]:
    """The base ranker with an adapter on every block: fresh, or the ``start`` bundle's, to train further."""
    model = teacher.load_ranker(merge_adapter=False, with_adapter=False)
    params = add_lora(model, config.ranker_lora, seed=config.loop.seed)
    if start is None:
        log(f"ranker: fresh adapter ({config.ranker_lora})")
        interaction = init_interaction(teacher.config.encoder.hidden_size, teacher.config.ranker.hidden_size,
                                       config.loop.seed) if config.inputs.interaction else None
    else:
        load_lora_state(model, start_adapter)
        interaction = start.load_interaction() if config.inputs.interaction else None
        log(f"ranker: the adapter and interaction of {start.path}, trained further")
    return MixedInputRanker(model, teacher.ranker_tokenizer, prompt, "", inputs=config.inputs,
                            interaction=interaction), params


def _start_bundle(config: JointConfig, student_config) -> tuple[Bundle | None, dict[str, torch.Tensor] | None]:
    """The bundle a run continues from and its ranker adapter's weights, refused unless it reads items
    and queries as this run would."""
    if not config.start_from:
        return None, None
    start = load_bundle(config.start_from)
    difference = reading_difference(start.config, student_config)
    if difference:
        raise InputError(f"--start-from {start.path}: its settings differ from this run's in {difference}")
    lora, adapter = read_adapter(start.ranker_dir)
    if lora != config.ranker_lora:
        raise InputError(f"--start-from {start.path}: its ranker adapter is {lora}, this run's {config.ranker_lora}")
    return start, adapter


def train_joint(teacher_dir: str | Path, run_dir: str | Path, config: JointConfig, *, log=print) -> Bundle:
    """Train (or resume) stage 3 from a teacher bundle; writes and returns ``run_dir/bundle``."""
    seed_everything(config.loop.seed)
    teacher = load_bundle(teacher_dir)
    student_config = _student_bundle_config(teacher, config)
    start, start_adapter = _start_bundle(config, student_config)  # a misfit is refused before the run directory is made
    run = RunDir(run_dir, "joint", {"source": str(Path(teacher_dir).resolve()), **dataclasses.asdict(config)})
    dataset, devs = training_data(config.data, log)
    ranker, ranker_params = _student_ranker(teacher, student_config.prompt, config, start, start_adapter, log)
    device = ranker.device

    encoder_model = teacher.load_encoder(device, merge_adapter=False)
    encoder_params: list[nn.Parameter] = []
    if config.encoder_lora is not None:
        encoder_model, encoder_params = trainable(encoder_model, config.encoder_lora, config.loop.seed, log,
                                                  "encoder")
    else:
        encoder_model.requires_grad_(False)
    encoder = ItemEncoder(encoder_model, teacher.encoder_tokenizer, student_config.encoding, "")
    queries = {**dataset.queries, **{q: t for dev in devs for q, t in dev.queries.items()}}
    doc_ids = list(dataset.corpus)
    texts = {f"doc:{d}": student_config.encoding.format_item(dataset.corpus[d].title, dataset.corpus[d].text)
             for d in doc_ids}
    texts.update({f"query:{q}": text for q, text in queries.items()})
    encoded = EncodedTexts.build(run.path / ENCODED_FILE, encoder, texts, log=log)

    lexical = bm25_index(dataset)
    bm25 = bm25_candidates(dataset, config.data.bm25_depth, lexical)
    dense = _dense_candidates(encoded, list(dataset.queries), doc_ids, config.dense_depth)
    sampler = GroupSampler(dataset, merged_candidates(bm25, dense), size=config.data.group_size,
                           positives=config.data.positives, seed=config.loop.seed,
                           fixed_negatives=config.teacher_negatives)
    maxsim = None
    if any(w.encoder_prior and w.encoder_prior_source == "maxsim" for w in (config.phase1, config.phase2)):
        maxsim = MaxSimScores.build(run.path / MAXSIM_FILE, encoder, dataset.queries,
                                    {d: texts[f"doc:{d}"] for d in doc_ids}, sampler.candidate_pairs(), log=log)
    targets = TeacherTargets(run.path / TARGETS_FILE)
    if _reads_teacher(config):
        _precompute_targets(targets, sampler.fixed_pairs(), teacher, config, dataset, log)
    else:
        log("joint: no loss term reads the teacher (distillation 0, no alignment to it): no teacher targets")

    if start is None:
        projection = init_projection(student_config.projection, config.loop.seed).to(device)
        sample_pooled, _ = encoded.get([f"doc:{d}" for d in doc_ids[:64]])
        factor = calibrate_projection(projection, sample_pooled.to(device),
                                      ranker.embed.weight.float().pow(2).mean().sqrt().item())
        log(f"joint: projection scaled by {factor:.3g} to the ranker's embedding rms")
    else:  # frozen: the item tokens, and so the encoder_id, stay the start bundle's
        projection = start.load_projection().to(device).requires_grad_(False)
    extra_params = [p for p in projection.parameters() if p.requires_grad] + (
        list(ranker.interaction.parameters()) if ranker.interaction is not None else [])

    def inputs_for(keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled states and retrieval vectors: live (trainable encoder) or from the cache."""
        if not encoder_params:
            pooled, retrieval = encoded.get(keys)
            return pooled.to(device), retrieval.to(device)
        tokenized = [encoder.tokenizer([texts[k]])[0] for k in keys]
        return encoder.forward(tokenized, project=False)

    per_step = config.data.queries_per_step

    def step(index: int) -> dict[str, float]:
        weights = config.weights_at(index)
        sums: dict[str, float] = {}
        for group in sampler.groups(index, per_step):
            pooled, retrieval = inputs_for([f"query:{group.query_id}"] + [f"doc:{d}" for d in group.doc_ids])
            vectors = projection(pooled.float())
            query = EncodedItem(vectors[0], retrieval[0], 0, False)
            log_odds, hidden = ranker.forward_group(dataset.queries[group.query_id], list(vectors[1:]), query,
                                                    retrieval[1:])
            teacher_targets = targets.get(group)
            teacher_odds, teacher_hidden = teacher_targets if teacher_targets else (None, None)
            full_odds, full_hidden = teacher_odds, teacher_hidden
            if config.fulltext_targets == "live":
                with torch.no_grad():
                    full_odds, full_hidden = ranker.forward_group(
                        dataset.queries[group.query_id],
                        [item_token_embeddings(ranker, teacher, dataset.corpus[d], config.max_item_tokens)
                         for d in group.doc_ids], query)
            sources = ({weights.encoder_prior_source} if weights.encoder_prior else set()) | \
                ({"bm25+dense"} if weights.residual_listwise else set())
            orders = {source: prior_scores(source, retrieval, group.query_id, dataset.queries[group.query_id],
                                           group.doc_ids, bm25=lexical, maxsim=maxsim) for source in sources}
            parts = mixlm_loss(torch.tensor(group.labels), log_odds, teacher_log_odds=teacher_odds,
                               fulltext_log_odds=full_odds, hidden=hidden, hidden_fulltext=full_hidden,
                               prior_scores=orders.get(weights.encoder_prior_source),
                               first_stage_scores=orders.get("bm25+dense"), weights=weights)
            (parts["total"] / per_step).backward()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value.item() / per_step
        return sums

    params = {**named(encoder_params, "encoder"), **named(ranker_params, "ranker"),
              **named(extra_params, "projection")}
    groups = [{"params": encoder_params + ranker_params, "lr_scale": 1.0},
              {"params": extra_params, "lr_scale": config.projection_lr_scale}]
    log(f"joint: T_S={config.n_tokens}, {len(sampler)} training queries, groups of {config.data.group_size}, "
        f"{sum(p.numel() for p in params.values()):,} parameters trained")
    train_loop(run, params, step, config.loop, log=log, param_groups=groups)
    if devs:  # a trained encoder's texts are encoded again, once, by what it has become
        trained = EncodedTexts.build(None, encoder, texts, log=log) if encoder_params else encoded
        report = _fit_fusion_on_dev(ranker, projection, trained, devs, log)
        student_config = dataclasses.replace(student_config, fusion=report.pop("fusion"))
        (run.path / DEV_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    bundle = write_bundle(run.bundle_dir, teacher, student_config,
                          encoder=encoder_model if encoder_params else None, ranker=ranker.model,
                          projection=projection, interaction=ranker.interaction)
    log(f"joint: bundle {bundle.path} (encoder_id {bundle.encoder_id})")
    return bundle


def _fit_fusion_on_dev(ranker: MixedInputRanker, projection: nn.Module, encoded: EncodedTexts,
                       devs: list[BeirDataset], log) -> dict:
    """MixLM's dev NDCG@10 beside the first stages', and the fusion weights fitted on each collection's dev queries."""
    scored = []
    with torch.no_grad():
        for dev in devs:
            candidates = bm25_candidates(dev, DEV_RERANK_DEPTH)
            mixlm_run, dense_run = {}, {}
            for qid, hits in candidates.items():
                docs = [d for d, _ in hits]
                pooled, retrieval = (t.to(ranker.device) for t in encoded.get([f"query:{qid}"]
                                                                              + [f"doc:{d}" for d in docs]))
                vectors = projection(pooled.float())
                query = EncodedItem(vectors[0].cpu().numpy(), retrieval[0].cpu().numpy(), 0, False)
                scores = ranker.score(dev.queries[qid], list(vectors[1:]), query_embedding=query,
                                      item_retrieval=retrieval[1:]).log_odds
                mixlm_run[qid] = dict(zip(docs, map(float, scores), strict=True))
                dense_run[qid] = dict(zip(docs, map(float, (retrieval[1:] @ retrieval[0]).cpu().numpy()), strict=True))
            scored.append((dev, candidates, mixlm_run, dense_run))
    scale = log_odds_scale(run for _, _, run, _ in scored)
    cases = [FusionCase(dev.name, dev.qrels, *runs, mixlm_scale=scale) for dev, *runs in scored]
    fitted_on = ", ".join(f"{d.name}/{d.split} ({len(d.qrels)} queries)" for d in devs)
    fusion, report = fit_fusion(cases, fitted_on=fitted_on, mixlm_scale=scale)
    for name, case in report["cases"].items():
        log(f"joint: dev NDCG@10 on {name}: " + "  ".join(f"{k} {v}" for k, v in case["first_stages"].items())
            + f"  mixlm {case['mixlm']}  final {case['final']}")
    log(f"joint: fusion first_stage {fusion.first_stage}, dense {fusion.dense}, MixLM's scale {scale}: smallest "
        f"gain over a collection's best first stage {report['worst_gain']:+.4f}")
    return {"rerank_depth": DEV_RERANK_DEPTH, "fusion": fusion, **report}


def _reads_teacher(config: JointConfig) -> bool:
    """Whether a loss term reads the teacher's targets: distillation, or alignment to the teacher's pass."""
    phases = (config.phase1, config.phase2) if config.phase1_fraction > 0 else (config.phase2,)
    return any(w.distill > 0 or (w.align > 0 and config.fulltext_targets == "teacher") for w in phases)


def _precompute_targets(targets: TeacherTargets, pairs: list[Group], teacher: Bundle, config: JointConfig,
                        dataset: BeirDataset, log) -> None:
    todo = targets.missing(pairs)
    if not todo:
        return
    teacher_ranker = MixedInputRanker.from_bundle(teacher)
    log(f"joint: teacher targets for {len(todo)} queries ({sum(len(g.doc_ids) for g in todo)} full-text pairs)")
    with torch.no_grad():
        for count, group in enumerate(todo, start=1):
            items = [item_token_embeddings(teacher_ranker, teacher, dataset.corpus[d], config.max_item_tokens)
                     for d in group.doc_ids]
            log_odds, hidden = teacher_ranker.forward_group(dataset.queries[group.query_id], items)
            targets.add(group, log_odds, hidden)
            if count % 25 == 0 or count == len(todo):
                targets.save()
                log(f"joint: teacher targets {count}/{len(todo)} queries")
    del teacher_ranker

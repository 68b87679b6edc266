"""What the training stages share: the train split with BM25 candidates, models with trainable adapters."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from mixlm.encoders.bundle import Bundle, load_bundle
from mixlm.encoders.config import LoraConfig
from mixlm.encoders.lora import adapter_config, adapter_parameters, add_lora
from mixlm.ranker.model import MixedInputRanker
from mixlm.schemas.beir import BeirDataset
from mixlm.schemas.errors import InputError
from mixlm.training.candidates import GroupSampler, bm25_candidates
from mixlm.training.config import DataConfig
from mixlm.training.evaluation import guard_training_split
from mixlm.training.run import RunDir, seed_everything


def training_data(config: DataConfig, log) -> tuple[BeirDataset, list[BeirDataset]]:
    """``(train, devs)``: the configured split less its dev queries, and each collection's dev queries
    over its own corpus (for choices that must hold on each; none without ``holdout_every``).

    Refuses a test split (``guard_training_split``).
    """
    guard_training_split(config.split)
    parts = [BeirDataset.load(path, config.split) for path in config.datasets]
    dataset = combined(parts).limit(config.max_queries)
    if not config.holdout_every:
        log(f"{dataset.name}/{dataset.split}: {len(dataset.qrels)} judged queries to train on, "
            f"{len(dataset.corpus)} documents")
        return dataset, []
    train, dev = dataset.holdout(config.holdout_every)
    devs = [BeirDataset(part.name, dev.split, part.corpus, {q: t for q, t in dev.queries.items() if q in part.queries},
                        {q: j for q, j in dev.qrels.items() if q in part.queries}) for part in parts]
    log(f"{dataset.name}/{dataset.split}: {len(train.qrels)} judged queries to train on, {len(dev.qrels)} held out "
        f"as dev, {len(dataset.corpus)} documents")
    return train, [d for d in devs if d.qrels]


def combined(parts: list[BeirDataset]) -> BeirDataset:
    """One collection of several: documents, queries and judgments side by side, ids kept as they are.

    Ids are kept so that a query's dev assignment (a hash of its id) is the same alone or combined.
    """
    if len(parts) == 1:
        return parts[0]
    corpus: dict = {}
    queries: dict[str, str] = {}
    for part in parts:
        for what, mine, theirs in (("document", corpus, part.corpus), ("query", queries, part.queries)):
            clash = next((i for i in theirs if i in mine), None)
            if clash is not None:
                raise InputError(f"{part.name}: {what} id {clash!r} also appears in an earlier dataset; "
                                 "datasets trained on together need distinct ids")
            mine.update(theirs)
    return BeirDataset("+".join(p.name for p in parts), parts[0].split, corpus, queries,
                       {q: judged for p in parts for q, judged in p.qrels.items()})


def training_sampler(config: DataConfig, seed: int, log) -> tuple[BeirDataset, GroupSampler]:
    """The training queries' groups, hard negatives from BM25; refuses a test split."""
    dataset, _ = training_data(config, log)
    sampler = GroupSampler(dataset, bm25_candidates(dataset, config.bm25_depth), size=config.group_size,
                           positives=config.positives, seed=seed)
    return dataset, sampler


def trainable(model: nn.Module, lora: LoraConfig, seed: int, log, what: str) -> tuple[nn.Module, list[nn.Parameter]]:
    """Continue the model's own adapter if it was loaded with one, else add a fresh one (``lora``)."""
    if adapter_config(model) is not None:
        log(f"{what}: continuing its adapter ({adapter_config(model)})")
        return model, adapter_parameters(model)
    return model, add_lora(model, lora, seed=seed)


def training_ranker(bundle: Bundle, lora: LoraConfig, seed: int, log) -> tuple[MixedInputRanker, list[nn.Parameter]]:
    model = bundle.load_ranker(merge_adapter=False)
    model, params = trainable(model, lora, seed, log, "ranker")
    return MixedInputRanker(model, bundle.ranker_tokenizer, bundle.config.prompt, bundle.encoder_id), params


@dataclass
class RankingStage:
    """What a ranking stage starts from: its source bundle, run directory, groups and trainable ranker."""

    source: Bundle
    run: RunDir
    dataset: BeirDataset
    sampler: GroupSampler
    ranker: MixedInputRanker
    ranker_params: list[nn.Parameter]


def start_ranking_stage(stage: str, bundle_dir: str | Path, run_dir: str | Path, config, log) -> RankingStage:
    """Seed, open the run (resuming or refusing other settings), sample groups, load the ranker to train.

    ``config`` is the stage's dataclass with ``data``, ``loop`` and the ranker's ``lora`` settings.
    """
    seed_everything(config.loop.seed)
    source = load_bundle(bundle_dir)
    run = RunDir(run_dir, stage, {"source": str(Path(bundle_dir).resolve()), **asdict(config)})
    dataset, sampler = training_sampler(config.data, config.loop.seed, log)
    ranker, params = training_ranker(source, config.ranker_lora, config.loop.seed, log)
    return RankingStage(source, run, dataset, sampler, ranker, params)


def named(params: list[nn.Parameter], prefix: str) -> dict[str, nn.Parameter]:
    return {f"{prefix}.{i}": p for i, p in enumerate(params)}

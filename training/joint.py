"""Stage 3: the encoder (+ projection) and the ranker trained together on mixed inputs.

The ranker starts from the teacher's weights (its adapter continues training); the encoder
gets a fresh adapter on its last blocks and a new projection to the ranker's width. The loss
(``losses.mixlm_loss``) adds to the task term the teacher's full-text scores (distillation)
and the same ranker's full-text scores and last hidden states (self-alignment). A two-phase
curriculum first weights alignment, then the task.

Teacher targets are computed once, before training, for every (query, item) the run will see
(``targets.safetensors`` in the run directory, so a resumed run does not recompute them).
``fulltext_targets="live"`` computes the same-ranker full-text targets with the current
ranker at every step, as the paper does; ``"teacher"`` reuses the teacher's, which saves a
full-text forward pass per item and is exact at the start of the stage.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mixlm.encoders.bundle import Bundle
from mixlm.encoders.config import EncodingConfig, ProjectionConfig, default_pooling
from mixlm.encoders.item_encoder import ItemEncoder
from mixlm.encoders.lora import LoraConfig
from mixlm.encoders.projection import init_projection
from mixlm.training.candidates import Group, GroupSampler
from mixlm.training.export import write_bundle
from mixlm.training.losses import LossWeights, mixlm_loss
from mixlm.training.run import LoopConfig, train_loop
from mixlm.training.stages import DataConfig, named, start_ranking_stage, trainable
from mixlm.training.teacher import item_token_embeddings

TARGETS_FILE = "targets.safetensors"
FULLTEXT_TARGETS = ("live", "teacher")


@dataclass(frozen=True)
class JointConfig:
    data: DataConfig
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(lr=5e-4))
    n_tokens: int = 1  # T_S
    pooling: str | None = None  # default: last_k for T_S > 1, else the encoder kind's default
    projection: str = "linear"
    encoder_max_length: int | None = None  # default: the teacher bundle's
    encoder_lora: LoraConfig = field(default_factory=lambda: LoraConfig(rank=16, alpha=32.0, top_layers=2))
    ranker_lora: LoraConfig = field(default_factory=lambda: LoraConfig(rank=8, alpha=16.0, top_layers=10))
    projection_lr_scale: float = 4.0
    max_item_tokens: int = 256  # full item text for the teacher and alignment targets
    distinct_steps: int | None = None  # steps cycle through this many distinct batches of groups (None: steps)
    fulltext_targets: str = "live"
    phase1_fraction: float = 0.3
    phase1: LossWeights = LossWeights(task=0.2, distill=0.5, align=2.0, align_kl=1.0, align_cos=1.0)
    phase2: LossWeights = LossWeights(task=1.0, distill=1.0, align=0.5, align_kl=1.0, align_cos=1.0)

    def __post_init__(self) -> None:
        if self.fulltext_targets not in FULLTEXT_TARGETS:
            raise ValueError(f"fulltext_targets must be one of {', '.join(FULLTEXT_TARGETS)}, "
                             f"got {self.fulltext_targets!r}")
        if not 0 <= self.phase1_fraction <= 1:
            raise ValueError(f"phase1_fraction must be in [0, 1], got {self.phase1_fraction}")

    def weights_at(self, step: int) -> LossWeights:
        return self.phase1 if step < self.phase1_fraction * self.loop.steps else self.phase2

    def batch_index(self, step: int) -> int:
        return step % (self.distinct_steps or self.loop.steps)


def _student_bundle_config(teacher: Bundle, config: JointConfig):
    encoder = teacher.config.encoder
    encoding = teacher.config.encoding
    encoding = EncodingConfig(config.pooling or default_pooling(encoder.kind, config.n_tokens), config.n_tokens,
                              config.encoder_max_length or encoding.max_length, encoding.item_template)
    projection = ProjectionConfig(config.projection, encoder.hidden_size, teacher.config.ranker.hidden_size)
    return dataclasses.replace(teacher.config, encoding=encoding, projection=projection, encoder_id="")


class TeacherTargets:
    """The teacher's full-text log-odds and last hidden state of each (query, item), cached in the run."""

    def __init__(self, path: Path):
        self.path = path
        self.index: dict[str, int] = {}
        self.log_odds: list[torch.Tensor] = []
        self.hidden: list[torch.Tensor] = []
        if path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as stored:
                keys = json.loads(stored.metadata()["keys"])
                self.log_odds = list(stored.get_tensor("log_odds"))
                self.hidden = list(stored.get_tensor("hidden"))
            self.index = {key: row for row, key in enumerate(keys)}

    @staticmethod
    def key(query_id: str, doc_id: str) -> str:
        return f"{query_id}\t{doc_id}"

    def missing(self, groups: list[Group]) -> list[Group]:
        return [g for g in groups if any(self.key(g.query_id, d) not in self.index for d in g.doc_ids)]

    def add(self, group: Group, log_odds: torch.Tensor, hidden: torch.Tensor) -> None:
        for row, doc in enumerate(group.doc_ids):
            key = self.key(group.query_id, doc)
            if key not in self.index:
                self.index[key] = len(self.log_odds)
                self.log_odds.append(log_odds[row].detach().float().cpu())
                self.hidden.append(hidden[row].detach().float().cpu())

    def get(self, group: Group) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.index[self.key(group.query_id, d)] for d in group.doc_ids]
        return torch.stack([self.log_odds[r] for r in rows]), torch.stack([self.hidden[r] for r in rows])

    def save(self) -> None:
        from safetensors.torch import save_file

        keys = sorted(self.index, key=self.index.get)
        tmp = self.path.with_suffix(".tmp")
        save_file({"log_odds": torch.stack(self.log_odds), "hidden": torch.stack(self.hidden)}, str(tmp),
                  metadata={"keys": json.dumps(keys)})
        tmp.replace(self.path)


def calibrate_projection(projection: torch.nn.Module, pooled: torch.Tensor, target_rms: float) -> float:
    """Scale the projection so its outputs have the rms of the ranker's token embeddings; returns the factor."""
    with torch.no_grad():
        rms = projection(pooled).pow(2).mean().sqrt().item()
        factor = target_rms / max(rms, 1e-12)
        for parameter in projection.parameters():
            parameter.mul_(factor ** (1.0 / sum(1 for p in projection.parameters() if p.dim() == 2))
                           if parameter.dim() == 2 else factor)
    return factor


def train_joint(teacher_dir: str | Path, run_dir: str | Path, config: JointConfig, *, log=print) -> Bundle:
    """Train (or resume) stage 3 from a teacher bundle; writes and returns ``run_dir/bundle``."""
    stage = start_ranking_stage("joint", teacher_dir, run_dir, config, log)
    teacher, run, dataset, sampler, ranker, ranker_params = (stage.source, stage.run, stage.dataset, stage.sampler,
                                                              stage.ranker, stage.ranker_params)
    per_step = config.data.queries_per_step

    def full_text(group: Group) -> list[torch.Tensor]:
        return [item_token_embeddings(ranker, teacher, dataset.corpus[d], config.max_item_tokens)
                for d in group.doc_ids]

    targets = TeacherTargets(run.path / TARGETS_FILE)
    _precompute_targets(targets, sampler, config, ranker, dataset, full_text, log)

    student_config = _student_bundle_config(teacher, config)
    encoder_model, encoder_params = trainable(teacher.load_encoder(ranker.device, merge_adapter=False),
                                              config.encoder_lora, config.loop.seed, log, "encoder")
    projection = init_projection(student_config.projection, config.loop.seed)
    encoder = ItemEncoder(encoder_model, teacher.encoder_tokenizer, student_config.encoding, "", projection=projection)
    first = sampler.groups(0, 1)[0]
    with torch.no_grad():
        sample = encoder.tokenize([(dataset.corpus[d].title, dataset.corpus[d].text) for d in first.doc_ids])
        pooled = encoder.forward(sample, project=False)[0]
    factor = calibrate_projection(projection, pooled, ranker.embed.weight.float().pow(2).mean().sqrt().item())
    log(f"joint: projection scaled by {factor:.3g} to the ranker's embedding rms")
    projection_params = list(projection.parameters())

    def step(index: int) -> dict[str, float]:
        weights = config.weights_at(index)
        sums: dict[str, float] = {}
        for group in sampler.groups(config.batch_index(index), per_step):
            docs = [dataset.corpus[d] for d in group.doc_ids]
            vectors, _ = encoder.forward(encoder.tokenize([(d.title, d.text) for d in docs]))
            log_odds, hidden = ranker.forward_group(dataset.queries[group.query_id], list(vectors))
            teacher_odds, teacher_hidden = targets.get(group)
            if config.fulltext_targets == "live":
                with torch.no_grad():
                    full_odds, full_hidden = ranker.forward_group(dataset.queries[group.query_id], full_text(group))
            else:
                full_odds, full_hidden = teacher_odds, teacher_hidden
            parts = mixlm_loss(torch.tensor(group.labels), log_odds, teacher_log_odds=teacher_odds,
                               fulltext_log_odds=full_odds, hidden=hidden, hidden_fulltext=full_hidden,
                               weights=weights)
            (parts["total"] / per_step).backward()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value.item() / per_step
        return sums

    params = {**named(encoder_params, "encoder"), **named(ranker_params, "ranker"),
              **named(projection_params, "projection")}
    groups = [{"params": encoder_params + ranker_params, "lr_scale": 1.0},
              {"params": projection_params, "lr_scale": config.projection_lr_scale}]
    log(f"joint: T_S={config.n_tokens}, {sum(p.numel() for p in params.values()):,} parameters trained "
        f"(encoder adapter, ranker adapter, projection)")
    train_loop(run, params, step, config.loop, log=log, param_groups=groups)
    bundle = write_bundle(run.bundle_dir, teacher, student_config, encoder=encoder_model, ranker=ranker.model,
                          projection=projection)
    log(f"joint: bundle {bundle.path} (encoder_id {bundle.encoder_id})")
    return bundle


def _precompute_targets(targets: TeacherTargets, sampler: GroupSampler, config: JointConfig, ranker, dataset,
                        full_text, log) -> None:
    distinct = config.distinct_steps or config.loop.steps
    needed = [g for s in range(distinct) for g in sampler.groups(s, config.data.queries_per_step)]
    todo = targets.missing(needed)
    if not todo:
        return
    log(f"joint: teacher targets for {len(todo)} query groups ({len(todo) * config.data.group_size} items)")
    with torch.no_grad():
        for count, group in enumerate(todo, start=1):
            log_odds, hidden = ranker.forward_group(dataset.queries[group.query_id], full_text(group))
            targets.add(group, log_odds, hidden)
            if count % 25 == 0 or count == len(todo):
                targets.save()
                log(f"joint: teacher targets {count}/{len(todo)} groups")

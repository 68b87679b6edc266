"""The settings of the training stages: plain dataclasses, no torch.

The commands take their defaults from here (``mixlm train ... --help`` stays instant), and a
run directory keeps them as ``config.json``: a resumed run must have the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mixlm.encoders.config import LoraConfig, RankerInputs
from mixlm.schemas.errors import InputError

FULLTEXT_TOKENS = 256  # item text tokens a full-text ranker reads (the teacher, its targets, the eval's row)
FULLTEXT_TARGETS = ("live", "teacher")
# mixlm eval: the methods it compares, and the BM25 candidates each of them reranks
EVAL_METHODS = ("bm25", "random", "dense", "bm25+dense", "truncated", "fulltext", "mixlm", "final")
EVAL_RERANK_DEPTH = 100
# λ_e's prior: the first-stage scores whose order it follows, and the temperature that suits their scale
# (MaxSim spreads about 0.65x as widely as the cosines over a query's BM25 top 50: its τ keeps their sharpness)
PRIOR_TEMPERATURES = {"dense": 0.05, "bm25+dense": 0.5, "maxsim": 0.03}  # cosines; two z-scores; mean cosines
PRIOR_SCOPES = ("group", "negatives")  # the candidates the prior orders: all, or those the labels call irrelevant
TEXT_RANKER_LORA = LoraConfig(rank=8, alpha=16.0, top_layers=10)  # stages 1 and 2: the ranker's last 10 blocks


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 100
    lr: float = 2e-4
    warmup_steps: int = 10
    grad_clip: float = 1.0
    checkpoint_every: int = 25
    log_every: int = 5
    seed: int = 0
    ema_decay: float = 0.0  # > 0: the run ends with an exponential moving average of its weights

    def __post_init__(self) -> None:
        if self.steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise InputError("steps, checkpoint_every and log_every must be >= 1")
        if not 0 <= self.ema_decay < 1:
            raise InputError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def lr_at(self, step: int) -> float:
        """Linear warmup, then cosine decay to a tenth of ``lr``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@dataclass(frozen=True)
class DataConfig:
    datasets: tuple[str, ...]  # BEIR folders, trained on together (their ids must not collide)
    split: str = "train"
    bm25_depth: int = 100  # hard negatives come from each query's BM25 top-K
    group_size: int = 4  # candidates scored together per query
    positives: int = 1  # judged relevant documents per group (at most)
    queries_per_step: int = 4
    max_queries: int | None = None  # use only the first N judged queries of the split
    holdout_every: int | None = 8  # every N-th query (by id hash) is a dev query: never trained on


@dataclass(frozen=True)
class LossWeights:
    task: float = 1.0  # the weight of KL(p* || p); the curriculum's phases trade it against alignment
    listwise: float = 0.0  # λ_l
    distill: float = 1.0  # λ_d
    align: float = 1.0  # λ_a
    align_kl: float = 1.0  # α
    align_cos: float = 1.0  # β
    encoder_prior: float = 0.0  # λ_e: the first stages' order over the group as a listwise soft target
    encoder_prior_source: str = "dense"  # the encoder's cosines, their fusion with BM25, or its token-level MaxSim
    encoder_prior_temperature: float = PRIOR_TEMPERATURES["dense"]  # τ: how sharply the scores order the group
    encoder_prior_scope: str = "group"  # or "negatives": the labels alone place the relevant candidates
    # λ_f: the listwise term on the log-odds plus the first stages' fused z-scores / τ_f, so that the
    # student is trained for the final score: where BM25 and dense already rank well it has little to add
    residual_listwise: float = 0.0
    residual_temperature: float = 0.5  # τ_f: the first stages' share (their z-scores sum; 0.5 doubles them)

    def __post_init__(self) -> None:
        if self.encoder_prior_scope not in PRIOR_SCOPES:
            raise InputError(f"encoder_prior_scope must be one of {', '.join(PRIOR_SCOPES)}, "
                             f"got {self.encoder_prior_scope!r}")
        if self.encoder_prior_source not in PRIOR_TEMPERATURES:
            raise InputError(f"encoder_prior_source must be one of {', '.join(PRIOR_TEMPERATURES)}, "
                             f"got {self.encoder_prior_source!r}")
        if self.encoder_prior_temperature <= 0:
            raise InputError(f"encoder_prior_temperature must be > 0, got {self.encoder_prior_temperature}")
        if self.residual_temperature <= 0:
            raise InputError(f"residual_temperature must be > 0, got {self.residual_temperature}")


@dataclass(frozen=True)
class DomainConfig:
    dataset: str
    loop: LoopConfig = field(default_factory=LoopConfig)
    ranker_lora: LoraConfig = TEXT_RANKER_LORA
    docs_per_step: int = 4
    max_tokens: int = 256


@dataclass(frozen=True)
class TeacherConfig:
    data: DataConfig
    loop: LoopConfig = field(default_factory=LoopConfig)
    ranker_lora: LoraConfig = TEXT_RANKER_LORA
    max_item_tokens: int = FULLTEXT_TOKENS  # the item text the teacher reads; longer items keep their beginning


@dataclass(frozen=True)
class JointConfig:
    data: DataConfig
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(lr=2e-3))
    n_tokens: int = 1  # T_S
    pooling: str | None = None  # default: last_k for T_S > 1, else the encoder kind's default
    projection: str = "linear"
    encoder_max_length: int | None = None  # default: the teacher bundle's
    encoder_lora: LoraConfig | None = None  # None: the encoder stays frozen and is run once per text
    ranker_lora: LoraConfig = LoraConfig(rank=16, alpha=32.0)  # a fresh adapter on every block
    projection_lr_scale: float = 1.0  # the projection's and interaction's learning rate, relative
    inputs: RankerInputs = RankerInputs(query_vector=True, interaction=True)
    end: str = " Relevant"  # the prompt's end: one token, so a candidate costs T_S + 1 positions
    max_item_tokens: int = FULLTEXT_TOKENS  # full item text for the teacher and alignment targets
    teacher_negatives: int = 3  # per query, the hardest negatives that get teacher targets (with its positives)
    dense_depth: int = 50  # hard negatives also come from the encoder's own top-K
    fulltext_targets: str = "teacher"
    phase1_fraction: float = 0.0
    phase1: LossWeights = LossWeights(task=0.2, listwise=1.0, distill=0.5, align=1.0, align_kl=1.0, align_cos=1.0)
    # No hidden-state alignment by default: the student starts from the base ranker, not from the
    # teacher, so the teacher's hidden states live in another model's space.
    phase2: LossWeights = LossWeights(task=0.5, listwise=1.0, distill=0.1, align=0.0, align_kl=1.0, align_cos=1.0,
                                      encoder_prior=2.0)
    # a trained MixLM bundle to continue from (its adapter, interaction and projection) instead of a fresh
    # student; its projection stays frozen, so the result keeps its encoder_id and reads the same store
    start_from: str | None = None

    def __post_init__(self) -> None:
        if self.fulltext_targets not in FULLTEXT_TARGETS:
            raise InputError(f"fulltext_targets must be one of {', '.join(FULLTEXT_TARGETS)}, "
                             f"got {self.fulltext_targets!r}")
        if not 0 <= self.phase1_fraction <= 1:
            raise InputError(f"phase1_fraction must be in [0, 1], got {self.phase1_fraction}")
        if self.fulltext_targets == "live" and self.inputs.interaction:
            raise InputError("live full-text targets need a ranker without query-item interactions: the "
                             "interaction belongs to embedding tokens, not to text")
        if self.start_from and self.encoder_lora is not None:
            raise InputError("a run that starts from a trained bundle keeps its encoder and projection frozen (the "
                             "store's tokens stay valid): it cannot train an encoder adapter")

    def weights_at(self, step: int) -> LossWeights:
        return self.phase1 if step < self.phase1_fraction * self.loop.steps else self.phase2

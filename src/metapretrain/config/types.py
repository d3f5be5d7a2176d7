"""Typed views of a resolved run config.

The JSON Schema (`config/schema/run.schema.yaml`) is the single source of
truth for keys, types, ranges and defaults; these frozen dataclasses mirror
it one-to-one (tests/test_config.py checks that they match), so code reads
`cfg.train.lr` instead of `cfg["train"]["lr"]`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any


@functools.cache
def _section_fields(cls) -> tuple[tuple[str, type | None], ...]:
    """(field name, nested section class or None) per field; cached, get_type_hints is slow."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name] if isinstance(hints[f.name], type) and issubclass(hints[f.name], _Section)
                  else None) for f in dataclasses.fields(cls))


class _Section:
    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return cls(**{name: sub.from_dict(d[name]) if sub else d[name] for name, sub in _section_fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, _Section) else _plain(value)
        return out


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class DataSection(_Section):
    root: str | None
    cache_dir: str
    download_url: str | None


@dataclass(frozen=True)
class DomainsSection(_Section):
    by_source: bool
    extra: list[dict]


@dataclass(frozen=True)
class CorpusSection(_Section):
    name: str
    sources: list[dict]
    validation_fraction: float
    max_documents: int | None
    domains: DomainsSection


@dataclass(frozen=True)
class TokenizerSection(_Section):
    kind: str
    vocab_size: int
    min_frequency: int
    path: str | None


@dataclass(frozen=True)
class ModelSection(_Section):
    preset: str
    d_model: int | None
    n_layers: int | None
    n_heads: int | None
    n_kv_heads: int | None
    ffn_hidden: int | None
    vocab_size: int | None
    max_seq_len: int | None
    rope_theta: float
    norm_eps: float
    init_std: float

    def resolved(self, tokenizer_vocab: int | None = None):
        """The concrete `metapretrain.model.ModelConfig`: preset values, then non-null overrides.

        `tokenizer_vocab` fills the vocabulary when neither the preset nor the config sets it.
        """
        from metapretrain.model import ModelConfig
        from metapretrain.model.presets import PRESETS

        values = dict(PRESETS[self.preset])
        for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "vocab_size", "max_seq_len"):
            if getattr(self, key) is not None:
                values[key] = getattr(self, key)
        if values["vocab_size"] is None:
            if tokenizer_vocab is None:
                raise ValueError(f"model.vocab_size is unset for preset {self.preset!r}: pass the tokenizer's vocabulary size")
            values["vocab_size"] = tokenizer_vocab
        return ModelConfig(rope_theta=self.rope_theta, norm_eps=self.norm_eps, init_std=self.init_std, **values)


@dataclass(frozen=True)
class BudgetSection(_Section):
    unit: str
    value: float


@dataclass(frozen=True)
class CheckpointSection(_Section):
    every: int
    log_spaced: int
    keep: str
    export_hf: str


@dataclass(frozen=True)
class DistributedSection(_Section):
    strategy: str


@dataclass(frozen=True)
class TrainSection(_Section):
    budget: BudgetSection
    batch_size: int
    seq_len: int
    grad_accum: int
    lr: float
    min_lr_ratio: float
    schedule: str
    warmup_steps: int
    decay_steps: int | None
    weight_decay: float
    beta1: float
    beta2: float
    eps: float
    grad_clip: float | None
    device: str
    precision: str
    compile: str
    fused_adamw: str
    tf32: bool
    activation_checkpointing: bool
    eval_every: int
    eval_batches: int
    domain_eval_batches: int
    log_every: int
    progress_every_s: float
    on_nonfinite: str
    checkpoint: CheckpointSection
    distributed: DistributedSection


@dataclass(frozen=True)
class EpisodeSection(_Section):
    builder: str
    n_way: int
    k_shot: int
    q_query: int
    window: int
    min_count: int
    max_frequency: float
    unit: str
    index_tokens: int


@dataclass(frozen=True)
class HeadSection(_Section):
    layers: int
    width: int
    dropout: float
    output_init: str


@dataclass(frozen=True)
class InnerSection(_Section):
    steps: int
    lr: float
    backbone_grad_from_support: bool


@dataclass(frozen=True)
class ReptileSection(_Section):
    outer_step_size: float
    scope: str


@dataclass(frozen=True)
class MamlNtpSection(_Section):
    scope: str
    inner_layers: int
    inner_optimizer: str
    inner_lr: float
    inner_schedule: str
    support_batch_size: int
    query_batch_size: int


@dataclass(frozen=True)
class MetaSection(_Section):
    learner: str
    hybrid_ratio: float
    episode: EpisodeSection
    head: HeadSection
    inner: InnerSection
    reptile: ReptileSection
    maml_ntp: MamlNtpSection

    @property
    def enabled(self) -> bool:
        return self.learner != "none" and self.hybrid_ratio > 0


@dataclass(frozen=True)
class FinetuneSection(_Section):
    enabled: bool
    data_dir: str
    train_sets: list[str]
    regimes: list[str]
    labels: list[str]
    invalid_transition: str
    max_length: int
    head_type: str
    lr: float
    head_lr: float | None
    weight_decay: float
    epochs: int
    batch_size: int
    patience: int | None
    extra_train: dict[str, str]
    max_train_sentences: int | None
    max_eval_sentences: int | None
    seed: int | None  # None: the run's seed (see `seed_of`)
    device: str
    checkpoints: str | list | dict  # final | all | [steps] | {every: N} (metapretrain.matching.sweep_steps)
    log_every: int | None  # None: per epoch only (history.csv); N: curve.csv every N optimizer steps
    eval_groups: dict[str, list[str]]  # group -> treebank names / glob patterns (metapretrain.data.uner.eval_group)
    f1_mode: str  # strict | default (metapretrain.finetune.evaluate)

    def seed_of(self, run_seed: int) -> int:
        """The fine-tuning seed: `finetune.seed`, or the run's pretraining seed when it is null."""
        return run_seed if self.seed is None else self.seed


@dataclass(frozen=True)
class DynamicsSection(_Section):
    enabled: bool
    metrics: list[str]
    probe_batch_size: int
    probe_seq_len: int | None
    smoothing: int
    min_prominence: float
    device: str


@dataclass(frozen=True)
class SlurmSection(_Section):
    partition: str | None
    account: str | None
    qos: str | None
    constraint: str | None
    time_min: int
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    mem_gb: float | None
    signal_delay_s: int
    extra: dict
    stages: dict

    def for_stage(self, stage: str) -> SlurmSection:
        """These settings with `stages.<stage>` overrides applied."""
        overrides = self.stages.get(stage) or {}
        return dataclasses.replace(self, **overrides)


@dataclass(frozen=True)
class ThreadsSection(_Section):
    pretrain: int | None
    finetune: int | None
    dynamics: int | None


@dataclass(frozen=True)
class LaunchSection(_Section):
    launcher: str
    max_requeues: int
    threads: ThreadsSection
    slurm: SlurmSection


@dataclass(frozen=True)
class WandbSection(_Section):
    mode: str
    project: str
    entity: str | None


@dataclass(frozen=True)
class RunConfig(_Section):
    seed: int
    data: DataSection
    corpus: CorpusSection
    tokenizer: TokenizerSection
    model: ModelSection
    train: TrainSection
    meta: MetaSection
    finetune: FinetuneSection
    dynamics: DynamicsSection
    launch: LaunchSection
    wandb: WandbSection

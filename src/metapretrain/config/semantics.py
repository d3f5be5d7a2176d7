"""Checks across keys that a JSON Schema cannot express."""

from __future__ import annotations

from metapretrain.config.errors import ConfigError


def check(cfg: dict, *, file: str | None = None, run_id: str | None = None, lines=None) -> None:
    """Raise ConfigError naming the key when a resolved run config is inconsistent."""
    where = f" (run {run_id})" if run_id else ""

    def fail(key: str, message: str):
        path = tuple(key.split("."))
        line = lines(("defaults",) + path) if callable(lines) else None
        raise ConfigError(message + where, file=file, key=key, line=line)

    from metapretrain.config.types import RunConfig

    typed = RunConfig.from_dict(cfg)
    tok_vocab = typed.tokenizer.vocab_size if typed.tokenizer.kind == "bpe" else None
    try:
        model = typed.model.resolved(tokenizer_vocab=tok_vocab or 1 << 16)
    except ValueError as exc:
        text = str(exc)
        key = "model.n_kv_heads" if "n_kv_heads" in text else "model.n_heads" if "n_heads" in text else "model.d_model"
        fail(key, text)
    if tok_vocab is not None and model.vocab_size < tok_vocab:
        fail("model.vocab_size", f"model vocabulary {model.vocab_size} is smaller than tokenizer.vocab_size={tok_vocab}")
    if typed.train.seq_len > model.max_seq_len:
        fail("train.seq_len", f"train.seq_len={typed.train.seq_len} exceeds the model's max_seq_len={model.max_seq_len}")
    if typed.train.warmup_steps and typed.train.decay_steps and typed.train.warmup_steps > typed.train.decay_steps:
        fail("train.warmup_steps", f"warm-up ({typed.train.warmup_steps}) is longer than decay_steps ({typed.train.decay_steps})")
    if typed.tokenizer.kind == "pretrained" and not typed.tokenizer.path:
        fail("tokenizer.path", "tokenizer.kind is 'pretrained' but tokenizer.path is not set")
    ft = typed.finetune
    if ft.enabled and ft.checkpoints != "final":
        if typed.train.checkpoint.keep != "all":
            fail("finetune.checkpoints", f"finetune.checkpoints={ft.checkpoints!r} fine-tunes from earlier checkpoints, "
                 "but train.checkpoint.keep is 'last', which deletes them: set train.checkpoint.keep: all")
        if isinstance(ft.checkpoints, list) and typed.train.budget.unit == "steps":
            from metapretrain.matching import scheduled_steps

            planned = scheduled_steps(typed)
            missing = sorted(set(ft.checkpoints) - planned)
            if missing:
                fail("finetune.checkpoints", f"no checkpoint is scheduled at step(s) {missing}: the run checkpoints "
                     f"at steps {sorted(planned)} (train.checkpoint.every, log_spaced)")
    from metapretrain.data.uner import eval_group_problems

    for key, message in eval_group_problems(ft.eval_groups):
        fail(key, message)
    if typed.meta.enabled:
        ep = typed.meta.episode
        if ep.window > model.max_seq_len:
            fail("meta.episode.window", f"episode window {ep.window} exceeds the model's max_seq_len={model.max_seq_len}")
        if tok_vocab is not None and ep.n_way > tok_vocab:
            fail("meta.episode.n_way", f"n_way={ep.n_way} is larger than the vocabulary ({tok_vocab} tokens)")
    for stage, overrides in typed.launch.slurm.stages.items():
        from metapretrain.config.schema import subschema

        allowed = set(subschema(("launch", "slurm"))["properties"]) - {"stages"}
        for key in overrides or {}:
            if key not in allowed:
                from metapretrain.config.errors import suggest

                fail(f"launch.slurm.stages.{stage}.{key}",
                     f"unknown SLURM setting{suggest(key, allowed)}; allowed: {', '.join(sorted(allowed))}")
    _check_dynamics_metrics(typed, fail)


def _check_dynamics_metrics(typed, fail) -> None:
    try:
        from metapretrain.dynamics.registry import known_metrics
    except ImportError:  # the dynamics stage is not installed in this build
        return
    known = known_metrics()
    for name in typed.dynamics.metrics:
        if name not in known:
            from metapretrain.config.errors import suggest

            fail("dynamics.metrics", f"unknown metric '{name}'{suggest(name, known)}; known metrics: {', '.join(sorted(known))}")

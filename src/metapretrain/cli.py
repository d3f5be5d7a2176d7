"""The `metapretrain` console script: one subcommand per stage.

Each subcommand lives in its own module exposing `main(argv: list[str]) -> int`;
modules are imported only when their subcommand runs, so the CLI starts fast
and works where optional dependencies (snakemake, wandb, ...) are missing.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "grid": ("metapretrain.grid_cli", "show, validate, diff or materialize an experiment's grid"),
    "data": ("metapretrain.data.data_cli", "check and download the data an experiment reads (UNER, corpus)"),
    "tokenize": ("metapretrain.data.tokenize_stage", "train/load the tokenizer and write token shards"),
    "pretrain": ("metapretrain.train.stage", "pretrain one run (vanilla or meta), resumable"),
    "export": ("metapretrain.checkpoint.export", "export a checkpoint to a Hugging Face LlamaForCausalLM folder"),
    "uner": ("metapretrain.data.uner_cli", "inspect Universal NER files (stats)"),
    "finetune": ("metapretrain.finetune.stage", "fine-tune a pretrained run on UNER and evaluate on every test set"),
    "ner-table": ("metapretrain.finetune.table", "collect all fine-tuning results of an experiment into one table"),
    "dynamics": ("metapretrain.dynamics.stage", "learning-dynamics metrics over a run's checkpoints"),
    "figures": ("metapretrain.figures.stage", "paper figures and tables from the runs' files"),
    "status": ("metapretrain.status", "state of every run and stage of an experiment"),
    "cancel": ("metapretrain.launch.cancel", "cancel an experiment's live SLURM jobs"),
    "doctor": ("metapretrain.doctor", "list incomplete, stale and orphaned runs"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: metapretrain <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `metapretrain <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from metapretrain import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from metapretrain.config.errors import suggest

        print(f"metapretrain: unknown command '{name}'{suggest(name, COMMANDS)}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    from metapretrain.config.errors import ConfigError
    from metapretrain.io import InputError

    try:
        return int(module.main(rest) or 0)
    except (ConfigError, InputError) as exc:  # a bad input file or value: one line naming file:line, no traceback
        print(f"metapretrain {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

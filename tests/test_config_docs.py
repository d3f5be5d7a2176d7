"""config/README.md documents every key, straight from the schema."""

from pathlib import Path

from metapretrain.config.docs import BEGIN, END, render_reference

REPO = Path(__file__).resolve().parents[1]


def test_key_reference_is_up_to_date():
    text = (REPO / "config" / "README.md").read_text()
    current = text[text.index(BEGIN): text.index(END) + len(END)]
    assert current == render_reference(), "run: python -m metapretrain.config.docs config/README.md"


def test_every_key_is_documented():
    text = (REPO / "config" / "README.md").read_text()
    for key in ("train.budget.unit", "meta.episode.n_way", "meta.inner.lr", "launch.slurm.partition", "finetune.regimes",
                "dynamics.metrics", "wandb.mode", "tokenizer.vocab_size", "corpus.sources", "data.root"):
        assert f"`{key}`" in text, key

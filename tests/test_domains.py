"""Per-domain held-out evaluation (corpus.domains): the tokenize stage's domain shards, the empty-domain
error, `val_loss/<domain>` in a real run's eval records, and the domains tables on hand-made metrics."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import make_run, records
from metapretrain.data.corpus import CorpusError, is_validation, split_documents
from metapretrain.data.shards import domain_file, domain_names, open_domain, open_split, read_manifest
from metapretrain.data.tokenize_stage import tokenize

WORDS = {"alpha": ["the", "cat", "sat", "on", "a", "mat", "and", "saw", "it"],
         "beta": ["dog", "ran", "to", "big", "red", "house", "fast", "far", "away"]}
PALOMA_DOCS = ["the cat ran to the red house", "a dog sat on the mat", "", "far away it saw a big cat"]


def _tok_config(root: Path, **domains) -> dict:
    from metapretrain.config.load import run_config_from_dict

    cfg = run_config_from_dict({
        "data": {"root": str(root)},
        "corpus": {"name": "dom", "sources": [{"type": "files", "paths": ["corpus/*.txt"]}],
                   "validation_fraction": 0.1, "domains": domains},
        "tokenizer": {"vocab_size": 128},
    }).to_dict()
    return {k: cfg[k] for k in ("data", "corpus", "tokenizer", "seed")}


def _corpus(root: Path, lines: int = 600) -> Path:
    (root / "corpus").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, words in WORDS.items():
        text = [" ".join(rng.choice(words, size=rng.integers(5, 15))) for _ in range(lines)]
        (root / "corpus" / f"{name}.txt").write_text("\n".join(text) + "\n")
    (root / "held").mkdir(exist_ok=True)
    (root / "held" / "extra.txt").write_text("the red cat ran far away\n\nsaw a big house\n")
    return root


def _paloma_fixture(root: Path) -> Path:
    """A local dataset laid out as the Paloma repository on the Hub: <config>/val/*.jsonl.gz, its configs in
    the README's metadata, loaded by `datasets.load_dataset(<dir>, <config>, split="val")`."""
    repo = root / "paloma"
    (repo / "c4_en" / "val").mkdir(parents=True)
    with gzip.open(repo / "c4_en" / "val" / "val.jsonl.gz", "wt") as fh:
        for i, text in enumerate(PALOMA_DOCS):
            fh.write(json.dumps({"text": text, "id": str(i), "source": "c4_en"}) + "\n")
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: c4_en\n  data_files:\n  - split: val\n"
                                    "    path: c4_en/val/*.jsonl.gz\n---\n# Paloma fixture\n")
    return repo


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return datasets


@pytest.fixture(scope="module")
def domain_tok(tmp_path_factory) -> Path:
    root = _corpus(tmp_path_factory.mktemp("domains"))
    extra = [{"name": "held-out", "type": "files", "paths": ["held/extra.txt"], "documents": "paragraph"}]
    tokenize(_tok_config(root, extra=extra), root / "tok")
    return root / "tok"


def _encode(tok_dir: Path, docs: list[str]) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eos = read_manifest(tok_dir)["special_tokens"]["eos"]
    return [i for d in docs for i in [*tok.encode(d, add_special_tokens=False).ids, eos]]


def test_tokenize_records_each_val_document_in_its_sources_domain(domain_tok):
    root = domain_tok.parent
    manifest = read_manifest(domain_tok)
    assert domain_names(manifest) == ["alpha", "beta", "held-out"]
    val_docs = []
    for name in WORDS:
        docs = [d for d in split_documents((root / "corpus" / f"{name}.txt").read_text(), "line")
                if is_validation(d, 0.1)]
        val_docs += docs
        info = manifest["domains"][name]
        assert info["file"] == domain_file(name) and info["kind"] == "source"
        assert info["sources"] == [str(root / "corpus" / f"{name}.txt")]
        assert info["documents"] == len(docs) > 0
        assert open_domain(domain_tok, name).tolist() == _encode(domain_tok, docs)
    # The by_source domains partition the val split (no new text leaves training) ...
    assert open_split(domain_tok, "val").tolist() == _encode(domain_tok, val_docs)
    # ... and an extra set is held out whole, never in train or val.
    held = manifest["domains"]["held-out"]
    assert held["kind"] == "extra" and held["documents"] == 2
    assert open_domain(domain_tok, "held-out").tolist() == _encode(domain_tok, ["the red cat ran far away",
                                                                                "saw a big house"])
    assert str(root / "held" / "extra.txt") in {s["path"] for s in manifest["sources"]}
    done = json.loads((domain_tok / "done.json").read_text())
    assert {domain_file(n) for n in domain_names(manifest)} <= set(done["outputs"])


def test_by_source_off_writes_no_domain(tmp_path):
    root = _corpus(tmp_path)
    manifest = tokenize(_tok_config(root, by_source=False), root / "tok")
    assert manifest["domains"] == {}
    assert not list((root / "tok").glob("domain.*"))


def test_a_domain_without_validation_documents_is_an_error_naming_key_and_file(tmp_path):
    root = _corpus(tmp_path)
    # Two lines, neither in the 10% validation split.
    lines = [f"tiny line {i}" for i in range(200) if not is_validation(f"tiny line {i}", 0.1)][:2]
    (root / "corpus" / "tiny.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError) as err:
        tokenize(_tok_config(root), root / "tok")
    msg = str(err.value)
    assert "corpus.domains.by_source" in msg and str(root / "corpus" / "tiny.txt") in msg
    assert "'tiny'" in msg and "2 documents read" in msg
    assert not (root / "tok").exists()


def test_an_empty_or_repeated_extra_domain_is_an_error(tmp_path):
    root = _corpus(tmp_path)
    (root / "held" / "blank.txt").write_text("   \n\n")
    with pytest.raises(CorpusError, match=r"corpus\.domains\.extra\[0\] \(domain 'blank'\): .*blank\.txt: "
                                          "corpus file is empty"):
        tokenize(_tok_config(root, extra=[{"name": "blank", "type": "files", "paths": ["held/blank.txt"]}]),
                 root / "tok")
    with pytest.raises(CorpusError, match=r"corpus\.domains\.extra\[0\] pattern 'held/none\*' matches no file"):
        tokenize(_tok_config(root, extra=[{"name": "x", "type": "files", "paths": ["held/none*"]}]), root / "tok")
    twice = [{"name": "x", "type": "files", "paths": ["held/extra.txt"]}] * 2
    with pytest.raises(CorpusError, match=r"corpus\.domains\.extra\[1\]: domain name 'x' is used twice"):
        tokenize(_tok_config(root, extra=twice), root / "tok")


def test_a_source_named_like_an_extra_domain_gets_a_suffix(tmp_path):
    root = _corpus(tmp_path)
    manifest = tokenize(_tok_config(root, extra=[{"name": "alpha", "type": "files", "paths": ["held/extra.txt"]}]),
                        root / "tok")
    assert domain_names(manifest) == ["alpha-2", "beta", "alpha"]
    assert manifest["domains"]["alpha"]["kind"] == "extra"


def test_hf_domain_loads_a_local_paloma_layout(tmp_path, hf_cache):
    root = _corpus(tmp_path)
    repo = _paloma_fixture(tmp_path)
    extra = [{"name": "paloma-c4_en", "type": "hf", "dataset": str(repo), "config": "c4_en", "split": "val"}]
    manifest = tokenize(_tok_config(root, by_source=False, extra=extra), root / "tok")
    info = manifest["domains"]["paloma-c4_en"]
    assert info["documents"] == 3  # the empty text is left out
    assert info["sources"] == [f"hf:{repo}:c4_en:val"]
    assert open_domain(root / "tok", "paloma-c4_en").tolist() == _encode(root / "tok", [d for d in PALOMA_DOCS if d])
    capped = [dict(extra[0], max_documents=1)]
    assert tokenize(_tok_config(root, by_source=False, extra=capped), root / "tok2")["domains"]["paloma-c4_en"][
        "documents"] == 1
    blank = tmp_path / "blank-hf"
    (blank / "c4_en" / "val").mkdir(parents=True)
    (blank / "c4_en" / "val" / "val.jsonl").write_text(json.dumps({"text": "  "}) + "\n")
    empty = [{"name": "blank", "type": "hf", "dataset": str(blank / "c4_en" / "val")}]  # split: validation
    with pytest.raises(CorpusError, match=r"corpus\.domains\.extra\[0\] \(domain 'blank'\): hf dataset .* has no "
                                          "documents"):
        tokenize(_tok_config(root, by_source=False, extra=empty), root / "tok4")
    bad = [dict(extra[0], config="no_such_source")]
    with pytest.raises(CorpusError, match="no_such_source"):
        tokenize(_tok_config(root, by_source=False, extra=bad), root / "tok3")


def test_hf_domain_loads_a_save_to_disk_folder(tmp_path, hf_cache):
    root = _corpus(tmp_path)
    hf_cache.DatasetDict({"val": hf_cache.Dataset.from_dict({"text": ["a big red dog", "the cat"]})}).save_to_disk(
        str(tmp_path / "saved"))
    extra = [{"name": "saved", "type": "hf", "dataset": str(tmp_path / "saved"), "split": "val"}]
    manifest = tokenize(_tok_config(root, by_source=False, extra=extra), root / "tok")
    assert manifest["domains"]["saved"]["documents"] == 2
    with pytest.raises(CorpusError, match="no split 'test'"):
        tokenize(_tok_config(root, by_source=False, extra=[dict(extra[0], split="test")]), root / "tok2")


# ------------------------------------------------------------------ batches and the training loop
def test_domain_batches_cap_without_repeats_and_keep_a_short_domain():
    import torch

    from metapretrain.train.batches import domain_batches

    tokens = np.arange(100)
    batches = domain_batches(tokens, batch_size=4, seq_len=10, n_batches=2)
    assert [b.shape for b in batches] == [torch.Size([4, 11])] * 2
    starts = [int(r[0]) for b in batches for r in b]
    assert len(set(starts)) == 8 and starts[0] == 0 and starts[-1] == 80
    few = domain_batches(tokens[:35], batch_size=4, seq_len=10, n_batches=3)  # 3 windows: one batch of 3
    assert [b.shape for b in few] == [torch.Size([3, 11])]
    short = domain_batches(tokens[:6], batch_size=4, seq_len=10, n_batches=2)
    assert len(short) == 1 and short[0].tolist() == [list(range(6))]
    assert domain_batches(tokens, 4, 10, 0) == [] and domain_batches(tokens[:1], 4, 10, 2) == []


def test_training_logs_a_loss_per_domain_at_every_evaluation(tmp_path, domain_tok):
    from metapretrain.model.loss import next_token_loss
    from metapretrain.train.stage import train_run

    run = make_run(tmp_path, train={"domain_eval_batches": 1})
    train_run(str(run), str(domain_tok))
    evals = records(run, "eval")
    assert [r["step"] for r in evals] == [0, 4, 8, 12]
    names = domain_names(read_manifest(domain_tok))
    for r in evals:
        assert {f"val_loss/{n}" for n in names} <= set(r)
        assert all(math.isfinite(r[f"val_loss/{n}"]) and r[f"val_loss/{n}"] > 0 for n in names)
    # The init-state evaluation, recomputed by hand from the step-0 checkpoint: the token-weighted mean.
    import torch

    from metapretrain import checkpoint as ckpt
    from metapretrain.config.load import run_config_from_dict
    from metapretrain.model.decoder import Decoder
    from metapretrain.train.batches import domain_batches

    cfg = run_config_from_dict(yaml.safe_load((run / "config.resolved.yaml").read_text()))
    model = Decoder(cfg.model.resolved(tokenizer_vocab=read_manifest(domain_tok)["vocab_size"]))
    first = ckpt.list_checkpoints(run)[0]
    model.load_state_dict(ckpt.load_tensors(first.path))
    model.eval()
    batches = domain_batches(open_domain(domain_tok, "held-out"), 2, 16, 1)
    with torch.no_grad():
        parts = [(next_token_loss(model, b).item(), b.shape[0] * (b.shape[1] - 1)) for b in batches]
    want = sum(x * n for x, n in parts) / sum(n for _, n in parts)
    assert evals[0]["val_loss/held-out"] == pytest.approx(want, rel=1e-5)


def test_domain_eval_batches_zero_logs_no_domain(tmp_path, domain_tok):
    from metapretrain.train.stage import train_run

    run = make_run(tmp_path, train={"domain_eval_batches": 0, "budget": {"value": 4}})
    train_run(str(run), str(domain_tok))
    assert not [k for r in records(run, "eval") for k in r if k.startswith("val_loss/")]


# ------------------------------------------------------------------ figures
pd = pytest.importorskip("pandas")

# Domain `a`: vanilla evals at steps 0/100/200 (2e9 FLOPs a step), fomaml at 0/50/100 (3e9 a step): the
# fomaml runs end at 3e11 FLOPs = vanilla step 150, where the baseline is the mean of its step-100 and 200 losses.
A = {"vanilla": {0: [9.0] * 3, 100: [5.0, 5.2, 5.4], 200: [4.0, 4.2, 4.4]},
     "fomaml": {0: [9.0] * 3, 50: [6.0] * 3, 100: [4.3, 4.4, 4.8]}}
# Domain `b`: every difference equal (no spread: no p).
B = {"vanilla": {0: [8.0] * 3, 100: [3.5, 3.6, 3.7], 200: [3.0, 3.1, 3.2]},
     "fomaml": {0: [8.0] * 3, 50: [5.0] * 3, 100: [3.0, 3.1, 3.2]}}
FLOPS = {"vanilla": 2e9, "fomaml": 3e9}


def _experiment(root: Path, domains: bool = True) -> Path:
    exp = root / "results" / "dom"
    runs = []
    for method in ("vanilla", "fomaml"):
        for i, seed in enumerate((1, 2, 3)):
            axes = {"method": method, "seed": str(seed)}
            run_id = f"method~{method}/seed~{seed}"
            runs.append({"run_id": run_id, "axes": axes})
            rdir = exp / "runs" / run_id
            (rdir / "pretrain").mkdir(parents=True)
            cfg = {"seed": seed, "meta": {"learner": "none" if method == "vanilla" else "fomaml"},
                   "model": {"preset": "micro"}}
            (rdir / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))
            lines = []
            for step in A[method]:
                rec = {"kind": "eval", "step": step, "tokens": step * 100, "flops": step * FLOPS[method],
                       "wall": float(step), "val_loss": A[method][step][i]}
                if domains:
                    rec |= {"val_loss/a": A[method][step][i], "val_loss/b": B[method][step][i]}
                lines.append(json.dumps(rec))
                lines.append(json.dumps({"kind": "train", "step": step, "tokens": step * 100,
                                         "flops": step * FLOPS[method], "wall": float(step), "loss": 5.0}))
            (rdir / "pretrain" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            (rdir / "pretrain" / "done.json").write_text("{}")
    (exp / "grid.yaml").write_text(yaml.safe_dump({"experiment": "dom", "axes": ["method", "seed"], "runs": runs}))
    return exp


def _load(exp: Path):
    from metapretrain.figures.load import load_experiment_data
    from metapretrain.figures.pairing import design

    data = load_experiment_data(exp)
    return data, design(data.runs, data.axes, data.replicates, compare=data.compare)


def _t_p(diffs: list[float]) -> tuple[float, float, float, float]:
    """Mean, 95% interval and two-sided p of a one-sample t-test, by hand (scipy only for t quantiles)."""
    from scipy import stats as st

    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    half = st.t.ppf(0.975, n - 1) * se
    return mean, mean - half, mean + half, 2 * st.t.sf(abs(mean / se), n - 1)


def test_domains_final_table_by_hand(tmp_path):
    from scipy import stats as st

    from metapretrain.figures.domains import domain_names as names
    from metapretrain.figures.domains import final_table

    data, d = _load(_experiment(tmp_path))
    assert names(data.runs) == ["a", "b"]
    table = final_table(data, d, ["a", "b"]).set_index(["method", "domain"])
    row = table.loc[("vanilla", "a")]
    assert row["n"] == 3 and row["loss"] == pytest.approx(4.2)
    half = st.t.ppf(0.975, 2) * 0.2 / math.sqrt(3)
    assert (row["loss_lo"], row["loss_hi"]) == (pytest.approx(4.2 - half), pytest.approx(4.2 + half))
    assert row["ppl"] == pytest.approx((math.exp(4.0) + math.exp(4.2) + math.exp(4.4)) / 3)
    assert table.loc[("fomaml", "b")]["loss"] == pytest.approx(3.1)
    assert row["run_ids"] == "method~vanilla/seed~1; method~vanilla/seed~2; method~vanilla/seed~3"


def test_domains_delta_final_and_flops_matched_by_hand(tmp_path):
    from metapretrain.figures.domains import delta_table

    data, d = _load(_experiment(tmp_path))
    table = delta_table(data, d, ["a", "b"]).set_index(["domain", "point"])
    assert len(table) == 4 and set(table["method"]) == {"fomaml"} and set(table["baseline"]) == {"vanilla"}
    final = table.loc[("a", "final")]
    mean, lo, hi, p = _t_p([0.3, 0.2, 0.4])
    assert final["n_pairs"] == 3 and final["paired"]
    assert final["delta"] == pytest.approx(mean) == pytest.approx(0.3)
    assert (final["delta_lo"], final["delta_hi"], final["p"]) == (pytest.approx(lo), pytest.approx(hi),
                                                                  pytest.approx(p))
    assert final["ppl_ratio"] == pytest.approx(math.exp(0.3))
    assert final["test"] == "paired t-test over seeds, two-sided"
    # Equal compute: the baseline at 3e11 FLOPs (its step 150) is 4.5 / 4.7 / 4.9.
    matched = table.loc[("a", "flops_matched")]
    mean, lo, hi, p = _t_p([-0.2, -0.3, -0.1])
    assert matched["baseline_loss"] == pytest.approx(4.7)
    assert (matched["delta"], matched["p"]) == (pytest.approx(-0.2), pytest.approx(p))
    # Domain b: equal differences, a mean without a p.
    assert table.loc[("b", "final")]["delta"] == pytest.approx(0.0, abs=1e-12)
    assert table.loc[("b", "flops_matched")]["delta"] == pytest.approx(-0.25)
    assert math.isnan(table.loc[("b", "flops_matched")]["p"])


def test_build_figures_writes_the_domain_tables_and_curves(tmp_path):
    from metapretrain.figures.stage import build_figures

    exp = _experiment(tmp_path)
    entries = build_figures(exp, formats=("png",), strict=True)
    files = {e["file"] for e in entries}
    assert {"tables/domains_final.csv", "tables/domains_delta.md", "domains/domain_loss_vs_flops.png",
            "domains/domain_loss_vs_step.png"} <= files
    csv = pd.read_csv(exp / "figures" / "tables" / "domains_delta.csv")
    assert set(csv["point"]) == {"final", "flops_matched"}


def test_no_domain_losses_skips_with_a_reason(tmp_path):
    from metapretrain.figures import domains
    from metapretrain.figures.outputs import Outputs

    exp = _experiment(tmp_path, domains=False)
    data, d = _load(exp)
    out = Outputs(root=exp / "figures", exp_dir=exp, formats=("png",))
    domains.render(data, d, out)
    assert out.entries == [] and (exp / "figures" / "domains").is_dir()
    assert any("val_loss/<domain>" in s for s in data.skipped)

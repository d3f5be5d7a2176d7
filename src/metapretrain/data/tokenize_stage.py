"""The tokenize stage: corpus → tokenizer.json + train/val token shards + manifest.

Deterministic: the same input and config give byte-identical outputs. Every
output is written to a temporary directory that replaces the target only when
complete, so a killed run never leaves a half-written directory that looks done.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

from metapretrain import paths
from metapretrain.data.corpus import (
    CorpusError,
    domain_files,
    is_validation,
    iter_documents,
    iter_domain_documents,
    iter_sourced_documents,
    source_domains,
    source_files,
)
from metapretrain.data.location import resolve, resolve_data_root
from metapretrain.data.shards import MANIFEST, ShardWriter, domain_file, shard_dtype
from metapretrain.data.tokenizer import load_tokenizer, special_token_ids, train_bpe
from metapretrain.io import make_temp_dir, sha256_file, write_done, write_json
from metapretrain.progress import Progress


def tokenize(config: dict, out_dir: str | Path) -> dict:
    """Run the stage for a tokenize config (`data`, `corpus`, `tokenizer` sections). Returns the manifest.

    It never downloads (it may run on a compute node without internet): the DAG's first rule,
    or `metapretrain data fetch`, has put the corpus in the download cache before.
    """
    out_dir = Path(out_dir)
    root = resolve_data_root(config)
    corpus, tcfg = config["corpus"], config["tokenizer"]
    frac = corpus["validation_fraction"]
    started = time.monotonic()

    # Pass 1: the tokenizer, trained on training documents only (validation text stays unseen).
    if tcfg["kind"] == "pretrained":
        tok = load_tokenizer(resolve(tcfg["path"], root))
    else:
        train_docs = (d for d in iter_documents(corpus, root) if not is_validation(d, frac))
        tok = train_bpe(train_docs, tcfg["vocab_size"], tcfg["min_frequency"])
    vocab = tok.get_vocab_size()
    dtype = shard_dtype(vocab)
    special = special_token_ids(tok)

    tmp = make_temp_dir(out_dir.parent, prefix=f".{out_dir.name}.")
    try:
        tokenizer = paths.tokenizer_file(tmp)
        tok.save(str(tokenizer))
        # Pass 2: encode every document into its split, in corpus order; a validation document also into
        # its source's domain shard (corpus.domains.by_source).
        domains_cfg = corpus.get("domains") or {}
        by_source = source_domains(corpus, root) if domains_cfg.get("by_source", True) else {}
        read: dict[str, int] = dict.fromkeys(by_source, 0)
        with contextlib.ExitStack() as files:
            ftrain = files.enter_context(open(tmp / "train.bin", "wb"))
            fval = files.enter_context(open(tmp / "val.bin", "wb"))
            writers = {"train": ShardWriter(ftrain, tok, special["eos"], dtype),
                       "val": ShardWriter(fval, tok, special["eos"], dtype)}
            domain_writers: dict[str, ShardWriter] = {}
            for name in by_source.values():
                fh = files.enter_context(open(tmp / domain_file(name), "wb"))
                domain_writers[name] = ShardWriter(fh, tok, special["eos"], dtype)
            n_docs = 0
            with Progress("tokenize", total=0, unit="docs", every_s=10) as bar:
                for origin, doc in iter_sourced_documents(corpus, root):
                    val = is_validation(doc, frac)
                    writers["val" if val else "train"].add(doc)
                    if origin in by_source:
                        read[origin] += 1
                        if val:
                            domain_writers[by_source[origin]].add(doc)
                    n_docs += 1
                    if n_docs % 4096 == 0:
                        bar.total = n_docs
                        bar.update(n_docs, tokens=writers["train"].tokens + writers["val"].tokens)
                for w in [*writers.values(), *domain_writers.values()]:
                    w.flush()
                bar.total = n_docs
                bar.update(n_docs, tokens=writers["train"].tokens + writers["val"].tokens)
        for split, w in writers.items():
            if w.tokens == 0:
                raise CorpusError(f"the {split} split is empty ({n_docs} documents, validation_fraction={frac}): "
                                  "add text or change corpus.validation_fraction")
        domains = {}
        for origin, name in by_source.items():
            w = domain_writers[name]
            if read[origin] == 0:  # never reached (corpus.max_documents stops before it): no domain
                (tmp / domain_file(name)).unlink()
                print(f"tokenize: domain {name}: no document read from {origin} (corpus.max_documents="
                      f"{corpus.get('max_documents')}); left out", flush=True)
                continue
            if w.documents == 0:
                raise CorpusError(f"{_origin_text(origin)}: corpus.domains.by_source: domain '{name}' has no "
                                  f"validation document ({read[origin]} documents read, validation_fraction="
                                  f"{frac}): add text to it, raise corpus.validation_fraction, or set "
                                  "corpus.domains.by_source: false")
            domains[name] = _domain_entry(tmp, name, w, "source", [origin])
        for i, extra in enumerate(domains_cfg.get("extra") or []):
            key = f"corpus.domains.extra[{i}]"
            name = extra["name"]
            if name in domains:
                raise CorpusError(f"{key}: domain name '{name}' is used twice; rename one")
            with open(tmp / domain_file(name), "wb") as fh:
                w = ShardWriter(fh, tok, special["eos"], dtype)
                try:
                    for doc in iter_domain_documents(extra, root, key):
                        w.add(doc)
                except CorpusError as exc:
                    raise CorpusError(f"{key} (domain '{name}'): {exc}") from None
                w.flush()
            where = (", ".join(str(p) for p in domain_files(extra, root, key)) if extra["type"] == "files"
                     else f"hf dataset '{extra['dataset']}'")
            if w.documents == 0:
                raise CorpusError(f"{key} (domain '{name}'): {where} has no documents (only empty text)")
            origins = ([str(p) for p in domain_files(extra, root, key)] if extra["type"] == "files"
                       else [f"hf:{extra['dataset']}:{extra.get('config') or ''}:{extra.get('split')}"])
            domains[name] = _domain_entry(tmp, name, w, "extra", origins)
        manifest = {
            "format": 1,
            "dtype": dtype.name,
            "vocab_size": vocab,
            "special_tokens": special,
            "tokenizer_sha256": sha256_file(tokenizer),
            "splits": {
                split: {"file": f"{split}.bin", "tokens": w.tokens, "documents": w.documents,
                        "sha256": sha256_file(tmp / f"{split}.bin")}
                for split, w in writers.items()
            },
            "domains": domains,
            "sources": [{"path": str(p), "sha256": sha256_file(p)} for p in source_files(corpus, root)]
            + [{"path": str(p), "sha256": sha256_file(p)} for i, e in enumerate(domains_cfg.get("extra") or [])
               for p in domain_files(e, root, f"corpus.domains.extra[{i}]")],
            "config": {k: config[k] for k in ("data", "corpus", "tokenizer")},
        }
        write_json(tmp / MANIFEST, manifest)
        (tmp / "tokenize.yaml").write_text(json.dumps(config, indent=2, sort_keys=True))
        write_done(tmp, "tokenize", None, [tokenizer.name, "train.bin", "val.bin", MANIFEST,
                                           *(d["file"] for d in domains.values())],
                   extra={"seconds": round(time.monotonic() - started, 2)})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = sum(s["tokens"] for s in manifest["splits"].values())
    print(f"tokenize: {n_docs} documents, {total:,} tokens (train {manifest['splits']['train']['tokens']:,}, "
          f"val {manifest['splits']['val']['tokens']:,}), vocab {vocab}, {time.monotonic() - started:.1f}s -> {out_dir}")
    return manifest


def _origin_text(origin: str) -> str:
    return f"hf dataset '{origin[3:].rsplit(':', 2)[0]}'" if origin.startswith("hf:") else origin


def _domain_entry(tmp: Path, name: str, w: ShardWriter, kind: str, origins: list[str]) -> dict:
    return {"file": domain_file(name), "tokens": w.tokens, "documents": w.documents, "kind": kind,
            "sources": origins, "sha256": sha256_file(tmp / domain_file(name))}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="metapretrain tokenize", description=__doc__)
    parser.add_argument("--config", required=True, help="tokenize config (YAML/JSON with data, corpus, tokenizer sections)")
    parser.add_argument("--out", required=True, help="output directory (replaced atomically)")
    args = parser.parse_args(argv)
    from metapretrain.config.load import run_config_from_dict
    from metapretrain.config.yamlpos import PositionedYAML

    doc = PositionedYAML.from_file(args.config)
    cfg = run_config_from_dict(doc.data, file=doc.file, lines=doc.line).to_dict()
    try:
        tokenize(cfg, args.out)
    except (CorpusError, FileNotFoundError, ValueError) as exc:
        print(f"metapretrain tokenize: error: {exc}", file=sys.stderr)
        return 1
    return 0

"""Tokenizer encoding throughput on the shared corpus with the batch encoder (JSON on stdout).

Target: >= 500k tokens/s on 2 cores. The tokenizer is trained once (not timed);
the timed part is exactly what the tokenize stage does per chunk: encode_batch
plus writing the uint16 array.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

import numpy as np

from metapretrain.data.corpus import iter_documents
from metapretrain.data.location import resolve_data_root
from metapretrain.data.shards import ShardWriter
from metapretrain.data.tokenizer import special_token_ids, train_bpe


def main() -> int:
    root = resolve_data_root()
    corpus = {"sources": [{"type": "files", "paths": ["corpus/*.txt"], "documents": "line"}], "max_documents": None}
    docs = list(iter_documents(corpus, root))
    n_bytes = sum(len(d.encode()) for d in docs)
    t0 = time.perf_counter()
    tok = train_bpe(iter(docs), vocab_size=8192)
    train_s = time.perf_counter() - t0
    eos = special_token_ids(tok)["eos"]
    results = []
    for _ in range(3):
        sink = io.BytesIO()
        writer = ShardWriter(sink, tok, eos, np.dtype(np.uint16))
        t0 = time.perf_counter()
        for d in docs:
            writer.add(d)
        writer.flush()
        results.append((time.perf_counter() - t0, writer.tokens))
    best = min(r[0] for r in results)
    tokens = results[0][1]
    print(json.dumps({
        "bench": "tokenize", "documents": len(docs), "bytes": n_bytes, "tokens": tokens,
        "encode_s": round(best, 3), "tokens_per_s": round(tokens / best), "mb_per_s": round(n_bytes / best / 1e6, 2),
        "train_bpe_s": round(train_s, 2), "threads": os.cpu_count(), "target_tokens_per_s": 500_000,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The data layer: catalogue, derivation of the UD corpus files, download and fetch (against a real local
HTTP server), plan-time checks of every named file, and run identity by content rather than by path."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from metapretrain.cli import main as cli
from metapretrain.data import catalogue, identity
from metapretrain.data.catalogue import CATALOGUE, Derived, Remote
from metapretrain.data.derive import derive_text, sentences
from metapretrain.data.download import DownloadError, download, download_uner, git_blob_id
from metapretrain.data.errors import DataError
from metapretrain.data.plan import LOCK_FILE, experiment_plan, fetch
from metapretrain.data.uner import read_iob2
from metapretrain.grid import load_experiment

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# --- a local HTTP server laid out like raw.githubusercontent.com ----------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_after: dict[str, int] = {}  # path -> bytes sent before the connection drops (once)
    ranges: list[str | None] = []
    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(data):
            self.send_error(416)
            return
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        cut = self.cut_after.pop(self.path, None)
        self.wfile.write(body[:cut] if cut is not None else body)
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.files, _Handler.cut_after, _Handler.ranges, _Handler.requests = {}, {}, [], []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
    httpd.server_close()


def url_path(entry: Remote) -> str:
    return entry.url("http://x")[len("http://x"):]


def serve_mirror(handler, data_root: Path) -> dict[str, Remote]:
    """Serve a fixture copy of every catalogue download the mirror holds, at its GitHub path."""
    served = {}
    for entry in CATALOGUE.values():
        if isinstance(entry, Remote) and (data_root / entry.rel).is_file():
            handler.files[url_path(entry)] = (data_root / entry.rel).read_bytes()
            served[url_path(entry)] = entry
    return served


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def experiment(tmp_path: Path, defaults: dict, name: str = "e.yaml", grid: dict | None = None) -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"experiment": "d", "defaults": defaults, "grid": grid or {}}, sort_keys=False))
    return p


# --- download ---------------------------------------------------------------------------------------------

def test_download_verifies_and_resumes_after_a_dropped_connection(tmp_path, server):
    base, handler = server
    data = bytes(range(256)) * 400
    handler.files["/f.iob2"] = data
    handler.cut_after["/f.iob2"] = 10_000
    seen = []
    dest = download(f"{base}/f.iob2", tmp_path / "f.iob2", sha256=hashlib.sha256(data).hexdigest(), backoff_s=0,
                    progress=seen.append)
    assert dest.read_bytes() == data
    assert handler.ranges == [None, "bytes=10000-"]
    assert seen[-1] == len(data) and seen == sorted(seen)  # progress counts the resumed file as a whole
    assert not (tmp_path / ".f.iob2.part").exists()
    # Already present and matching: no request at all.
    download(f"{base}/f.iob2", dest, sha256=hashlib.sha256(data).hexdigest())
    assert len(handler.ranges) == 2


def test_download_checksum_mismatch_leaves_nothing(tmp_path, server):
    base, handler = server
    handler.files["/f.iob2"] = b"tampered\n"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(f"{base}/f.iob2", tmp_path / "f.iob2", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{base}/missing", tmp_path / "g.iob2", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


GOOD = ("# sent_id = s1\n# text = Anna bor i Paris\n"
        "1\tAnna\tB-PER\t-\tx\n2\tbor\tO\t-\t-\n3\ti\tO\t-\t-\n4\tParis\tB-LOC\t-\tx\n\n")


def test_download_uner_with_git_blob_checksum(tmp_path, server):
    base, handler = server
    data = GOOD.encode()
    (tmp_path / "ref").write_bytes(data)
    blob = git_blob_id(tmp_path / "ref")
    assert blob == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    files = [Remote("uner/Danish-DDT/da_ddt-ud-test.iob2", "UniversalNER/UNER_Danish-DDT", "abc",
                    "da_ddt-ud-test.iob2", len(data), git_blob=blob)]
    handler.files["/UniversalNER/UNER_Danish-DDT/abc/da_ddt-ud-test.iob2"] = data
    [path] = download_uner(tmp_path / "uner", files=files, base=base)
    assert path == tmp_path / "uner" / "Danish-DDT" / "da_ddt-ud-test.iob2"
    assert read_iob2(path)[1].sentences == 1
    with pytest.raises(KeyError, match="unknown UNER treebank"):
        download_uner(tmp_path / "uner", ["Klingon-X"], files=files, base=base)


# --- catalogue and derivation -----------------------------------------------------------------------------

def test_catalogue_checksums_are_the_mirrors(data_root):
    """Every pinned file the mirror holds has exactly the catalogue's sha256 (and size)."""
    checked = 0
    for rel, entry in CATALOGUE.items():
        f = data_root / rel
        if entry.sha256 and f.is_file():
            assert (sha(f), f.stat().st_size) == (entry.sha256, entry.size), rel
            checked += 1
    assert checked == len(CATALOGUE) - 2  # all but the English train file and the English text derived from it
    assert catalogue.matching("corpus/ud-train_*.txt") == [CATALOGUE[f"corpus/ud-train_{tb}.txt"]
                                                          for tb in catalogue.treebanks()]
    assert catalogue.matching("*.txt") == [] and catalogue.matching("uner/*/*-test.iob2")[0].rel.endswith("test.iob2")


def test_derivation_reproduces_the_mirror_corpus_files(data_root):
    """`# text` lines minus the UNER dev/test overlap give the mirror's ud-train files byte for byte."""
    for rel, entry in CATALOGUE.items():
        if isinstance(entry, Derived) and entry.sha256:
            data, dropped = derive_text(data_root / entry.source, [data_root / r for r in entry.exclude])
            assert hashlib.sha256(data).hexdigest() == entry.sha256 == sha(data_root / rel), rel
            if "Danish" in rel:
                assert dropped == 11  # the mirror README §3: "Danish 11"


# --- fetch into the download cache ------------------------------------------------------------------------

def english_fixture(data_root: Path) -> tuple[bytes, list[str], str]:
    """A stand-in for the UNER English-EWT train file (absent from the mirror, so no fixture with its real
    blob id can exist): three sentences, one of them an English dev sentence written with other spacing."""
    dev = next(s for s in sentences(data_root / "uner/English-EWT/en_ewt-ud-dev.iob2") if len(s.split()) > 3)
    texts = ["A first sentence here .", dev.replace(" ", "  ", 1), "The third one ."]
    body = "".join(f"# sent_id = {i}\n# text = {t}\n1\t{t.split()[0]}\tO\t-\t-\n\n" for i, t in enumerate(texts))
    return body.encode(), texts, dev


def test_fetch_verifies_a_git_blob_download_resumes_it_and_derives_english(tmp_path, server, data_root, monkeypatch):
    """The git-blob-verified path (English-EWT train) and the derivation, with a dropped connection on the way;
    the tokenize id is the same before the fetch (recipe id) and after it, and changes when the text is edited."""
    base, handler = server
    body, texts, dev = english_fixture(data_root)
    train = CATALOGUE["uner/English-EWT/en_ewt-ud-train.iob2"]
    (tmp_path / "blob").write_bytes(body)
    monkeypatch.setitem(CATALOGUE, train.rel, Remote(train.rel, train.repo, train.commit, train.path, None,
                                                     git_blob=git_blob_id(tmp_path / "blob")))
    served = serve_mirror(handler, data_root)
    handler.files[url_path(train)] = body
    handler.cut_after[url_path(train)] = 40
    cache = tmp_path / "cache"
    exp_file = experiment(tmp_path, {"data": {"root": str(cache), "cache_dir": str(cache), "download_url": base},
                                     "corpus": {"sources": [{"type": "files", "paths": ["corpus/ud-train_English-EWT.txt"]}]},
                                     "finetune": {"enabled": False}})
    before = load_experiment(exp_file).runs[0]
    plan = experiment_plan(load_experiment(exp_file))
    assert not plan.problems and "will download 19 files" in plan.summary()
    out = io.StringIO()
    fetch(plan, out=out, backoff_s=0)
    log = out.getvalue()
    assert f"uner/English-EWT/en_ewt-ud-train.iob2 (size unknown) from {base}{url_path(train)}" in log
    assert "derived corpus/ud-train_English-EWT.txt" in log and "minus 1 equal to" in log
    assert handler.ranges.count("bytes=40-") == 1  # resumed, not restarted
    assert {p for p in handler.requests if p != url_path(train)} == {p for p, e in served.items()
                                                                     if e.rel in catalogue.EVAL_FILES}
    derived = cache / "corpus" / "ud-train_English-EWT.txt"
    assert derived.read_text(encoding="utf-8") == f"{texts[0]}\n{texts[2]}\n"
    record = json.loads(identity.derived_record(derived).read_text())
    assert record["sha256"] == sha(derived) and record["content_id"].startswith("derived:")
    after = load_experiment(exp_file).runs[0]
    assert (after.tok_id, after.hash) == (before.tok_id, before.hash)
    derived.write_text(f"{texts[0]}\n", encoding="utf-8")
    assert load_experiment(exp_file).runs[0].tok_id != before.tok_id


def test_fetch_checksum_mismatch_leaves_nothing_and_waits_for_the_lock(tmp_path, server, data_root):
    base, handler = server
    serve_mirror(handler, data_root)
    shakespeare = CATALOGUE["corpus/tinyshakespeare.txt"]
    handler.files[url_path(shakespeare)] = b"not the play\n"
    cache = tmp_path / "cache"
    exp_file = experiment(tmp_path, {"data": {"root": str(cache), "cache_dir": str(cache), "download_url": base},
                                     "corpus": {"sources": [{"type": "files", "paths": ["corpus/tinyshakespeare.txt"]}]},
                                     "finetune": {"enabled": False}})
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch(experiment_plan(load_experiment(exp_file)), out=io.StringIO(), backoff_s=0)
    assert sorted(p.name for p in (cache / "corpus").iterdir()) == []

    # A second fetch into the same cache waits for the first one's lock, then finds its work done.
    handler.files[url_path(shakespeare)] = (data_root / shakespeare.rel).read_bytes()
    import fcntl

    out = io.StringIO()
    with open(cache / LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=fetch, args=(experiment_plan(load_experiment(exp_file)),),
                                  kwargs={"out": out, "backoff_s": 0})
        worker.start()
        while "waiting for another fetch" not in out.getvalue():
            assert worker.is_alive()
            worker.join(0.01)
        assert not (cache / shakespeare.rel).exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join()
    assert sha(cache / shakespeare.rel) == shakespeare.sha256


# --- plan-time checks -------------------------------------------------------------------------------------

def test_validate_names_a_train_set_without_train_split_and_its_line(tmp_path, capsys, data_root):
    p = tmp_path / "e.yaml"
    p.write_text("experiment: t\ndefaults:\n  finetune:\n    train_sets:\n      - Danish-DDT\n      - English-EWT\n")
    assert cli(["grid", "validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}:6: finetune.train_sets: train set 'English-EWT' has no train split in {data_root / 'uner'}" in err
    assert "English-EWT has only dev, test" in err and "the download catalogue has it" in err
    # The DAG's first rule says the same, before any compute.
    assert cli(["data", "fetch", str(p), "--train-set", "English-EWT"]) == 2
    assert f"{p}:6: finetune.train_sets" in capsys.readouterr().err
    assert cli(["data", "fetch", str(p), "--train-set", "Danish-DDT"]) == 0
    assert "data: all 11 files present and checked" in capsys.readouterr().out  # Danish train/dev/test, 8 other tests


@pytest.mark.parametrize(("defaults", "needle", "line"), [
    ("  corpus:\n    sources:\n      - type: files\n        paths: [corpus/tinyshakespeare.txt, corpus/nope-*.txt]\n",
     "corpus.sources: pattern 'corpus/nope-*.txt' matches no file under", 6),
    ("  tokenizer: {kind: pretrained, path: tokenizers/missing.json}\n",
     "tokenizer.path: pretrained tokenizer", 3),
    ("  finetune: {extra_train: {English-EWT: uner_unofficial/English-EWT/absent.iob2}}\n",
     "finetune.extra_train: the extra train file of English-EWT", 3),
    ("  finetune: {data_dir: no-such-dir}\n", "finetune.data_dir: UNER directory", 3),
])
def test_validate_names_every_missing_file_with_key_and_line(tmp_path, capsys, data_root, defaults, needle, line):
    p = tmp_path / "e.yaml"
    p.write_text("experiment: t\ndefaults:\n" + defaults)
    assert cli(["grid", "validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}:{line}: {needle}" in err, err


def test_download_cache_plans_fetchable_files_and_rejects_unknown_sets(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("METAPRETRAIN_DATA", raising=False)
    monkeypatch.setenv("METAPRETRAIN_OFFLINE_MIRROR", str(tmp_path / "no-mirror"))
    cache = tmp_path / "cache"
    p = experiment(tmp_path, {"data": {"cache_dir": str(cache)}, "finetune": {"train_sets": ["Danish-DDT", "all"]}})
    assert cli(["grid", "validate", str(p)]) == 0
    out = capsys.readouterr().out
    assert f"data: 0 of 39 files present under {cache} (download cache)" in out
    assert "will download 30 files (28.9 MB + 1 of unknown size) from https://raw.githubusercontent.com" in out
    assert not cache.exists()  # planning writes nothing
    p = experiment(tmp_path, {"data": {"cache_dir": str(cache)}, "finetune": {"train_sets": ["Klingon-KDT"]}})
    assert cli(["data", "check", str(p)]) == 2
    assert "train set 'Klingon-KDT' has no train split" in capsys.readouterr().err


# --- identity by content ----------------------------------------------------------------------------------

def test_same_corpus_under_two_roots_gives_the_same_ids_and_an_edit_changes_them(tmp_path, data_root, small_corpus):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(small_corpus, a)
    shutil.copytree(small_corpus, b)
    grid = {"method": {"vanilla": {"meta.learner": "none"}, "fomaml": {"meta.learner": "fomaml"}}}
    corpus = {"sources": [{"type": "files", "paths": ["corpus/*.txt"]}]}

    def ids(root, name):
        e = load_experiment(experiment(tmp_path, {"data": {"root": str(root)}, "corpus": corpus}, name, grid))
        return [(r.run_id, r.hash, r.tok_id) for r in e.runs]

    assert ids(a, "a.yaml") == ids(b, "b.yaml")
    # The case: naming the very directory the default resolves to changes nothing.
    default = load_experiment(REPO / "config" / "config.yaml")
    named = load_experiment(REPO / "config" / "config.yaml", overrides={"data.root": str(data_root)})
    assert [(r.run_id, r.hash, r.tok_id) for r in default.runs] == [(r.run_id, r.hash, r.tok_id) for r in named.runs]

    f = b / "corpus" / "tinyshakespeare.txt"
    f.write_text(f.read_text(encoding="utf-8").replace("First", "Second", 1), encoding="utf-8")
    changed = ids(b, "b.yaml")
    assert all(x[1] != y[1] and x[2] != y[2] for x, y in zip(ids(a, "a.yaml"), changed, strict=True))


def test_large_file_sha256_is_remembered_across_processes(tmp_path, monkeypatch):
    f = tmp_path / "big.txt"
    f.write_text("some text\n")
    monkeypatch.setattr(identity, "PERSIST_MIN_BYTES", 1)
    identity.clear_memo()
    first = identity.file_sha256(f, tmp_path)
    assert json.loads((tmp_path / identity.INDEX_FILE).read_text())[str(f)][2] == first
    identity.clear_memo()  # a new process: only the index file remains

    def no_hashing(path):
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(identity, "sha256_file", no_hashing)
    assert identity.file_sha256(f, tmp_path) == first
    identity.clear_memo()


def test_missing_corpus_fails_the_grid_with_its_line(tmp_path, capsys):
    p = tmp_path / "e.yaml"
    p.write_text(f"experiment: t\ndefaults:\n  data: {{root: {tmp_path}}}\n  corpus:\n    sources:\n"
                 "      - {type: files, paths: [corpus/x.txt]}\n")
    with pytest.raises(DataError) as exc:
        load_experiment(p)
    assert (exc.value.file, exc.value.line, exc.value.key) == (str(p), 6, "corpus.sources")
    assert cli(["grid", "show", str(p)]) == 2
    assert f"{p}:6: corpus.sources: pattern 'corpus/x.txt' matches no file under {tmp_path} (data.root)" in \
        capsys.readouterr().err


# --- a fresh machine: no mirror, only the local fixture server --------------------------------------------

@pytest.mark.slow
def test_default_grid_tokenize_and_one_finetune_from_the_fixture_server(tmp_path, server, data_root):
    """The default grid on a machine without the mirror: `snakemake` fetches everything it needs from the
    server (the mirror hidden, $METAPRETRAIN_DOWNLOAD_URL naming the server), then tokenizes and fine-tunes.

    English: the UNER English-EWT train file is missing from the mirror, so no fixture with its real git blob
    can exist; the test pre-places the one corpus file made from it (the mirror's ud-train_English-EWT.txt) in
    the cache, and asserts that every other file came from the server, each once, byte-identical to the mirror.
    (test_fetch_verifies_a_git_blob_download_resumes_it_and_derives_english covers that download and derivation.)
    Because identity is by content, the tokenize id is the one the default grid has on the mirror.
    """
    base, handler = server
    served = serve_mirror(handler, data_root)
    cache = tmp_path / "cache"
    (cache / "corpus").mkdir(parents=True)
    shutil.copy(data_root / "corpus" / "ud-train_English-EWT.txt", cache / "corpus")
    mirror_tok = load_experiment(REPO / "config" / "config.yaml").runs[0].tok_id
    env = {k: v for k, v in os.environ.items() if k != "METAPRETRAIN_DATA"}
    env.update(METAPRETRAIN_OFFLINE_MIRROR=str(tmp_path / "no-mirror"), METAPRETRAIN_DOWNLOAD_URL=base,
               WANDB_MODE="disabled", PATH=f"{BIN}:{os.environ['PATH']}")
    quick = (f"data.cache_dir={cache} train.budget.value=20 train.eval_every=10 train.checkpoint.every=10 "
             "train.checkpoint.log_spaced=0 finetune.epochs=1 finetune.max_train_sentences=200 "
             "finetune.max_eval_sentences=40")
    run = tmp_path / "results" / "demo" / "runs" / "method~vanilla"
    target = run / "finetune" / "Danish-DDT~head" / "done.json"
    proc = subprocess.run([str(BIN / "snakemake"), str(target.relative_to(tmp_path)), "--cores", "2", "-s", str(REPO / "Snakefile"),
                           "-d", str(tmp_path), "--configfile", str(REPO / "config" / "config.yaml"),
                           "--config", f"set={quick}"], capture_output=True, text=True, timeout=1200, env=env)
    exp = tmp_path / "results" / "demo"
    logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in exp.rglob("*.log"))
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n{logs}"

    assert sorted(handler.requests) == sorted(served) and not any(handler.ranges)  # each file once, whole
    english_train = url_path(CATALOGUE["uner/English-EWT/en_ewt-ud-train.iob2"])
    assert english_train not in handler.requests and not (cache / "uner/English-EWT/en_ewt-ud-train.iob2").exists()
    for rel in [e.rel for e in served.values()] + [f"corpus/ud-train_{tb}.txt" for tb in catalogue.treebanks()]:
        assert sha(cache / rel) == sha(data_root / rel), rel
    data_log = (exp / "logs" / "data" / "tokenize" / f"{mirror_tok}.log").read_text()
    assert f"from {base}/karpathy/char-rnn/" in data_log and "derived corpus/ud-train_Danish-DDT.txt" in data_log
    assert (exp / "tokenize" / mirror_tok / "done.json").is_file()
    results = (run / "finetune" / "Danish-DDT~head" / "results.csv").read_text().splitlines()
    assert {row.split(",")[4] for row in results[1:]} == set(catalogue.treebanks())
    assert json.loads(target.read_text())["data_dir"] == str(cache / "uner")

"""The paper's UNER evaluation protocol: eval groups, F1 modes, tables M-T-1/2/4, all 18 sets in the catalogue."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from metapretrain.config.errors import ConfigError
from metapretrain.data.uner import DEFAULT_EVAL_GROUPS, UNGROUPED, absent_members, eval_group, eval_group_problems
from metapretrain.finetune.evaluate import score

IN_LANG = DEFAULT_EVAL_GROUPS["in_language"]
PUD = DEFAULT_EVAL_GROUPS["pud"]
OTHER = DEFAULT_EVAL_GROUPS["other"]


# --- eval groups ----------------------------------------------------------------------------------------

def test_default_groups_are_the_papers_18_sets():
    assert (len(IN_LANG), len(PUD), len(OTHER)) == (9, 6, 3)
    assert len(set(IN_LANG) | set(PUD) | set(OTHER)) == 18
    from metapretrain.config.load import run_config_from_dict

    assert run_config_from_dict({}).finetune.eval_groups == DEFAULT_EVAL_GROUPS
    assert run_config_from_dict({}).finetune.f1_mode == "strict"


def test_eval_group_names_globs_and_ungrouped():
    groups = {"pud": ["*-PUD"], "tagalog": ["Tagalog-*"], "danish": ["Danish-DDT"]}
    assert eval_group("German-PUD", groups) == "pud"
    assert eval_group("Tagalog-Ugnayan", groups) == "tagalog"
    assert eval_group("Danish-DDT", groups) == "danish"
    assert eval_group("Cebuano-GJA", groups) == UNGROUPED
    assert eval_group("all", DEFAULT_EVAL_GROUPS) == UNGROUPED  # the dev row of an `all` fine-tune
    # the first group naming a set wins
    assert eval_group("English-PUD", {"a": ["English-*"], "b": ["*-PUD"]}) == "a"
    assert absent_members({"pud": ["*-PUD", "Nope-X"], "x": ["Danish-DDT"]}, ["German-PUD", "Danish-DDT"]) == \
        {"pud": ["Nope-X"]}
    assert absent_members({"pud": ["*-PUD"]}, ["Danish-DDT"]) == {"pud": ["*-PUD"]}


@pytest.mark.parametrize("groups, key, needle", [
    ({"pud": []}, "finetune.eval_groups.pud", "empty"),
    ({"pud": ["German-PUD", "German-PUD"]}, "finetune.eval_groups.pud", "more than once"),
    ({"a": ["Danish-DDT"], "b": ["Danish-DDT"]}, "finetune.eval_groups.b", "listed by eval groups 'a' and 'b'"),
    ({UNGROUPED: ["Danish-DDT"]}, f"finetune.eval_groups.{UNGROUPED}", "rename"),
])
def test_bad_eval_groups_are_config_errors_naming_the_key(groups, key, needle):
    from metapretrain.config.schema import fill_defaults
    from metapretrain.config.semantics import check

    assert [k for k, _ in eval_group_problems(groups)] == [key]
    with pytest.raises(ConfigError) as exc:
        check(fill_defaults({"finetune": {"eval_groups": groups}}))
    assert exc.value.key == key and needle in str(exc.value)


def test_absent_group_member_is_fine_in_the_config():
    from metapretrain.config.schema import fill_defaults
    from metapretrain.config.semantics import check

    check(fill_defaults({"finetune": {"eval_groups": {"x": ["No-Such-Treebank"]}}}))


# --- F1 modes -------------------------------------------------------------------------------------------

def test_f1_mode_strict_and_default_differ_on_an_i_tag_after_o():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC"]]  # PER begins with I-: strict finds no PER, default finds it
    strict, default = score(gold, pred, mode="strict"), score(gold, pred, mode="default")
    assert (strict["micro_precision"], strict["micro_recall"]) == (1.0, 0.5)
    assert strict["micro_f1"] == pytest.approx(2 / 3)
    assert default["micro_f1"] == 1.0 and default["PER_f1"] == 1.0 and strict["PER_f1"] == 0.0
    with pytest.raises(ValueError, match="f1 mode"):
        score(gold, pred, mode="lenient")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_default_mode_equals_seqeval_default():
    import random

    metrics = pytest.importorskip("seqeval.metrics")
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    rng = random.Random(1)
    for _ in range(200):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 4))]
        pred = [[rng.choice(tags) for _ in g] for g in gold]
        ours = score(gold, pred, mode="default")
        assert ours["micro_f1"] == pytest.approx(metrics.f1_score(gold, pred, zero_division=0), abs=1e-12)
        report = metrics.classification_report(gold, pred, output_dict=True, zero_division=0)
        for kind, row in report.items():
            if not kind.endswith("avg"):
                assert ours[f"{kind}_f1"] == pytest.approx(row["f1-score"], abs=1e-12)


# --- results rows ---------------------------------------------------------------------------------------

def _evaluate(monkeypatch, tests: dict, preds: dict, f1_mode="strict", groups=None):
    """stage.evaluate on fixture eval sets: `tests` {set: gold tag lists}, `preds` the predictions."""
    from pathlib import Path

    from metapretrain.finetune import stage, train

    class Src:
        def __init__(self, name):
            self.name = name
            self.items = [SimpleNamespace(gold=g) for g in tests[name]]

    monkeypatch.setattr(train, "predict", lambda clf, src, names, bs: preds[src.name])
    model = SimpleNamespace(clf=None, names=[], source=lambda sents, bs, cache: Src(sents))
    treebanks = {tb: {"test": Path(tb)} for tb in tests} | {"Danish-DDT": {"train": "x", "test": "y"}}
    data = SimpleNamespace(sources=["Danish-DDT"], treebanks=treebanks, tests={tb: tb for tb in tests},
                           uner_dir=Path("uner"))
    ft = SimpleNamespace(batch_size=4, labels=["PER", "ORG", "LOC"], f1_mode=f1_mode,
                         eval_groups=DEFAULT_EVAL_GROUPS if groups is None else groups)
    rows = stage.evaluate(model, data, None, ft, "Danish-DDT", "head", "run", "{}")
    return [dict(zip(stage.RESULT_COLUMNS, r, strict=True)) for r in rows]


def test_every_row_has_its_eval_group_and_f1_mode(monkeypatch, capsys):
    gold = {"Danish-DDT": [["B-PER", "I-PER"]], "German-PUD": [["B-LOC", "O"]], "Tagalog-TRG": [["B-ORG"]],
            "Klingon-X": [["B-PER"]]}
    pred = {"Danish-DDT": [["B-PER", "I-PER"]], "German-PUD": [["I-LOC", "O"]], "Tagalog-TRG": [["O"]],
            "Klingon-X": [["B-PER"]]}
    rows = _evaluate(monkeypatch, gold, pred)
    f1 = {r["eval_set"]: (r["eval_group"], r["f1_mode"], r["value"]) for r in rows if r["metric"] == "micro_f1"}
    assert f1 == {"Danish-DDT": ("in_language", "strict", 1.0), "German-PUD": ("pud", "strict", 0.0),
                  "Tagalog-TRG": ("other", "strict", 0.0), "Klingon-X": (UNGROUPED, "strict", 1.0)}
    assert {r["eval_kind"] for r in rows if r["eval_set"] == "German-PUD"} == {"test_only"}
    out = capsys.readouterr().out
    assert "eval group pud: not in uner: English-PUD, Portuguese-PUD" in out  # absent sets: reported only
    rows = _evaluate(monkeypatch, gold, pred, f1_mode="default")
    f1 = {r["eval_set"]: (r["f1_mode"], r["value"]) for r in rows if r["metric"] == "micro_f1"}
    assert f1["German-PUD"] == ("default", 1.0)


def test_ner_table_reads_old_results_files_and_shows_group_means(tmp_path):
    import csv

    from metapretrain.finetune import table
    from metapretrain.finetune.stage import RESULT_COLUMNS

    old = table.OLD_RESULT_COLUMNS
    assert [*old, "eval_group", "f1_mode"] == RESULT_COLUMNS
    d = tmp_path / "runs" / "r" / "finetune" / "Danish-DDT~head"
    d.mkdir(parents=True)
    (d / "done.json").write_text("{}")
    vals = {"Danish-DDT": 0.8, "German-PUD": 0.4, "English-PUD": 0.2, "Tagalog-TRG": 0.1}
    with open(d / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(old)
        for ev, v in vals.items():
            w.writerow(["r", "{}", "Danish-DDT", "head", ev, "test", "x", "micro_f1", v])
    rows, pending = table.collect(tmp_path)
    assert not pending and {r["f1_mode"] for r in rows} == {"strict"} and {r["eval_group"] for r in rows} == {""}
    md = table.markdown(rows)
    head, _, line = md.strip().splitlines()[-3:]
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in line.split("|")], strict=True))
    assert (cells["group in_language"], cells["group pud"], cells["group other"]) == ("80.0", "30.0", "10.0")
    assert "seqeval strict IOB2" in md


# --- figures: groups in ner.py, tables M-T-1..M-T-4 ---------------------------------------------------------

BASE = {"Danish-DDT": 0.6, "English-EWT": 0.4, "German-PUD": 0.3, "Tagalog-TRG": 0.1, "Cebuano-GJA": 0.2,
        "Klingon-X": 0.9}  # Klingon-X is in no group
TRAIN = {"Danish-DDT": 0.0, "all": 0.05}
SEED = {1: 0.0, 2: 0.02}
METHOD = {"vanilla": 0.0, "fomaml": 0.1}
T_975_1 = 12.706204736174707  # Student t, 97.5% quantile, 1 degree of freedom


def protocol_data(train_sets=("Danish-DDT", "all"), eval_group_column=True):
    import pandas as pd

    from metapretrain.figures.load import ExperimentData, RunData
    from metapretrain.figures.pairing import design

    runs, rows = [], []
    for seed in SEED:
        for method, learner in (("vanilla", "none"), ("fomaml", "fomaml")):
            rid = f"method~{method}/seed~{seed}"
            runs.append(RunData(rid, {"method": method, "seed": str(seed)},
                                {"meta": {"learner": learner}, "model": {"preset": "micro"}}, None))
            for regime, bump in (("head", 0.0), ("full", 0.1)):
                for tr in train_sets:
                    for ev, base in BASE.items():
                        v = base + TRAIN[tr] + SEED[seed] + METHOD[method] + bump
                        for metric, dv in (("micro_f1", 0.0), ("PER_f1", 0.01), ("LOC_f1", -0.01)):
                            row = {"pretrain_run": rid, "train_set": tr, "regime": regime, "eval_set": ev,
                                   "eval_split": "test", "eval_kind": "x", "metric": metric, "value": v + dv,
                                   "f1_mode": "default"}
                            if eval_group_column:
                                row["eval_group"] = eval_group(ev, DEFAULT_EVAL_GROUPS)
                            rows.append(row)
    data = ExperimentData(exp_dir=None, name="t", axes=["method", "seed"], runs=runs, ner=pd.DataFrame(rows))
    return data, design(runs, ["method", "seed"], ["seed"])


def _cell(table, method, regime="head", **keys):
    sel = table[(table["method"] == method) & (table["regime"] == regime)]
    for k, v in keys.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1
    return sel.iloc[0]


@pytest.mark.parametrize("eval_group_column", [True, False])  # without the column: default groups by name
def test_mt1_group_means_hand_computed(eval_group_column):
    from metapretrain.figures import ner, ner_protocol

    data, d = protocol_data(eval_group_column=eval_group_column)
    t1 = ner_protocol.mt1_summary(ner.finals(ner.prepare(data.ner)), d)
    v = _cell(t1, "vanilla")
    # per run: mean over the train sets (Danish-DDT +0, all +0.05) of the group means; cell: over seeds (+0, +0.02)
    assert (v["In-Lang"], v["PUD"], v["Other"], v["Mean"]) == pytest.approx((0.535, 0.335, 0.185, 0.355))
    assert v["n"] == 2 and v["In-Lang n"] == 2
    assert (v["PUD lo"], v["PUD hi"]) == pytest.approx((0.335 - T_975_1 * 0.01, 0.335 + T_975_1 * 0.01))
    f = _cell(t1, "fomaml", "full")
    assert (f["In-Lang"], f["PUD"], f["Other"], f["Mean"]) == pytest.approx((0.735, 0.535, 0.385, 0.555))
    assert "ungrouped" not in t1.columns and "Klingon-X" not in t1.columns


def test_mt4_zero_shot_on_other_after_all_hand_computed():
    from metapretrain.figures import ner, ner_protocol

    data, d = protocol_data()
    t4 = ner_protocol.mt4_zero_shot(ner.finals(ner.prepare(data.ner)), d)
    v = _cell(t4, "vanilla")
    assert (v["overall"], v["Cebuano-GJA"], v["Tagalog-TRG"]) == pytest.approx((0.21, 0.26, 0.16))
    f = _cell(t4, "fomaml", "full")
    assert (f["overall"], f["Cebuano-GJA"], f["Tagalog-TRG"]) == pytest.approx((0.41, 0.46, 0.36))
    assert "German-PUD" not in t4.columns
    t2 = ner_protocol.mt2_diagonal(ner.finals(ner.prepare(data.ner)), d)
    assert _cell(t2, "vanilla")["Danish-DDT"] == pytest.approx(0.61)
    t3 = ner_protocol.mt3_per_tag(ner.finals(ner.prepare(data.ner)), d)
    assert _cell(t3, "fomaml", entity="PER")["Danish-DDT"] == pytest.approx(0.72)
    assert _cell(t3, "fomaml", entity="LOC")["Mean"] == pytest.approx(0.70)


def test_ner_summary_and_delta_get_group_columns_and_scopes():
    from metapretrain.figures import ner

    data, d = protocol_data()
    summary = ner.summary_table(data, d)
    row = summary[summary["run_id"] == "method~vanilla/seed~1"].iloc[0]
    assert (row["head In-Lang"], row["head PUD"], row["head Other"]) == pytest.approx((0.525, 0.325, 0.175))
    assert row["head ungrouped"] == pytest.approx(0.925)
    deltas = ner.delta_table(data, d)
    micro = deltas[deltas["entity"] == "micro"]
    assert {"all", "group:in_language", "group:pud", "group:other", "group:ungrouped"} <= \
        set(micro["scope"])
    assert micro.loc[micro["scope"] == "group:pud", "delta_f1"].tolist() == pytest.approx([0.1] * 4)
    assert micro.loc[micro["scope"] == "group:pud", "n_pairs"].tolist() == [2] * 4  # 2 train sets per regime


def test_protocol_tables_are_written_with_the_f1_mode_or_skipped(tmp_path):
    from metapretrain.figures import ner_protocol
    from metapretrain.figures.outputs import Outputs

    data, d = protocol_data()
    out = Outputs(root=tmp_path / "figures", exp_dir=tmp_path, formats=("png",))
    out.prepare()
    ner_protocol.render(data, d, out)
    for name in ("ner_mt1_summary", "ner_mt2_diagonal", "ner_mt3_per_tag", "ner_mt4_zero_shot"):
        md = (tmp_path / "figures" / "tables" / f"{name}.md").read_text()
        assert "F1 mode: seqeval default mode" in md.splitlines()[0], name
    assert data.skipped == []
    data, d = protocol_data(train_sets=("Danish-DDT",))  # no fine-tune on `all`: M-T-4 cannot be made
    ner_protocol.render(data, d, out)
    assert len(data.skipped) == 1 and data.skipped[0].startswith("M-T-4")
    data.ner = None
    ner_protocol.render(data, d, out)
    assert data.skipped[-1].startswith("NER protocol tables")


# --- the downloader knows all 18 sets; trust on first use ---------------------------------------------------

def test_catalogue_lists_the_nine_test_only_sets_by_pin():
    from metapretrain.data import catalogue

    tests = {f.rel.split("/")[1] for f in catalogue.UNER_ALL if f.rel.endswith("-test.iob2")}
    assert tests == set(IN_LANG) | set(PUD) | set(OTHER)  # the 18 eval sets of every default group
    for f in catalogue.UNER_TEST_ONLY:
        assert not f.pinned and len(f.commit) == 40 and f.repo == f"UniversalNER/UNER_{f.rel.split('/')[1]}"
        assert f.content_id == f"pin:{f.repo}@{f.commit}:{f.path}"
        assert f.rel not in catalogue.CATALOGUE  # grids never plan a file without a checksum
    assert not set(catalogue.EVAL_FILES) & {f.rel for f in catalogue.UNER_TEST_ONLY}  # derivations unchanged


def test_tofu_records_the_first_download_and_refuses_a_changed_file(tmp_path):
    import hashlib
    import http.server
    import threading

    from metapretrain.data.catalogue import Remote
    from metapretrain.data.download import TOFU_RECORD, DownloadError, download_uner

    served: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = served.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        f = Remote("uner/Tagalog-TRG/tl_trg-ud-test.iob2", "UniversalNER/UNER_Tagalog-TRG", "c" * 40,
                   "tl_trg-ud-test.iob2", None)
        first = b"# sent_id = 1\n1\tSi\tO\t-\t-\n2\tMaria\tB-PER\t-\tx\n\n"
        served[f"/UniversalNER/UNER_Tagalog-TRG/{'c' * 40}/tl_trg-ud-test.iob2"] = first
        [path] = download_uner(tmp_path / "uner", files=[f], base=base)
        assert path.read_bytes() == first
        record = json.loads((tmp_path / "uner" / TOFU_RECORD).read_text())
        assert record[f.content_id]["sha256"] == hashlib.sha256(first).hexdigest()
        path.unlink()
        download_uner(tmp_path / "uner", files=[f], base=base)  # unchanged upstream: accepted again
        assert path.read_bytes() == first
        path.unlink()
        served[f"/UniversalNER/UNER_Tagalog-TRG/{'c' * 40}/tl_trg-ud-test.iob2"] = first.replace(b"B-PER", b"O")
        with pytest.raises(DownloadError, match="refused: the file differs from the one first downloaded") as exc:
            download_uner(tmp_path / "uner", files=[f], base=base)
        assert f.content_id in str(exc.value) and TOFU_RECORD in str(exc.value)
        assert not path.exists() and list(path.parent.iterdir()) == []  # nothing left behind
        assert json.loads((tmp_path / "uner" / TOFU_RECORD).read_text()) == record  # the record is kept
    finally:
        httpd.shutdown()
        httpd.server_close()

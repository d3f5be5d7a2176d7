"""The paper's UNER evaluation protocol: eval groups, F1 modes, tables M-T-1/2/4, all 18 sets in the catalogue."""

from __future__ import annotations

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

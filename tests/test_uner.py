"""UNER reader, discovery and stats CLI (the downloader is tested in test_data.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metapretrain.data import uner_cli
from metapretrain.data.uner import UnerFormatError, discover, evaluation_only, read_file, read_iob2, stats

GOOD = (
    "# sent_id = s1\n# text = Anna bor i Paris\n"
    "1\tAnna\tB-PER\t-\tx\n2\tbor\tO\t-\t-\n3\ti\tO\t-\t-\n4\tParis\tB-LOC\t-\tx\n\n"
    "# sent_id = s2\n# text = Den franske Pierre Dupont\n"
    "1\tDen\tO\t-\t-\n2\tfranske\tB-OTH\tB-PER\t-\n3\tPierre\tI-PER\tI-PER\t-\n4\tDupont\tI-PER\tI-PER\t-\n\n"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_sentences_maps_oth_and_repairs_the_broken_span(tmp_path):
    f = write(tmp_path / "x-ud-dev.iob2", GOOD)
    sents, rep = read_iob2(f)
    assert [s.words for s in sents] == [("Anna", "bor", "i", "Paris"), ("Den", "franske", "Pierre", "Dupont")]
    assert sents[0].tags == ("B-PER", "O", "O", "B-LOC")
    # OTH → O leaves "I-PER" after "O": repaired to B-PER as conlleval does, and reported with its line.
    assert sents[1].tags == ("O", "O", "B-PER", "I-PER")
    assert sents[1].sent_id == "s2" and sents[1].line == 10
    assert rep.mapped_to_o == {"OTH": 1}
    assert rep.repairs == [(12, "I-PER", "O")]
    assert dict(rep.entities) == {"PER": 2, "LOC": 1}
    assert (rep.sentences, rep.tokens) == (2, 8)


def test_oth_kept_when_configured_and_error_policy_raises(tmp_path):
    f = write(tmp_path / "x-ud-dev.iob2", GOOD)
    sents, rep = read_iob2(f, labels=["PER", "LOC", "ORG", "OTH"])
    assert sents[1].tags == ("O", "B-OTH", "B-PER", "I-PER")  # I-PER after B-OTH is still repaired
    assert rep.mapped_to_o == {} and rep.entities["OTH"] == 1 and rep.repairs == [(12, "I-PER", "B-OTH")]
    with pytest.raises(UnerFormatError, match=r"x-ud-dev\.iob2:12: I-PER after O"):
        read_iob2(f, invalid_transition="error")


@pytest.mark.parametrize("text, line, what", [
    ("1\tA\tO\t-\n\n", 1, "expected 5 tab-separated columns, found 4"),
    ("1\tA\tO\t-\t-\n2\tB\tO\t-\t-\t-\n\n", 2, "found 6"),
    ("1\tA\tO\t-\t-\n3\tB\tO\t-\t-\n\n", 2, "token id '3' does not follow"),
    ("# text = a\n2\tA\tO\t-\t-\n\n", 2, "token id '2'"),
    ("1\tA\tO\t-\t-\n2\tB\tB-PERSON1\t-\t-\n\n", 2, "unknown tag 'B-PERSON1'"),
    ("1\tA\tO\t-\t-\n2\tB\tX-PER\t-\t-\n\n", 2, "unknown tag"),
    ("1\tA\tO\t-\t-\n# text = b\n\n", 2, "comment line inside a sentence"),
    ("1\tA\tO\t-\t-\n\n1\tB\tO\t-\t-\n", 3, "not followed by a blank line"),
    ("1\tA\tO\t-\t-\n\n1\tB\tO\t-\t-", 3, "no newline at the end"),
])
def test_each_malformed_line_names_file_and_line(tmp_path, text, line, what):
    f = write(tmp_path / "bad-ud-test.iob2", text)
    with pytest.raises(UnerFormatError) as exc:
        read_iob2(f)
    assert str(exc.value).startswith(f"{f}:{line}: ")
    assert what in str(exc.value)


def test_short_o_lines_only_when_allowed(tmp_path):
    f = write(tmp_path / "en-ud-train.iob2", "1\tA\tO\n2\tB\tB-PER\t-\tx\n3\t.\tB-O\t-\tx\n\n")
    with pytest.raises(UnerFormatError, match=":1: expected 5"):
        read_iob2(f)
    sents, rep = read_iob2(f, allow_short_o=True)
    assert sents[0].tags == ("O", "B-PER", "O")  # the stand-in's junk B-O maps to O
    assert rep.mapped_to_o == {"O": 1}


def fixture_dir(root: Path) -> Path:
    for tb, code, splits in (("Danish-DDT", "da_ddt", ("train", "dev", "test")), ("Tagalog-TRG", "tl_trg", ("test",)),
                             ("English-EWT", "en_ewt", ("dev", "test"))):
        for split in splits:
            write(root / tb / f"{code}-ud-{split}.iob2", GOOD)
    write(root / "Danish-DDT" / "README.md", "not data")
    return root


def test_discovery_finds_every_split_and_test_only_sets(tmp_path):
    tbs = discover(fixture_dir(tmp_path / "uner"))
    assert list(tbs) == ["Danish-DDT", "English-EWT", "Tagalog-TRG"]
    assert set(tbs["Danish-DDT"]) == {"train", "dev", "test"}
    assert evaluation_only(tbs) == ["Tagalog-TRG"]
    extra = write(tmp_path / "unofficial" / "en.iob2", "1\tA\tO\n\n")
    tbs = discover(tmp_path / "uner", extra_train={"English-EWT": extra})
    assert tbs["English-EWT"]["train"].official is False
    with pytest.raises(UnerFormatError, match="already has an official train split"):
        discover(tmp_path / "uner", extra_train={"Danish-DDT": extra})


def test_discovery_rejects_unknown_split_names(tmp_path):
    write(tmp_path / "X" / "x-ud-validation.iob2", GOOD)
    with pytest.raises(UnerFormatError, match="cannot tell the split"):
        discover(tmp_path)


def test_stats_cli_json(tmp_path, capsys):
    root = fixture_dir(tmp_path / "uner")
    assert uner_cli.main(["stats", str(root), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 6
    r = next(r for r in records if r["treebank"] == "Tagalog-TRG")
    assert (r["split"], r["sentences"], r["tokens"], r["entities"], r["mapped_to_O"], r["repairs"]) == \
        ("test", 2, 8, {"LOC": 1, "PER": 2}, {"OTH": 1}, 1)
    write(root / "Tagalog-TRG" / "tl_trg-ud-test.iob2", "1\tA\tO\n\n")
    assert uner_cli.main(["stats", str(root)]) == 1
    assert "tl_trg-ud-test.iob2:1:" in capsys.readouterr().err


def _stats_file(path: Path) -> dict | None:
    f = path.with_suffix(".stats")
    return json.loads(f.read_text()) if f.is_file() else None


def test_real_files_match_the_shipped_stats_and_readme(data_root):
    uner = data_root / "uner"
    if not uner.is_dir():
        pytest.skip("no UNER data in the mirror")
    records = {(r["treebank"], r["split"]): r for r in stats(uner)}
    checked = 0
    for r in records.values():
        ref = _stats_file(Path(r["file"]))
        if ref is None:
            continue
        assert (r["sentences"], r["tokens"]) == (ref["num_sentences"], ref["num_tokens"]), r["file"]
        assert r["entities"] == ref["label_distribution"], r["file"]
        checked += 1
    assert checked >= 15
    # Files without .stats: the README's table (OTH mapped to O, the README's 12 repairs).
    hr = records[("Croatian-SET", "dev")]
    assert (hr["sentences"], hr["tokens"], hr["entities"], hr["mapped_to_O"]) == \
        (960, 22292, {"LOC": 395, "ORG": 424, "PER": 400}, {"OTH": 154})
    assert [x["line"] for x in hr["repaired_lines"]] == [6707]
    da = records[("Danish-DDT", "train")]
    assert [x["line"] for x in da["repaired_lines"]] == [55941, 62672, 70872, 84305, 84777, 85286]
    assert sum(r["repairs"] for r in records.values()) == 12
    assert evaluation_only(discover(uner)) == []  # the mirror keeps the test-only sets out


def test_unofficial_english_stand_in_reads_only_when_passed_explicitly(data_root):
    f = data_root / "uner_unofficial" / "English-EWT" / "en_ewt-ud-train.first-commit-0c7ce0d.iob2"
    if not f.is_file():
        pytest.skip("no unofficial English-EWT file")
    tbs = discover(data_root / "uner", extra_train={"English-EWT": f})
    sents, rep = read_file(tbs["English-EWT"]["train"])
    # NOTE.md: 12,543 sentences, 204,579 tokens; PER 2,873 / LOC 2,698 / ORG 1,434 after OTH and B-O map to O.
    assert (rep.sentences, rep.tokens) == (12_543, 204_579)
    assert dict(rep.entities) == {"PER": 2_873, "LOC": 2_698, "ORG": 1_434}
    assert rep.mapped_to_o == {"OTH": 888, "O": 540} and rep.repairs == []
    assert "train" not in discover(data_root / "uner")["English-EWT"]

"""The catalogue of remote data: every file a grid can need that is not shipped, where it comes from, its checksum.

Paths are relative to the data root and use the offline mirror's layout
(../shared/data): `uner/<Language-Treebank>/<file>.iob2` and `corpus/<file>.txt`.
Two kinds of entry:

* `Remote`: a file of a public GitHub repository at a pinned commit, fetched from
  `<base>/<owner>/<repo>/<commit>/<path>`; `base` is https://raw.githubusercontent.com
  unless `data.download_url` or `$METAPRETRAIN_DOWNLOAD_URL` names a mirror laid out the same way.
  Checked by sha256 (as published with the offline mirror), or by git blob id where only that is known.
* `Derived`: `corpus/ud-train_<TB>.txt`, made here from the UNER train file of the same
  treebank (`data.derive`: its `# text` lines, minus every line equal to a UNER dev or test
  sentence once whitespace is deleted), exactly as the mirror's files were made. Rebuilt
  from the mirror's own UNER files, the eight non-English files are byte-identical to the
  mirror's, so their sha256 is pinned. English is not pinned: the mirror's English text came
  from UD_English-EWT's per-document sources at a later UD commit (some sentences were edited
  since the commit UNER used), and the UNER English train file it would be derived from here
  is the one file the mirror lacks (only its git blob id is known), so its output could never
  be checked; it is verified through its source's git blob instead.

A file's `content_id` is what a run's identity uses for it before it exists locally:
its sha256 where known, else an id of how it is made from checksummed inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from fnmatch import fnmatchcase

GITHUB_RAW = "https://raw.githubusercontent.com"
DERIVE_RULE = "uner-text-minus-eval-v1"


@dataclass(frozen=True)
class Remote:
    rel: str  # path under the data root
    repo: str  # owner/name on GitHub
    commit: str
    path: str  # path inside the repository
    size: int | None
    sha256: str | None = None
    git_blob: str | None = None

    def url(self, base: str | None = None) -> str:
        return f"{(base or GITHUB_RAW).rstrip('/')}/{self.repo}/{self.commit}/{self.path}"

    @property
    def content_id(self) -> str:
        if self.sha256 or self.git_blob:
            return self.sha256 or f"git-blob:{self.git_blob}"
        return f"pin:{self.repo}@{self.commit}:{self.path}"  # trust on first use (no checksum known yet)

    @property
    def pinned(self) -> bool:
        """Whether a checksum is known; without one a download is checked by trust on first use."""
        return bool(self.sha256 or self.git_blob)


@dataclass(frozen=True)
class Derived:
    rel: str
    source: str  # rel of the UNER train file whose `# text` lines it holds
    size: int | None
    sha256: str | None = None

    @property
    def exclude(self) -> tuple[str, ...]:
        """The UNER dev and test files whose sentences are removed (every official set)."""
        return EVAL_FILES

    @property
    def content_id(self) -> str:
        if self.sha256:
            return self.sha256
        recipe = {"rule": DERIVE_RULE, "source": CATALOGUE[self.source].content_id,
                  "exclude": [CATALOGUE[r].content_id for r in self.exclude]}
        return "derived:" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


Entry = Remote | Derived

# Commits of the UNER v1 snapshot the offline mirror was copied from (mirror README §1).
UNER_COMMITS = {
    "Chinese-GSD": "2a0c196d7a54d41119fd069874e976a58f0d7dad",
    "Chinese-GSDSIMP": "1f0307599dece7b83f4cba90ce9b63ef37a7b162",
    "Croatian-SET": "20dcb2ef6b6bf9d5e03605a74c4d87215a1574c1",
    "Danish-DDT": "983c4cdc09f8ece6069d2b692b60dc4b3649ec6e",
    "English-EWT": "8ed072de2fd24022cc62458997fe96a8fe191ea4",
    "Portuguese-Bosque": "f2c2ad67aed900385fbe5d655af41f439c9b3333",
    "Serbian-SET": "0d9685f001c10895572d844ef789c53dade0e265",
    "Slovak-SNK": "886e7c6d7e066e23246af5070d115a036a465c6d",
    "Swedish-Talbanken": "dbb692085267da83a35d1e1d2c111671b3c7c46b",
}

# (treebank, file, bytes, sha256) from the mirror's checksum table (README §6).
_UNER = [
    ("Chinese-GSD", "zh_gsd-ud-dev.iob2", 270_693, "0f8d7159545f257548aa4290302fb474c026ee0e1e61b3536ceb858893e3a1f1"),
    ("Chinese-GSD", "zh_gsd-ud-test.iob2", 255_399, "6f6ee9bf4e984bb5bcdaa5b88e88cabe245d750128cc424dcb1a1394e47443a2"),
    ("Chinese-GSD", "zh_gsd-ud-train.iob2", 2_088_774, "b9ed49a5abd6b9a74001ed0f08cbd54908129b88a42ecd50ae9cf6cef7c177c1"),
    ("Chinese-GSDSIMP", "zh_gsdsimp-ud-dev.iob2", 267_445, "8aeab3ac662468e258a65f887844c50cee8311cb080b60a421ff7aa8a05e8032"),
    ("Chinese-GSDSIMP", "zh_gsdsimp-ud-test.iob2", 255_351, "f1d8faa790d914fe01a24627874c8e7fad9c40b54742f5aefab5ba3f7c8edede"),
    ("Chinese-GSDSIMP", "zh_gsdsimp-ud-train.iob2", 2_088_494, "a03b5260c3d960aa711ff5f12b797de5c7d7f412563593c173cd0e7135001db5"),
    ("Croatian-SET", "hr_set-ud-dev.iob2", 514_304, "4a5b48b5b419dc3eea33ae0724c4958d6005c18523c0397cb76779e7c9eab215"),
    ("Croatian-SET", "hr_set-ud-test.iob2", 564_539, "91e7c45723d5f1a40a79f0299d165aa14dd90f67519ba18a45aaf940d749899f"),
    ("Croatian-SET", "hr_set-ud-train.iob2", 3_541_419, "623ffe75ff9fe19254e13eb0901cd4b5aa48094b2340ba3858753a7c8f1034b3"),
    ("Danish-DDT", "da_ddt-ud-dev.iob2", 244_882, "3049c10b8523323de5eea5552213f09ef906656775dd8ecaafd95debc5697a0a"),
    ("Danish-DDT", "da_ddt-ud-test.iob2", 239_475, "de86e081dccbc58dbab96c22e53b0d42bdfdd074031bf0d5e7569754efd53269"),
    ("Danish-DDT", "da_ddt-ud-train.iob2", 1_928_266, "a24064c7d27d22b0a7d7baf9035918aac6f120774ef0cd7ef5b00e77e7f8c330"),
    ("English-EWT", "en_ewt-ud-dev.iob2", 620_415, "0cafd881cf31d39897b6d588420fab8fbbe4423d271725c59921ac9dd49c0713"),
    ("English-EWT", "en_ewt-ud-test.iob2", 623_751, "821ad826d5f503ac03b4edc3fbc2174f21fbb005ec25863caf2051c434616d6e"),
    ("Portuguese-Bosque", "pt_bosque-ud-dev.iob2", 608_869, "0e6cb1db280e6677e2fd4380d695039791b5cb70bb5100376166aae5690da01a"),
    ("Portuguese-Bosque", "pt_bosque-ud-test.iob2", 591_916, "45cf232ff7677cb6f4020dad96dbf8412d1f2cca38d81164ac96ee8c03b6b09f"),
    ("Portuguese-Bosque", "pt_bosque-ud-train.iob2", 3_666_479, "1d8762040667fc15f4ec83801e20d14d10ebea2b90c16c312f3ba03da2d1f860"),
    ("Serbian-SET", "sr_set-ud-dev.iob2", 274_263, "4eb042b26a0ae5e913748874fd33e64adbcd11dd6ab9df7121cce9b6d052aa9f"),
    ("Serbian-SET", "sr_set-ud-test.iob2", 265_256, "e49fc05786c35ce0b0b8f165e66a86df802d102d1142c656dfcce89b8fc00f04"),
    ("Serbian-SET", "sr_set-ud-train.iob2", 1_708_806, "dd86c17c28db995225a3ac71e52aa914174353bc37e1a44c8af690929e0be998"),
    ("Slovak-SNK", "sk_snk-ud-dev.iob2", 320_690, "2391d6efb9bcaddc712470c7edc9d4665deffd4b8cc2669da34b91d15da01678"),
    ("Slovak-SNK", "sk_snk-ud-test.iob2", 325_286, "b2f48b43e60bf5a18f8075805592273cb91a1cd3f37dd11d6f11e81d10de3c04"),
    ("Slovak-SNK", "sk_snk-ud-train.iob2", 1_951_901, "2c1aaf803cb940212b56591b450edef4518038d336f52496ecbc0924f7d7d77f"),
    ("Swedish-Talbanken", "sv_talbanken-ud-dev.iob2", 221_240, "aaa5802d5d6e53b0ed78cc40c5d7aa47fdd2675a88318162fc282dd6895533b1"),
    ("Swedish-Talbanken", "sv_talbanken-ud-test.iob2", 468_559, "9c6f1013d9d8aaf321454f4c4470fd03c9ddcb0a1e660920b6340d0838fb2653"),
    ("Swedish-Talbanken", "sv_talbanken-ud-train.iob2", 1_549_633, "c00a899b47b31ed32f4ac443c70471627f421a2bea654a2261107924b57b97e4"),
]


def _uner(tb: str, name: str, size: int | None, **checksum) -> Remote:
    return Remote(f"uner/{tb}/{name}", f"UniversalNER/UNER_{tb}", UNER_COMMITS[tb], name, size, **checksum)


UNER: list[Remote] = [_uner(tb, name, size, sha256=sha) for tb, name, size, sha in _UNER] + [
    # Missing from the offline mirror; only its git blob id is known (README §1), the size is an estimate.
    _uner("English-EWT", "en_ewt-ud-train.iob2", None, git_blob="b2423d72f37f2226e56cbe750da76f820e6c36a9"),
]
EVAL_FILES: tuple[str, ...] = tuple(sorted(f.rel for f in UNER if not f.rel.endswith("-train.iob2")))

# The 9 UNER v1 sets with only a test split (the paper's PUD and Other eval groups), which the offline mirror
# leaves out on purpose (mirror README §1). File names and repositories are UniversalNER's own. THE COMMITS ARE
# NOT FROM THE MIRROR: nothing in this project documents them. Each is a commit of its repository holding a
# version of the file, as listed by a public GitHub code index consulted offline (2026-12-06); it is a pin to
# a commit, so independent of where any branch points now, but neither the commit nor that its file is the
# v1 release was checked against GitHub from here. No checksum is known: the first download records the
# file's sha256 in the download directory and every later download must match it (trust on first use,
# `data.download.download(tofu=...)`); `content_id` names the pin. They are not in CATALOGUE, so grids do
# not plan them (data.plan knows only pinned checksums); `metapretrain uner download` fetches them.
UNER_TEST_ONLY_COMMITS = {
    "German-PUD": ("de_pud-ud-test.iob2", "f8acea8b6c52bde1f49f14d073902f4d8cef7f95"),
    "English-PUD": ("en_pud-ud-test.iob2", "663789046224bf250fc61964f761be716b5086de"),
    "Portuguese-PUD": ("pt_pud-ud-test.iob2", "03a01372517373d2fbd416e686944b4c9fed01d4"),
    "Russian-PUD": ("ru_pud-ud-test.iob2", "e1186ba65bc63fccd7ebedfe2197e20e7a4f0ee8"),
    "Swedish-PUD": ("sv_pud-ud-test.iob2", "984ddb8e1bbc3a02167eea7c0ce3975ba46adb37"),
    "Chinese-PUD": ("zh_pud-ud-test.iob2", "f448e9dcb90368cd03102209745e83457718a006"),
    "Cebuano-GJA": ("ceb_gja-ud-test.iob2", "c56cb85c2101a812dfd86d32fdef973babbe1c4c"),
    "Tagalog-TRG": ("tl_trg-ud-test.iob2", "d32640dfc99e53744c516130ca3c2132b2f1485f"),
    "Tagalog-Ugnayan": ("tl_ugnayan-ud-test.iob2", "9d46d20fd4a5b045c9efc250003e9abde42f75e4"),
}
UNER_TEST_ONLY: list[Remote] = [
    Remote(f"uner/{tb}/{name}", f"UniversalNER/UNER_{tb}", commit, name, None)
    for tb, (name, commit) in UNER_TEST_ONLY_COMMITS.items()
]
# Every UNER v1 file the downloader knows: the 27 pinned by checksum and the 9 test-only ones (18 test sets).
UNER_ALL: list[Remote] = [*UNER, *UNER_TEST_ONLY]

_TEXT = [
    Remote("corpus/tinyshakespeare.txt", "karpathy/char-rnn", "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e",
           "data/tinyshakespeare/input.txt", 1_115_394,
           sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
    Remote("corpus/wikitext-2_valid.tokens.txt", "pytorch/examples", "77f55b912142e11fcfdf5b530231fb9c52f181e8",
           "word_language_model/data/wikitext-2/valid.txt", 1_121_681,
           sha256="f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
    Remote("corpus/wikitext-2_test.tokens.txt", "pytorch/examples", "77f55b912142e11fcfdf5b530231fb9c52f181e8",
           "word_language_model/data/wikitext-2/test.txt", 1_256_449,
           sha256="d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
]

# corpus/ud-train_<TB>.txt: bytes and sha256 of the mirror's files, which the derivation reproduces exactly.
_DERIVED = [
    ("Chinese-GSD", 446_122, "47ccc28c797a18db5f4b45496debbe8bec3c793149672b7e1070fc2cf7adb17c"),
    ("Chinese-GSDSIMP", 446_126, "0baa4b944fb6e1d4dd361544c8a04ea847e630e0df68f37e3a83b907817d15de"),
    ("Croatian-SET", 922_717, "13e434f6995193dc169d76398fad071a5eacddaf886f5ab2e7e6dbff9eec6236"),
    ("Danish-DDT", 434_082, "1b61f2d9e1c32af506c718794289c561a815924006711fca376c01b2684ad529"),
    ("English-EWT", None, None),
    ("Portuguese-Bosque", 887_781, "a8a16ecc432bcad4987c36e4c7997e51ed160ce9d2a0977fcb8554e66d21d84f"),
    ("Serbian-SET", 442_512, "7ecfd49c27bdcb3caf1c7c82c6287338424804e22a0bef2c825d7d5b95d6dbf5"),
    ("Slovak-SNK", 458_537, "8a0a7fd0b0eeab75093e3a6607c1b3cd99b17c789a302d49f8fd0acea2da5bb3"),
    ("Swedish-Talbanken", 409_249, "6a8c2cc8f4b375854ce6db0b8828fc699da546926910f1c34305a811f93668e3"),
]
_TRAIN = {f.rel.split("/")[1]: f.rel for f in UNER if f.rel.endswith("-train.iob2")}

CATALOGUE: dict[str, Entry] = {e.rel: e for e in [*UNER, *_TEXT]}
CATALOGUE.update({f"corpus/ud-train_{tb}.txt": Derived(f"corpus/ud-train_{tb}.txt", _TRAIN[tb], size, sha)
                  for tb, size, sha in _DERIVED})


def matching(pattern: str) -> list[Entry]:
    """Catalogue entries a data-root-relative glob names, as `glob` would match them (no `**`)."""
    parts = pattern.strip("/").split("/")
    out = []
    for rel, entry in sorted(CATALOGUE.items()):
        rparts = rel.split("/")
        if len(rparts) == len(parts) and all(fnmatchcase(r, p) for r, p in zip(rparts, parts, strict=True)):
            out.append(entry)
    return out


def treebanks() -> list[str]:
    return sorted(UNER_COMMITS)


def uner_files(treebank: str) -> list[Remote]:
    return [f for f in UNER_ALL if f.rel.split("/")[1] == treebank]


def downloads_for(entry: Entry) -> list[Remote]:
    """The remote files an entry is made from (itself, or a derivation's source and excluded sets)."""
    if isinstance(entry, Remote):
        return [entry]
    return [CATALOGUE[entry.source], *(CATALOGUE[r] for r in entry.exclude)]  # type: ignore[misc]

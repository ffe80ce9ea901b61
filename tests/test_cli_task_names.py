"""``--task NAME``: a bundled task name wins over a same-named file or folder in the working folder."""

import json

import pytest

import circuitlab as cl
from circuitlab.resolve import load_task as _task


@pytest.fixture(scope="module")
def zoo():
    return cl.load("gpt2-zoo")


def test_bundled_name_wins_over_an_output_folder_of_that_name(zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ioi").mkdir()  # what `circuitlab sweep --task ioi --out ioi` leaves behind
    (tmp_path / "ioi" / "report.html").write_text("<html></html>")
    task = _task(zoo, "ioi", 2, 0)
    assert len(task) == 2 and task.name == cl.tasks.bundled(zoo, "ioi", n=2, seed=0).name
    (tmp_path / "capitals").write_text("not a task")  # a file of that name does not win either
    assert len(_task(zoo, "capitals", 2, 0)) == 2


def test_paths_are_read_as_pairs(zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pairs = [{"clean": "When Mary and John went to the store, John gave a drink to",
              "corrupt": "When Mary and John went to the store, Mary gave a drink to",
              "answer": " Mary", "wrong": " John"}] * 2
    (tmp_path / "sub").mkdir()
    for name in ("pairs.jsonl", "sub/ioi", "mine"):
        (tmp_path / name).write_text("\n".join(json.dumps(p) for p in pairs))
    for spec in ("pairs.jsonl", "sub/ioi", "mine"):  # a suffix, a separator, or an existing non-bundled file
        assert len(_task(zoo, spec, 5, 0)) == 2, spec
    with pytest.raises(ValueError, match="unknown bundled task 'nosuch'"):
        _task(zoo, "nosuch", 2, 0)

"""Multi-file saves (results, coders, graphs) are all-or-nothing, and result names keep their dots.

A save that fails half way (the second file's write raises, or the process is killed) must
leave the previous save whole: loading returns the old values with the old metadata, never
new values under old labels. A staging folder orphaned by a killed write is removed by the
next write and never read.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
from pathlib import Path

import pytest
import torch

from circuitlab.result import Cost, Result

# ---------------------------------------------------------------------------- helpers


def result(seed: int, method: str, direction: str) -> Result:
    g = torch.Generator().manual_seed(seed)
    return Result(torch.randn(2, 3, generator=g), [f"n{i}" for i in range(6)], ("layer", "pos"), method, "resid_pre",
                  direction, "logit_diff", float(seed), Cost(seed, 0, 0.0), {"per_prompt": torch.randn(4, generator=g)})


def same_result(a: Result, b: Result) -> bool:
    return (torch.equal(a.values, b.values) and a.method == b.method and a.direction == b.direction
            and a.baseline == b.baseline and torch.equal(a.extras["per_prompt"], b.extras["per_prompt"]))


def coder(seed: int):
    from circuitlab.sparse.base import config_class, make_coder

    return make_coder(config_class("topk")(d_in=8, d_sae=16, k=2, seed=seed, hooks_in=("blocks.0.hook_resid_pre",),
                                           models=("m",)))


def graph(scale: float):
    from test_hostile_html import make_graph

    g = make_graph([f"w{i}" for i in range(7)])
    g.adjacency = g.adjacency * scale
    g.prompt = f"prompt {scale}"
    return g


def fail_json_writes(monkeypatch) -> None:
    """Make writing any .json file raise, as a full disk would."""
    real = Path.write_text

    def write_text(self, *a, **kw):
        if ".json" in self.name:
            raise OSError(28, "No space left on device (simulated)")
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)


def staging_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------- result names


@pytest.mark.parametrize("names", [("ioi_lr0.1", "ioi_lr0.2"), ("ioi.v2_exact_resid_pre", "ioi.v2_exact_heads_all"),
                                   ("run.2024.01", "run.2024.02")])
def test_dotted_result_names_are_distinct(tmp_path, names):
    a, b = result(1, "exact", "denoising"), result(2, "atp", "noising")
    pa, pb = a.save(tmp_path / names[0]), b.save(tmp_path / names[1])
    assert pa == tmp_path / f"{names[0]}.json" and pb == tmp_path / f"{names[1]}.json"
    assert same_result(Result.load(tmp_path / names[0]), a)
    assert same_result(Result.load(tmp_path / names[1]), b)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}{s}" for n in names for s in (".json", ".safetensors"))


def test_result_suffix_is_stripped_only_when_known(tmp_path):
    a = result(3, "exact", "denoising")
    assert a.save(tmp_path / "r.json") == tmp_path / "r.json"
    for p in ("r", "r.json", "r.safetensors"):
        assert same_result(Result.load(tmp_path / p), a)


def test_demo_task_file_with_dots_keeps_both_results(tmp_path):
    """The demo saves f"{task.name}_exact_{stem}" for resid_pre and heads_all."""
    r1, r2 = result(4, "exact", "denoising"), result(5, "exact", "denoising")
    r1.save(tmp_path / "ioi.v2.jsonl_exact_resid_pre")
    r2.save(tmp_path / "ioi.v2.jsonl_exact_heads_all")
    assert same_result(Result.load(tmp_path / "ioi.v2.jsonl_exact_resid_pre"), r1)


# ---------------------------------------------------------------------------- failed saves


def test_failed_result_save_keeps_previous(tmp_path, monkeypatch):
    old, new = result(1, "exact", "denoising"), result(2, "atp", "noising")
    old.save(tmp_path / "r")
    with monkeypatch.context() as m:
        fail_json_writes(m)
        with pytest.raises(OSError, match="simulated"):
            new.save(tmp_path / "r")
    back = Result.load(tmp_path / "r")
    assert same_result(back, old), "new values were left beside the old metadata"
    assert staging_leftovers(tmp_path) == []


def test_result_pair_from_two_saves_is_refused(tmp_path):
    """A process killed between the two renames leaves files of two saves: load refuses them."""
    result(1, "exact", "denoising").save(tmp_path / "a")
    result(2, "atp", "noising").save(tmp_path / "b")
    os.replace(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="two different saves"):
        Result.load(tmp_path / "a")


def test_failed_coder_save_keeps_previous(tmp_path, monkeypatch):
    from circuitlab.sparse.files import load_coder, save_coder

    old, new = coder(1), coder(2)
    save_coder(old, tmp_path / "c")
    (tmp_path / "c" / "metrics.json").write_text("{}")  # other files in the folder survive saves
    with monkeypatch.context() as m:
        fail_json_writes(m)
        with pytest.raises(OSError, match="simulated"):
            save_coder(new, tmp_path / "c")
    back = load_coder(tmp_path / "c")
    assert torch.equal(back.W_enc, old.W_enc) and torch.equal(back.W_dec, old.W_dec)
    assert staging_leftovers(tmp_path) == []
    save_coder(new, tmp_path / "c")
    assert torch.equal(load_coder(tmp_path / "c").W_enc, new.W_enc)
    assert (tmp_path / "c" / "metrics.json").read_text() == "{}"


def test_failed_graph_save_keeps_previous(tmp_path, monkeypatch):
    from circuitlab.graphs.graph import Graph

    old, new = graph(1.0), graph(3.0)
    old.save(tmp_path / "g")
    with monkeypatch.context() as m:
        fail_json_writes(m)
        with pytest.raises(OSError, match="simulated"):
            new.save(tmp_path / "g")
    back = Graph.load(tmp_path / "g")
    assert torch.equal(back.adjacency, old.adjacency) and back.prompt == old.prompt
    new.save(tmp_path / "g")
    assert torch.equal(Graph.load(tmp_path / "g").adjacency, new.adjacency)


def _killed_save(kind: str, folder: str) -> None:
    """Child process: start a save and die (no cleanup runs) when it writes the .json file."""
    def die(self, *a, **kw):
        os._exit(3)

    Path.write_text = die
    if kind == "coder":
        from circuitlab.sparse.files import save_coder

        save_coder(coder(9), Path(folder) / "c")
    elif kind == "graph":
        graph(9.0).save(Path(folder) / "g")
    else:
        result(9, "atp", "noising").save(Path(folder) / "r")


@pytest.mark.parametrize("kind", ["coder", "graph", "result"])
def test_orphan_of_a_killed_save_is_ignored_then_cleaned(tmp_path, kind):
    from circuitlab.graphs.graph import Graph
    from circuitlab.sparse.files import load_coder, save_coder

    save = {"coder": lambda s: save_coder(coder(s), tmp_path / "c"),
            "graph": lambda s: graph(float(s)).save(tmp_path / "g"),
            "result": lambda s: result(s, "exact", "denoising").save(tmp_path / "r")}[kind]
    load = {"coder": lambda: load_coder(tmp_path / "c").W_enc,
            "graph": lambda: Graph.load(tmp_path / "g").adjacency,
            "result": lambda: Result.load(tmp_path / "r").values}[kind]
    save(1)
    before = load()
    p = mp.get_context("fork").Process(target=_killed_save, args=(kind, str(tmp_path)))
    p.start()
    p.join(60)
    assert p.exitcode == 3
    assert staging_leftovers(tmp_path), "the killed save left no staging folder (test did not kill it mid-write)"
    assert torch.equal(load(), before)  # the orphan is never read
    save(2)
    assert staging_leftovers(tmp_path) == []
    assert not torch.equal(load(), before)


def test_live_writers_staging_folder_is_left_alone(tmp_path):
    from circuitlab.sparse.files import save_coder

    busy = tmp_path / f".c.tmp-{os.getpid()}-busy"
    busy.mkdir()
    save_coder(coder(1), tmp_path / "c")
    assert busy.exists()  # a write still running in a live process is not ours to remove


# ---------------------------------------------------------------------------- the folder helper


@pytest.mark.parametrize("exchange", [True, False])
def test_atomic_folder_replaces_in_one_step(tmp_path, monkeypatch, exchange):
    from circuitlab import io

    if not exchange:
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    with io.atomic_folder(target) as d:
        (d / "a.txt").write_text("1")
        (d / "b.txt").write_text("1")
    (target / "keep.txt").write_text("mine")
    with io.atomic_folder(target) as d:
        assert list(d.iterdir()) == []
        (d / "a.txt").write_text("2")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "2", "b.txt": "1", "keep.txt": "mine"}
    with io.atomic_folder(target, keep_others=False) as d:
        (d / "a.txt").write_text("3")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((target / "a.txt").stat().st_mode) == 0o666 & ~umask
    assert staging_leftovers(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        with io.atomic_folder(tmp_path / "file"):
            pass


def test_circuit_files_keep_dotted_names(tmp_path):
    """Circuits, faithfulness curves and edge scores named with dots (``lr0.1``) do not overwrite
    each other: only a .json/.safetensors ending is taken for a suffix."""
    from circuitlab.circuits.circuit import Circuit

    a, b = Circuit("nodes", {"L0.H1"}), Circuit("nodes", {"L1.H2", "embed"})
    pa, pb = a.save(tmp_path / "ioi_lr0.1"), b.save(tmp_path / "ioi_lr0.2")
    assert pa != pb
    assert Circuit.load(tmp_path / "ioi_lr0.1").items == a.items
    assert Circuit.load(tmp_path / "ioi_lr0.2.json").items == b.items

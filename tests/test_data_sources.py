"""Data sources: every kind on tiny files, the training / held-out split, clear errors for bad
names, the zoo default unchanged, and a real training run and evaluation on a text file."""

from __future__ import annotations

import json
import random
import sys
import warnings

import numpy as np
import pytest
import torch

from circuitlab import data
from circuitlab.data import DataSpec, DocumentSet, is_heldout, open_source, pad_documents, parse
from circuitlab.sparse.store import ActivationSource, Exclusion, ShardPlan, SourceSpec, documents, make_shard
from circuitlab.zoo.corpus import training_documents


def _zoo_lines(n: int, seed: int = 0) -> list[str]:
    """Distinct sentences in the zoo vocabulary (no document of the zoo corpus)."""
    from circuitlab.zoo.world import GIVE_VERBS, NAMES, OBJECTS, PLACES

    rng = random.Random(seed)
    lines = set()
    while len(lines) < n:
        a, b = rng.sample(NAMES, 2)
        lines.add(f"{a} went to the {rng.choice(PLACES)} , then {a} {rng.choice(GIVE_VERBS)} "
                  f"a {rng.choice(OBJECTS)} to {b} .")
    return sorted(lines)


@pytest.fixture
def text_file(tmp_path):
    lines = _zoo_lines(240)
    p = tmp_path / "docs.txt"
    # a byte-order mark and blank lines: both ignored
    p.write_bytes(("\ufeff" + "\n\n".join(lines[:5]) + "\n" + "\n".join(lines[5:]) + "\n\n").encode("utf-8"))
    return p, lines


# ------------------------------------------------------------------------------ names
@pytest.mark.parametrize("spec, want", [
    ("zoo", DataSpec("zoo")),
    ("text:a/b.txt", DataSpec("text", "a/b.txt")),
    ("jsonl:x.jsonl", DataSpec("jsonl", "x.jsonl")),
    ("jsonl:x.jsonl:body", DataSpec("jsonl", "x.jsonl", "body")),
    ("jsonl:C:\\data\\x.jsonl", DataSpec("jsonl", "C:\\data\\x.jsonl")),
    ("tokens:t.safetensors:ids", DataSpec("tokens", "t.safetensors", "ids")),
    ("hf:roneneldan/TinyStories", DataSpec("hf", "roneneldan/TinyStories")),
    ("hf:wikitext@wikitext-2-raw-v1:test:page", DataSpec("hf", "wikitext", "page", "test", "wikitext-2-raw-v1")),
])
def test_names_parse(spec, want):
    assert parse(spec) == want


@pytest.mark.parametrize("spec, says", [
    ("", "non-empty"),
    ("docs.txt", "write text:docs.txt"),
    ("corpus.jsonl", "write jsonl:corpus.jsonl"),
    ("jsnol:x.jsonl", "did you mean 'jsonl'"),
    ("zoo:3", "takes no argument"),
    ("text:", "a file path"),
    ("hf:", "a dataset name"),
    ("hf:a:b:c:d", "at most NAME:SPLIT:FIELD"),
    ("hf:a::text", "empty dataset name, split or field"),
])
def test_bad_names_say_what_to_write(spec, says):
    with pytest.raises(ValueError, match="Write one of: zoo") as e:
        parse(spec)
    assert says in str(e.value)


def test_check_and_run_config_name_missing_files(tmp_path):
    from circuitlab.sparse.config import RunConfig

    with pytest.raises(FileNotFoundError, match=r"\[run\]: data: .*no such file"):
        RunConfig(data=f"text:{tmp_path / 'missing.txt'}")
    with pytest.raises(ValueError, match=r"\[run\]: data: .*unknown source kind"):
        RunConfig(data="txt:x")
    with pytest.raises(ValueError, match=r"is a folder"):
        data.check(f"jsonl:{tmp_path}")
    (tmp_path / "t.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.npy or \.safetensors"):
        data.check(f"tokens:{tmp_path / 't.pt'}")
    assert RunConfig().data == "zoo"


# ------------------------------------------------------------------------------ zoo default
def test_zoo_default_is_the_corpus_as_before():
    from circuitlab.sparse.evaluate import heldout_documents

    assert documents(7, 5) == training_documents(7, 5)
    assert data.documents("zoo", 7, 5) == training_documents(7, 5)
    assert heldout_documents(4) == training_documents(987_654_321, 4)
    assert ShardPlan().data == "zoo" and "data" not in ShardPlan().info()  # caches built before still match
    assert ShardPlan(data="text:x.txt").info()["data"] == "text:x.txt"


def test_zoo_shards_unchanged(gpt2):
    src = ActivationSource([gpt2], SourceSpec(("blocks.0.hook_resid_pre",)), Exclusion(), 16)
    plan = ShardPlan(seed=3, shard_tokens=50, docs_per_batch=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zoo words outside the tiny model's vocabulary
        new = make_shard(src, plan, 2)
        old = make_shard(src, plan, 2, docs_fn=training_documents)
    assert torch.equal(new.x, old.x) and torch.equal(new.tokens, old.tokens) and torch.equal(new.doc, old.doc)


# ------------------------------------------------------------------------------ text and JSONL
def test_text_file_split_is_disjoint_complete_and_deterministic(text_file):
    p, lines = text_file
    src = open_source(f"text:{p}")
    assert isinstance(src, DocumentSet) and list(src.docs) == lines  # one per line, BOM and blank lines dropped
    held = [lines[i] for i in sorted(src.held)]
    assert held == [x for x in lines if is_heldout(x)] and 0 < len(held) < len(lines) // 4
    seen = set()
    for seed in range(200):
        batch = src.documents(seed, 16)
        assert len(batch) == 16 and not set(batch) & set(held)
        seen |= set(batch)
    assert seen == set(lines) - set(held)  # every training document is reachable
    assert src.documents(5, 16) == open_source(f"text:{p}").documents(5, 16)
    assert src.documents(5, 16) != src.documents(6, 16)
    assert set(src.heldout(10)) <= set(held) and src.heldout(10) == src.heldout(10)
    with pytest.warns(UserWarning, match=f"holds {len(held)} held-out documents"):
        assert sorted(src.heldout(10_000)) == sorted(held)


def test_text_file_reread_when_changed(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one two\n")
    assert list(open_source(f"text:{p}").docs) == ["one two"]
    p.write_text("one two\nthree four five\n")
    assert list(open_source(f"text:{p}").docs) == ["one two", "three four five"]


def test_activation_cache_of_a_file_refuses_the_file_once_edited(tmp_path, gpt2):
    from circuitlab.sparse.store import ActivationCache

    p = tmp_path / "a.txt"
    p.write_text("\n".join(f"Mary went to the store w{i} ." for i in range(40)) + "\n")
    src = ActivationSource([gpt2], SourceSpec(("blocks.0.hook_resid_pre",)), Exclusion(), 16)
    plan = ShardPlan(seed=0, shard_tokens=32, docs_per_batch=4, data=f"text:{p}")
    cache = ActivationCache(tmp_path / "c").build(src, plan, 1)
    assert torch.equal(cache.read(0).tokens, make_shard(src, plan, 0).tokens)
    assert cache.build(src, plan, 2).n_shards == 2  # unchanged file: the cache is extended
    p.write_text(p.read_text().replace("w7 ", "w8 "))
    with pytest.raises(ValueError, match="built with different settings"):
        cache.build(src, plan, 2)


def test_jsonl_field_bom_and_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    recs = [{"body": f"doc {i}", "id": i} for i in range(30)] + [{"body": "", "id": 99}]
    p.write_bytes(("\ufeff" + "\n".join(json.dumps(r) for r in recs) + "\n").encode("utf-8"))
    assert list(open_source(f"jsonl:{p}:body").docs) == [f"doc {i}" for i in range(30)]
    with pytest.raises(ValueError, match=r"record 1 has no field 'text' .*jsonl:.*:FIELD"):
        open_source(f"jsonl:{p}")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not UTF-8"):
        open_source(f"jsonl:{bad}")
    bad.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
        open_source(f"jsonl:{bad}")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="holds no documents"):
        open_source(f"text:{empty}")


def test_a_source_without_held_out_documents_says_so(tmp_path):
    p = tmp_path / "one.txt"
    line = next(x for x in _zoo_lines(50) if not is_heldout(x))
    p.write_text(line + "\n")
    with pytest.raises(ValueError, match="no held-out documents"):
        data.heldout(f"text:{p}", 4)
    assert data.documents(f"text:{p}", 0, 3) == [line] * 3


# ------------------------------------------------------------------------------ token files
def test_npy_stream_is_cut_into_documents_of_ctx_len(tmp_path, gpt2):
    ids = np.arange(2, 102, dtype=np.int32) % 100 + 2
    np.save(tmp_path / "t.npy", ids)
    src = open_source(f"tokens:{tmp_path / 't.npy'}", ctx_len=8)
    assert len(src.docs) == 100 // 7 and torch.equal(src.docs[3], torch.as_tensor(ids[21:28], dtype=torch.long))
    assert len(src.train) + len(src.held) == 14 and all(is_heldout(src.docs[i]) for i in src.held)
    toks, lengths = pad_documents(gpt2.tokenizer, [src.docs[0], src.docs[1][:3]], 8)
    assert toks[0].tolist() == [0] + ids[:7].tolist() and lengths.tolist() == [8, 4]
    assert toks[1, 4:].tolist() == [0] * 4  # right-padded with the pad id


def test_safetensors_rows_keys_and_bad_ids(tmp_path, gpt2):
    from safetensors.torch import save_file

    rows = torch.randint(1, 50, (12, 6))
    save_file({"input_ids": rows, "attention_mask": torch.ones(12, 6)}, str(tmp_path / "a.safetensors"))
    src = open_source(f"tokens:{tmp_path / 'a.safetensors'}")
    assert torch.equal(torch.stack(list(src.docs)), rows)
    save_file({"a": rows, "b": rows + 1}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match=r"holds tensors \['a', 'b'\]; name one"):
        open_source(f"tokens:{tmp_path / 'b.safetensors'}")
    assert torch.equal(open_source(f"tokens:{tmp_path / 'b.safetensors'}:b").docs[0], rows[0] + 1)
    save_file({"ids": torch.rand(3, 4)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(ValueError, match="must be integers"):
        open_source(f"tokens:{tmp_path / 'f.safetensors'}")
    with pytest.raises(ValueError, match="made with another tokenizer"):
        pad_documents(gpt2.tokenizer, [torch.tensor([3, 5000])], 8)


# ------------------------------------------------------------------------------ Hugging Face datasets
def test_hf_dataset_from_a_local_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    lines = _zoo_lines(40)
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"story": x}) for x in lines) + "\n")
    src = open_source(f"hf:{folder}:train:story")
    assert list(src.docs) == lines
    assert set(src.documents(0, 8)) <= {x for x in lines if not is_heldout(x)}
    with pytest.raises(ValueError, match=r"no field 'text' \(columns: \['story'\]\)"):
        open_source(f"hf:{folder}")


def test_hf_without_datasets_or_hub_says_what_to_do(monkeypatch):
    from circuitlab.data.hub import hf_documents

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        hf_documents("some/dataset")
    monkeypatch.undo()
    datasets = pytest.importorskip("datasets")

    def unreachable(*a, **k):
        raise ConnectionError("Couldn't reach 'some/dataset' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(ValueError, match="hub is unreachable.*HF_HUB_OFFLINE=1"):
        hf_documents("some/dataset")


# ------------------------------------------------------------------------------ token pool
def test_token_pool_is_the_most_frequent_words_of_the_training_documents(tmp_path, gpt2):
    from collections import Counter

    tok = gpt2.tokenizer
    # Mary and John tie (29 training documents each): counting any document twice would break the tie
    lines = [" ".join((["Mary"] if k % 2 == 0 else ["John"]) + ["Anna"] * (k % 3 == 0) + ["Tom"] * 3 * (k % 7 == 0)
                      + ["the", ",", "a", "zebra", f"w{k}"]) for k in range(60)]
    p = tmp_path / "pool.txt"
    p.write_text("\n".join(lines) + "\n")
    counts = Counter(w for x in lines if not is_heldout(x) for w in x.split())
    assert counts["Mary"] == counts["John"]
    want = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], tok.convert_tokens_to_ids(kv[0])))
            if w in ("Mary", "John", "Anna", "Tom", "the")]  # ',', 'a', w<k> and the unknown 'zebra' are no words
    for seed in range(5):  # each training document counted once, whatever the seed
        pool = data.token_pool(tok, f"text:{p}", n=10, seed=seed)
        assert [tok.decode([i]) for i in pool] == want
    assert data.token_pool(tok, f"text:{p}", n=2) == pool[:2]


# ------------------------------------------------------------------------------ training and evaluation
def test_training_and_evaluation_on_a_text_file(text_file, zoo_model, tmp_path):
    from circuitlab.sparse.base import config_class, make_coder
    from circuitlab.sparse.evaluate import evaluate
    from circuitlab.sparse.store import ShardLoader
    from circuitlab.sparse.trainer import TrainConfig, Trainer
    from circuitlab.tasks.tokenize import encode

    torch.set_num_threads(1)
    p, lines = text_file
    spec = f"text:{p}"
    model = zoo_model("gpt2-zoo")
    hook = "blocks.1.hook_resid_post"
    src = ActivationSource([model], SourceSpec((hook,)), Exclusion(), ctx_len=24)
    plan = ShardPlan(seed=1, shard_tokens=256, docs_per_batch=8, data=spec)
    shard = make_shard(src, plan, 2)
    # the rows are the file's training documents of (seed 1, shard 2): tokens match document by document
    file_docs = open_source(spec)
    for j in range(int(shard.doc.max()) // 8 + 1):
        docs = file_docs.documents(1 * 1_000_003 + 2 * 1_009 + j, 8)
        assert not set(docs) & {x for x in lines if is_heldout(x)}
        ids = [encode(model.tokenizer, d)[:24] for d in docs]
        for r in torch.nonzero(shard.doc // 8 == j).flatten().tolist():
            assert int(shard.tokens[r]) == ids[int(shard.doc[r]) % 8][int(shard.pos[r])]
    assert torch.equal(make_shard(src, plan, 2).x, shard.x)  # reproducible from (source, seed, index)

    coder = make_coder(config_class("topk")(d_in=model.d_model, d_sae=256, k=8, seed=0, hooks_in=(hook,)))
    loader = ShardLoader(lambda i: make_shard(src, plan, i), 4, 64, seed=0, buffer_shards=1)
    cfg = TrainConfig(total_tokens=64 * 24, batch_size=64, lr=3e-3, progress=False, checkpoint_every=0, log_every=4,
                      init_tokens=256)
    t = Trainer({"sae": coder}, loader, cfg, tmp_path / "state", data={"data": spec})
    t.run(sample=make_shard(src, plan, 0))
    fvu = [h["sae.fvu"] for h in t.history]
    assert t.step == 24 and fvu[-1] < fvu[0]

    held = [x for x in lines if is_heldout(x)]
    with pytest.warns(UserWarning, match="held-out documents"):
        m = evaluate(model, t.export("sae"), n_docs=10_000, ctx_len=24, data=spec)
    assert m["tokens"] == sum(min(len(encode(model.tokenizer, x)), 24) - 1 for x in held)  # all but BOS
    assert 0 < m["fvu"] < 1 and np.isfinite(m["ce_recovered"])


def test_train_file_reads_run_data(text_file, zoo_model, tmp_path):
    from circuitlab.sparse import config
    from circuitlab.sparse.run import train_file
    from circuitlab.tasks.tokenize import encode

    torch.set_num_threads(1)
    p, lines = text_file
    tf = config.parse({"run": {"out": str(tmp_path / "out"), "model": "gpt2-zoo", "data": f"text:{p}", "ctx_len": 24,
                               "shard_tokens": 256, "docs_per_batch": 8, "eval_docs": 64, "density_html": False,
                               "exclude_norm_factor": 0.0, "threads": 1},
                       "train": {"total_tokens": 512, "batch_size": 64, "progress": False, "init_tokens": 256},
                       "coder": [{"name": "k8", "arch": "topk", "layer": 1, "k": 8, "expansion": 2}]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = train_file(tf, models={"gpt2-zoo": zoo_model("gpt2-zoo")})["k8"]
    held = [x for x in lines if is_heldout(x)]
    assert m["tokens"] == sum(min(len(encode(zoo_model("gpt2-zoo").tokenizer, x)), 24) - 1 for x in held)


def test_dashboard_cards_read_the_sources_held_out_documents(text_file, zoo_model):
    from circuitlab.sparse.base import config_class, make_coder
    from circuitlab.sparse.dashboard import latent_cards

    torch.set_num_threads(1)
    p, lines = text_file
    model = zoo_model("gpt2-zoo")
    coder = make_coder(config_class("topk")(d_in=model.d_model, d_sae=16, k=4, seed=0,
                                            hooks_in=("blocks.1.hook_resid_post",)))
    with pytest.warns(UserWarning, match="held-out documents"):
        cards = latent_cards(model, coder, range(16), n_docs=10_000, n_contexts=4, ctx_len=24, data=f"text:{p}")
    tok = model.tokenizer
    held, train = ([tok.convert_ids_to_tokens(ids) for ids in pad_documents(tok, docs, 24)[0].tolist()]
                   for docs in ([x for x in lines if is_heldout(x)], [x for x in lines if not is_heldout(x)]))

    def inside(window, docs):
        return any(d[i:i + len(window)] == window for d in docs for i in range(len(d)))

    contexts = [c.tokens[:c.index + 1] for card in cards for c in card.top_contexts]
    assert len(contexts) >= 8
    assert all(inside(w, held) for w in contexts)
    assert not all(inside(w, train) for w in contexts if len(w) >= 6)  # long windows are document-specific


def test_functional_words_from_a_text_source(tmp_path):
    """The most frequent words of a text are its function words: a source where 'the' and 'of'
    dominate gives them, and no rare content word."""
    import circuitlab as cl
    from circuitlab.graphs.signatures import PUNCT, functional_words

    model = cl.load("gpt2-zoo")
    text = tmp_path / "glue.txt"
    lines = ["the capital of France is Paris", "the language of Spain is Spanish",
             "the capital of Italy is Rome"] * 20
    text.write_text("\n".join(lines) + "\n")
    words = functional_words(model.tokenizer, data=f"text:{text}", n=3)
    assert {"the", "of", "is"} <= words and PUNCT <= words
    assert not {"Paris", "Rome", "Spanish"} & words
    with pytest.raises(ValueError, match="tokenizer"):
        functional_words(data=f"text:{text}")

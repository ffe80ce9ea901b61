"""``circuitlab train`` / ``circuitlab eval``: strict TOML, documented template, end to end."""

import json
import tomllib

import pytest

from circuitlab.cli import main
from circuitlab.sparse import config


def test_unknown_key_names_nearest_valid_key():
    with pytest.raises(ValueError, match="did you mean 'l1_coeff'"):
        config.parse({"coder": [{"arch": "relu", "l1_coef": 3.0}]})
    with pytest.raises(ValueError, match="did you mean 'total_tokens'"):
        config.parse({"train": {"total_token": 5}, "coder": [{}]})
    with pytest.raises(ValueError, match="unknown architecture"):
        config.parse({"coder": [{"arch": "gated"}]})


def test_template_documents_every_field_and_parses(capsys):
    assert main(["train", "--show-config"]) == 0
    text = capsys.readouterr().out
    for cls in (config.RunConfig, config.CoderSection, config.TrainConfig):
        docs = config.field_docs(cls)
        for f in cls.__dataclass_fields__:
            assert f in docs and docs[f], f"{cls.__name__}.{f} is undocumented"
            assert f in text
    tf = config.parse(tomllib.loads(text))
    assert tf.coders[0][0].arch == "topk"


def test_train_and_eval_end_to_end(tiny_dir, tmp_path, capsys):
    model = str(tiny_dir("gpt2"))
    out = tmp_path / "run"
    (tmp_path / "c.toml").write_text(f"""
[run]
out = "{out}"
model = "{model}"
ctx_len = 24
shard_tokens = 256
docs_per_batch = 16
exclude_special_tokens = false
eval_docs = 16
cache_dir = "{tmp_path / 'cache'}"

[train]
total_tokens = 2048
batch_size = 128
lr = 0.003
progress = false

[[coder]]
name = "k4"
arch = "topk"
layer = 1
k = 4
expansion = 2

[[coder]]
name = "k8"
arch = "topk"
layer = 1
k = 8
expansion = 2

[[coder]]
name = "tc"
kind = "transcoder"
arch = "jumprelu"
layer = 0
expansion = 2

[[coder]]
name = "xc"
kind = "crosscoder"
arch = "relu"
layers = [0, 2]
expansion = 2
""")
    assert main(["train", str(tmp_path / "c.toml")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"k4", "k8", "tc", "xc"}
    assert summary["k4"]["l0"] <= 4 + 1e-9 and summary["k8"]["l0"] <= 8 + 1e-9
    assert "ce_recovered" in summary["tc"] and "ce_recovered" not in summary["xc"]
    assert len(list((tmp_path / "cache").iterdir())) == 3  # k4 and k8 shared one stream
    assert main(["eval", str(out / "k4"), "--docs", "8", "--ctx-len", "24", "--out", str(tmp_path / "ev")]) == 0
    assert "ce_recovered" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev/metrics.json").read_text())["tokens"] > 0


def test_trainer_state_lives_outside_the_output_folder(tmp_path):
    from circuitlab.sparse.run import state_dir

    out = tmp_path / "pretrained" / "model"
    a, b = state_dir(out, ["resid_L0"]), state_dir(out, ["transcoder_L0"])
    assert a != b  # two configs writing one folder never resume each other's state
    assert out.resolve() not in a.resolve().parents  # nothing but finished coders lands in out
    assert state_dir(out, ["resid_L0"]) == a  # the same run finds its state again


def test_eval_reads_held_out_documents_of_a_text_file(tiny_dir, tmp_path, capsys):
    import warnings

    import circuitlab as cl
    from circuitlab.data import is_heldout
    from circuitlab.sparse.base import config_class, make_coder
    from circuitlab.sparse.files import save_coder
    from circuitlab.tasks.tokenize import encode

    model = str(tiny_dir("gpt2"))
    coder = save_coder(make_coder(config_class("topk")(d_in=64, d_sae=128, k=4, seed=0,
                                                       hooks_in=("blocks.1.hook_resid_pre",), models=(model,))),
                       tmp_path / "coder")
    lines = sorted({" ".join(f"w{(5 * i + j) % 100}" for j in range(2 + i % 30)) for i in range(160)})
    (tmp_path / "docs.txt").write_text("\n".join(lines) + "\n")
    held = [x for x in lines if is_heldout(x)]
    assert 0 < len(held) < len(lines)
    argv = ["eval", str(coder), "--data", f"text:{tmp_path / 'docs.txt'}", "--docs", "1000", "--ctx-len", "24"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer held-out documents than --docs asks for
        assert main(argv + ["--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev/metrics.json").read_text())
    tok = cl.load(model).tokenizer
    # every held-out line and nothing else: all its tokens up to ctx_len, less the BOS
    assert metrics["tokens"] == sum(min(len(encode(tok, x)), 24) - 1 for x in held)
    assert main(["eval", str(coder), "--docs", "8", "--ctx-len", "24", "--out", str(tmp_path / "zoo")]) == 0
    assert json.loads((tmp_path / "zoo/metrics.json").read_text())["tokens"] != metrics["tokens"]
    capsys.readouterr()
    assert main(["eval", str(coder), "--data", f"text:{tmp_path / 'missing.txt'}", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "missing.txt" in err and not (tmp_path / "x").exists()

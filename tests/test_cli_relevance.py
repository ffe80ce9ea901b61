"""``circuitlab relevance``: the page and JSON hold the scores ``cl.input_relevance`` gives."""

import json

import pytest
import torch

import circuitlab as cl
from circuitlab import cli

PROMPT = "<bos> the capital of France is"


@pytest.fixture(scope="module")
def model():
    return cl.load("gpt2-zoo", device="cpu")


def test_relevance_command_writes_the_api_scores(tmp_path, model):
    page = tmp_path / "r" / "page.html"
    rc = cli.main(["relevance", "--model", "gpt2-zoo", "--prompt", PROMPT, "--target", " Paris", "--wrong", " Madrid",
                   "--corrupt", "<bos> the capital of Spain is", "--method", "ig,alti", "--baseline", "corrupt",
                   "--steps", "8", "--out", str(page)])
    assert rc == 0
    doc = json.loads(page.with_suffix(".json").read_text())
    assert "<script" in page.read_text() and "France" in page.read_text()
    task = cl.tasks.from_pairs(model, [{"clean": PROMPT, "corrupt": "<bos> the capital of Spain is",
                                        "answer": " Paris", "wrong": " Madrid"}])
    ig = cl.input_relevance(model, task, "ig", baseline="corrupt", steps=8)
    alti = cl.input_relevance(model, task, "alti")
    got_ig, got_alti = doc["results"]
    assert got_ig["method"] == "ig" and got_alti["method"] == "alti" and got_ig["output"] == "logit_diff"
    assert got_ig["prompts"][0]["tokens"] == ig.tokens[0]
    assert torch.allclose(torch.tensor(got_ig["prompts"][0]["scores"]), ig.scores[0].float(), atol=1e-5)
    assert torch.allclose(torch.tensor(got_alti["prompts"][0]["scores"]), alti.scores[0].float(), atol=1e-5)
    # the corrupt baseline changes one token: IG's scores add up to the logit-difference change there
    assert abs(got_ig["prompts"][0]["sum"] - got_ig["prompts"][0]["total"]) < 1e-2 * abs(got_ig["prompts"][0]["total"])
    nonzero = [t for t, s in zip(ig.tokens[0], got_ig["prompts"][0]["scores"]) if abs(s) > 1e-6]
    assert len(nonzero) == 1 and "France" in nonzero[0]
    assert abs(sum(got_alti["prompts"][0]["scores"]) - 1) < 1e-4  # ALTI: a distribution over the tokens


def test_relevance_plain_prompt_and_bad_input(tmp_path, model, capsys):
    page = tmp_path / "p.html"
    rc = cli.main(["relevance", "--model", "gpt2-zoo", "--prompt", PROMPT, "--target", " Paris", "--method", "relp",
                   "--out", str(page), "--json", str(tmp_path / "scores.json")])
    assert rc == 0
    got = json.loads((tmp_path / "scores.json").read_text())["results"][0]
    ref = cl.input_relevance(model, [PROMPT], "relp", target=" Paris")
    assert got["output"] == ref.output and "Paris" in got["output"]
    assert torch.allclose(torch.tensor(got["prompts"][0]["scores"]), ref.scores[0].float(), atol=1e-5)
    bad = [["--baseline", "corrupt"], ["--baseline", "zeros"], ["--wrong", " Madrid"], ["--method", "lrp"],
           ["--task", "ioi"], ["--attention", "attnlrp"]]
    capsys.readouterr()
    for extra in bad:
        out = tmp_path / "bad.html"
        args = ["relevance", "--model", "gpt2-zoo", "--prompt", PROMPT, "--out", str(out)] + extra
        assert cli.main(args) == 2, extra
        assert not out.exists()
        err = capsys.readouterr().err
        assert "circuitlab relevance: error:" in err and len(err.strip().splitlines()) == 1

"""Bad input to every ``circuitlab`` command: exit code 2, one line on stderr naming the problem,
no traceback, and an earlier output folder left exactly as it was."""

import json

import pytest

import circuitlab
from circuitlab import cli

GOOD = {"clean": "<bos> the capital of France is", "corrupt": "<bos> the capital of Spain is",
        "answer": " Paris", "wrong": " Madrid"}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with an earlier output folder ``out`` and assorted bad input files."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("earlier results\n")
    (out / "report.html").write_text("<p>earlier</p>\n")
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "bad.jsonl").write_text('{"clean": "a"\n')
    (tmp_path / "latin1.jsonl").write_bytes(b'{"clean": "caf\xe9"}\n')
    (tmp_path / "fields.jsonl").write_text(json.dumps({"clean": "<bos> a"}) + "\n")
    (tmp_path / "role.jsonl").write_text(json.dumps(dict(GOOD, roles={"X": 99})) + "\n")
    (tmp_path / "long.jsonl").write_text(json.dumps(dict(GOOD, clean="<bos>" + " the" * 300,
                                                         corrupt="<bos>" + " the" * 300)) + "\n")
    (tmp_path / "bad.toml").write_text("[run\nout = 1\n")
    (tmp_path / "types.toml").write_text('[run]\nout = "o"\n[train]\ntotal_tokens = "many"\n')
    (tmp_path / "bad.json").write_text("[{")
    return tmp_path


def _snapshot(folder):
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _run(argv, capsys):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    return rc, err


def _assert_one_line(err: str, match: str):
    lines = [l for l in err.splitlines() if l.strip()]
    errors = [l for l in lines if "error:" in l]
    assert "Traceback" not in err, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert match in errors[0], errors[0]


# (argv, text the one-line message contains); none of these may load a model
FAST = [
    (["sweep", "--task", "missing.jsonl", "--out", "out"], "'missing.jsonl': no such file"),
    (["sweep", "--task", "iol", "--out", "out"], "did you mean 'ioi'"),
    (["sweep", "--task", "ioi\nrm -rf /", "--out", "out"], "--task 'ioi\\nrm -rf /': no such file"),
    (["sweep", "--task", "<script>alert(1)</script>", "--out", "out"], "no such file"),
    (["sweep", "--task", "io\x00i", "--out", "out"], "neither a bundled task nor a file"),
    (["sweep", "--task", "out", "--out", "out2"], "--task 'out' is not a file"),
    (["sweep", "--task", "ioi", "--out", "afile"], "--out 'afile' is a file"),
    (["sweep", "--task", "ioi", "--out", "out", "--method", "exact,atpp"], "unknown method 'atpp'; did you mean 'atp'"),
    (["sweep", "--task", "ioi", "--out", "out", "--method", "exact,"], "empty entry"),
    (["sweep", "--task", "ioi", "--out", "out", "--sites", "heads,mpl_out"],
     "unknown sites 'mpl_out'; did you mean 'mlp_out'"),
    (["sweep", "--task", "ioi", "--out", "out", "--batch-size", "0"], "--batch-size must be > 0"),
    (["sweep", "--task", "ioi", "--out", "out", "--batch-size", "-4"], "--batch-size must be > 0"),
    (["sweep", "--task", "ioi", "--out", "out", "--n", "0"], "--n must be > 0"),
    (["sweep", "--task", "ioi", "--out", "out", "--n", "many"], "invalid int value: 'many'"),
    (["sweep", "--task", "ioi", "--out", "out", "--direction", "sideways"], "invalid choice: 'sideways'"),
    (["sweep", "--task", "ioi", "--out", "out", "--seed", "-1"], "--seed must be >= 0"),
    (["sweep", "--task", "ioi"], "required: --out"),
    (["sweep", "--task", "ioi", "--out", "out", "--bogus"], "unrecognized arguments: --bogus"),
    (["demo", "--n", "0", "--out", "out"], "--n must be > 0"),
    (["demo", "--task", "missing.jsonl", "--out", "out"], "no such file"),
    (["demo", "--out", "afile"], "--out 'afile' is a file"),
    (["circuit", "--task", "ioi", "--out", "out", "--steps", "0"], "--steps must be > 0"),
    (["circuit", "--task", "ioi", "--out", "out", "--threshold", "1.5"], "--threshold must be a fraction in (0, 1]"),
    (["circuit", "--task", "ioi", "--out", "out", "--threshold", "nan"], "--threshold must be a fraction"),
    (["circuit", "--task", "ioi", "--out", "out", "--bootstrap", "-1"], "--bootstrap must be >= 0"),
    (["circuit", "--task", "ioi", "--out", "out", "--top", "0"], "--top must be > 0"),
    (["circuit", "--task", "ioi", "--out", "out", "--method", "eapig"], "invalid choice: 'eapig'"),
    (["train", "missing.toml"], "missing.toml"),
    (["train", "bad.toml"], "error:"),
    (["train", "types.toml"], "total_tokens"),
    (["train", "out"], "out"),
    (["train"], "give a CONFIG.toml"),
    (["eval", "no_such_coder"], "not a coder folder"),
    (["eval", "out", "--docs", "0"], "--docs must be > 0"),
    (["eval", "out", "--ctx-len", "-1"], "--ctx-len must be > 0"),
    (["graph", "--prompt", "  ", "--out", "out"], "--prompt is blank"),
    (["graph", "--prompt", "hi", "--out", "out", "--batch-size", "0"], "--batch-size must be > 0"),
    (["graph", "--prompt", "hi", "--out", "out", "--node-threshold", "0"], "--node-threshold must be a fraction"),
    (["graph", "--prompt", "hi", "--out", "out", "--max-feature-nodes", "-5"], "--max-feature-nodes must be > 0"),
    (["probe", "--prompt", "", "--out", "out"], "--prompt is blank"),
    (["models", "fetch", "no-such-model"], "unknown model 'no-such-model'"),
    (["models", "fetch", "../../etc/passwd"], "unknown model"),
    (["models", "remove"], "invalid choice: 'remove'"),
    (["zoo", "train", "no-such-zoo"], "unknown zoo model 'no-such-zoo'"),
    (["zoo", "train", "gpt2-zoo", "--max-minutes", "0", "--out", "out"], "--max-minutes must be > 0"),
    (["zoo"], "required"),
    ([], "required: cmd"),
    (["sweep", "--task", "ioi", "--out", "out", "--method", "ig:step=2"],
     "unknown option 'step' for method 'ig'; did you mean 'steps'"),
    (["sweep", "--task", "ioi", "--out", "out", "--method", "exact,ig:steps=many"],
     "option steps='many' of method 'ig' is not a whole number"),
    (["sweep", "--task", "ioi", "--out", "out", "--method", "ig:steps=4,varient=activations"],
     "did you mean 'variant'"),
    (["sweep", "--task", "ioi", "--out", "out", "--method", "ig:variant=activatons"],
     "unknown IG variant 'activatons'"),
    (["sweep", "--task", "ioi", "--out", "out", "--method", "ig:steps=0"], "whole number of steps >= 1"),
    (["sweep", "--task", "ioi", "--out", "out", "--method", "atp*:graddrop=maybe"], "is not true or false"),
    (["sweep", "--task", "ioi", "--out", "out", "--method", "relp:attention=lrp"], "unknown attention rule 'lrp'"),
    (["sweep", "--task", "ioi", "--out", "out", "--method", "atp:layers=0+x"], "numbers joined by +"),
    (["sweep", "--task", "ioi", "--out", "out", "--method", "steps=3"], "starts with an option"),
    (["sweep", "--task", "ioi", "--out", "out", "--method", "ig:steps"], "is not NAME=VALUE"),
    (["sweep", "--task", "ioi", "--out", "out", "--positions", "S1,,END"], "--positions 'S1,,END' has an empty entry"),
    (["sweep", "--task", "ioi", "--out", "out", "--positions", "-1"], "-1 is negative"),
    (["sweep", "--task", "ioi", "--out", "out", "--positions", "S1;IO"], "'S1;IO' is neither a token index nor a role"),
]


@pytest.mark.parametrize("argv, match", FAST, ids=[" ".join(a)[:60] for a, _ in FAST])
def test_bad_input_fails_fast_with_one_line(workdir, capsys, monkeypatch, argv, match):
    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(circuitlab, "load", no_load)
    before = _snapshot(workdir)
    rc, err = _run(argv, capsys)
    assert rc == 2, err
    _assert_one_line(err, match)
    assert _snapshot(workdir) == before


# cases found only once the bundled zoo model is loaded (a second or two each)
WITH_MODEL = [
    (["sweep", "--model", "/no/such/model", "--task", "ioi", "--out", "out"], "/no/such/model"),
    (["sweep", "--model", "gpt2-zoo", "--task", "bad.jsonl", "--out", "out"], "bad.jsonl:1 is not valid JSON"),
    (["sweep", "--model", "gpt2-zoo", "--task", "latin1.jsonl", "--out", "out"], "is not UTF-8 text (byte 0xe9"),
    (["sweep", "--model", "gpt2-zoo", "--task", "fields.jsonl", "--out", "out"], "record 0 lacks"),
    (["sweep", "--model", "gpt2-zoo", "--task", "role.jsonl", "--out", "out"], "role 'X' is token 99 in prompt 0"),
    (["sweep", "--model", "gpt2-zoo", "--task", "long.jsonl", "--out", "out"], "but the model takes at most"),
    (["probe", "--model", "gpt2-zoo", "--prompt", "hi", "--out", "out", "--concepts", "bad.json"], "JSON"),
    (["sweep", "--model", "gpt2-zoo", "--task", "ioi", "--out", "out", "--positions", "S1,S3"], "has no role 'S3'"),
]


@pytest.mark.parametrize("argv, match", WITH_MODEL, ids=[a[4] for a, _ in WITH_MODEL])
def test_bad_input_found_after_loading_the_model(workdir, capsys, argv, match):
    before = _snapshot(workdir)
    rc, err = _run(argv, capsys)
    assert rc == 2, err
    _assert_one_line(err, match)
    assert _snapshot(workdir) == before


def test_debug_shows_the_traceback_instead(workdir, capsys):
    with pytest.raises(ValueError, match="--n must be > 0"):
        cli.main(["--debug", "sweep", "--task", "ioi", "--out", "out", "--n", "0"])


def test_internal_errors_are_not_called_bad_input(workdir, capsys, monkeypatch):
    def bug(a):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli.zoo, "run", bug)
    rc, err = _run(["zoo", "list"], capsys)
    assert rc == 1
    _assert_one_line(err, "internal error: RuntimeError: a bug (rerun with --debug")
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["--debug", "zoo", "list"])


def test_help_still_exits_zero(capsys):
    assert cli.main(["sweep", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--batch-size" in out and "--positions" in out
    assert "ig (layers, steps, variant, rule, baseline)" in out  # every method's options, read from the registry

import pytest

from circuitlab.engine.sites import HOOKS, Node, hook_name, norm_path, parse_hook, position_axis


@pytest.mark.parametrize("label", ["L3.H5", "L3.H5@4", "L3.H5.q@4", "L0.H1.k", "L2.H0.v@7", "L2.mlp_out@4",
                                   "L1.resid_pre", "L0.resid_mid@0", "L5.resid_post@3", "L1.attn_out",
                                   "L0.N17@3", "L2.F9@5", "L3.H2@S2", "L1.mlp_out@END"])
def test_label_round_trip(label):
    assert str(Node.parse(label)) == label


def test_parse_fields():
    n = Node.parse("L3.H5.q@4")
    assert (n.layer, n.family, n.head, n.pos) == (3, "q", 5, 4)
    assert n.hook == "blocks.3.attn.hook_q"
    assert Node.parse("L0.N17@3").unit == 17


@pytest.mark.parametrize("bad", ["H5", "L3.X5", "L3.mlp", "L-1.H0", "3.H5"])
def test_bad_labels(bad):
    with pytest.raises(ValueError, match="cannot parse"):
        Node.parse(bad)


def test_unknown_family():
    with pytest.raises(ValueError, match="valid families"):
        hook_name("mlp_in_out", 0)
    with pytest.raises(ValueError, match="needs a head"):
        Node(0, "heads")


def test_hook_points_inside_and_outside_blocks():
    assert hook_name("rot_q", 2) == "blocks.2.attn.hook_rot_q"
    assert hook_name("ln1.scale", 0) == "blocks.0.ln1.hook_scale"
    assert hook_name("q_norm.normalized", 1) == "blocks.1.attn.q_norm.hook_normalized"
    assert hook_name("ln_final.in") == "ln_final.hook_in" and hook_name("embed") == "hook_embed"
    with pytest.raises(ValueError, match="inside a block"):
        hook_name("resid_pre")
    with pytest.raises(ValueError, match="outside the blocks"):
        hook_name("pos_embed", 0)


def test_parse_hook_inverts_hook_name():
    for site in HOOKS:
        layer = 7 if "{layer}" in HOOKS[site] else None
        assert parse_hook(hook_name(site, layer)) == (site, layer)
    assert parse_hook("blocks.0.attn.hook_in") is None
    assert position_axis(hook_name("pattern", 3)) == 2 and position_axis(hook_name("attn_scores", 0)) == 2
    assert position_axis(hook_name("q", 3)) == 1 and position_axis("blocks.0.attn.hook_in") == 1


def test_every_hook_point_exists_in_a_sandwich_norm_model(tmp_path):
    """Each spelt name is one the bridge really has (Gemma-3 has every kind of norm)."""
    import circuitlab as cl
    from test_gemma3 import save_tiny_gemma3

    m = cl.load(str(save_tiny_gemma3(tmp_path / "g3")), device="cpu", check=False)
    missing = [s for s in HOOKS if s != "latents"
               and hook_name(s, 0 if "{layer}" in HOOKS[s] else None) not in m.bridge.hook_dict]
    assert missing == []
    assert norm_path("k_norm", 2) == "blocks.2.attn.k_norm" and norm_path("ln_final") == "ln_final"

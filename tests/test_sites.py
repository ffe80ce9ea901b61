import pytest

from circuitlab.engine.sites import Node, hook_name


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

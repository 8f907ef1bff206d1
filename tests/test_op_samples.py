"""The one coverage test of the per-op tables: every op of the kernel interface
(``attnfast._schema.OPS``) has sample inputs and a public call in tests/op_samples.py and boundary
entries in tests/boundaries.py, and nothing there names an op that does not exist. A new op
fails here until its entries are added (docs/CONTRIBUTING.md, adding an op)."""
from attnfast._schema import OPS
from boundaries import BY_OP
from op_samples import PUBLIC, op_sample_calls


def test_every_op_has_samples_a_public_call_and_boundaries():
    ops = set(OPS)
    assert {name for name, _ in op_sample_calls()} == ops, "tests/op_samples.py op_sample_calls(): add the op"
    assert set(PUBLIC) == ops, "tests/op_samples.py PUBLIC: add the op's public call"
    assert set(BY_OP) == ops, "tests/boundaries.py TABLE: add the op's boundary entries"
    assert all(BY_OP[name] for name in ops)

"""The layer plan (csrc/include/fusedlstm/layer_plan.h), tested once, through the op
fusedlstm::layer_plan that the Python backends read it from (fusedlstm.plan): against
a brute-force definition from each sequence's length, dense and packed, forward and
reverse; its argument checks; its fake rule. The C++ backends read the same builder
(check_layer_args), and their parity with the reference is test_ops.py's."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fusedlstm import ops, plan

pytestmark = pytest.mark.skipif(ops.cpp is None, reason="fusedlstm._C is not built: it builds the plan")


def brute_force(lengths, reverse):
    """The plan from its definition, for sequences of these lengths (non-increasing:
    PackedSequence's order): [(offset, rows, continuing, prev_offset)] per entry."""
    T, B = max(lengths), len(lengths)
    takes_part = [{b for b in range(B) if lengths[b] > t} for t in range(T)]
    # Row b of step t, in the per-step layout: the rows of the steps before it, then b.
    offset = [sum(len(takes_part[s]) for s in range(t)) for t in range(T)]
    entries, previous = [], None
    for t in (reversed(range(T)) if reverse else range(T)):
        rows = len(takes_part[t])
        assert takes_part[t] == set(range(rows))  # the sequences of a step are its first rows
        if previous is None:
            entries.append((offset[t], rows, 0, 0))
        else:
            continuing = takes_part[t] & takes_part[previous]  # in this step and the one processed before
            assert continuing == set(range(len(continuing)))
            entries.append((offset[t], rows, len(continuing), offset[previous]))
        previous = t
    return entries


def batch_sizes_of(lengths):
    return torch.tensor([sum(n > t for n in lengths) for t in range(max(lengths))])


LENGTHS = {
    "T1-B1": (1,),
    "T1-B3": (1, 1, 1),
    "equal": (4, 4, 4),
    "unequal": (6, 4, 4, 1),
    "odd": (5, 5, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1),
    "one-long": (7, 1, 1),
}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
def test_packed_plan_is_its_definition(lengths, reverse):
    batch_sizes = batch_sizes_of(lengths)
    table = plan.layer_plan(batch_sizes, len(batch_sizes), len(lengths), reverse)
    assert table.dtype == torch.int64 and table.device.type == "cpu" and table.shape == (max(lengths), 4)
    assert [tuple(row) for row in table.tolist()] == brute_force(lengths, reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("T,B", [(1, 1), (1, 3), (5, 2), (3, 7)])
def test_dense_plan_is_its_definition(T, B, reverse):
    """batch_sizes None: B rows in each of T steps, as B sequences of length T."""
    assert plan.entries(None, T, B, reverse) == brute_force((T,) * B, reverse)


def test_packed_and_dense_plans_agree_on_equal_lengths():
    dense = plan.layer_plan(None, 4, 3, True)
    assert torch.equal(plan.layer_plan(torch.tensor([3, 3, 3, 3]), 4, 3, True), dense)


def test_plan_offsets_past_int32():
    """Offsets are int64: T * B rows can pass 2^31 (nothing that size is allocated)."""
    B = 2**31 - 1
    assert plan.entries(None, 3, B, True) == [(2 * B, B, 0, 0), (B, B, B, 2 * B), (0, B, B, B)]
    packed = plan.entries(torch.tensor([B, B, 5]), 3, B, False)
    assert packed == [(0, B, 0, 0), (B, B, B, 0), (2 * B, 5, 5, B)]


def test_entries_and_processing_order():
    entries = plan.entries(torch.tensor([2, 1]), 2, 2, True)
    assert entries[0] == plan.StepPlan(offset=2, rows=1, continuing=0, prev_offset=0)
    assert entries[1].offset == 0 and entries[1].prev_offset == 2
    assert list(plan.processing_order(3, True)) == [2, 1, 0]
    assert list(plan.processing_order(3, False)) == [0, 1, 2]


BAD_BATCH_SIZES = [  # (batch_sizes, T, B, the check_layer_args message it must raise)
    (torch.tensor([[2, 1]]), 1, 2, "batch_sizes must be a 1-D int64 CPU tensor, got 2-D"),
    (torch.tensor([2.0, 1.0]), 2, 2, "batch_sizes must be a 1-D int64 CPU tensor"),
    (torch.tensor([2, 1], dtype=torch.int32), 2, 2, "batch_sizes must be a 1-D int64 CPU tensor"),
    (torch.tensor([], dtype=torch.int64), 0, 2, "batch_sizes must not be empty"),
    (torch.tensor([3, 1]), 2, 2, r"batch_sizes\[0\] \(3\) must equal the batch size of h0 and c0 \(2\)"),
    (torch.tensor([2, 3]), 2, 2, "batch_sizes must be positive and non-increasing"),
    (torch.tensor([2, 0]), 2, 2, "batch_sizes must be positive and non-increasing"),
    (torch.tensor([2, 1]), 3, 2, r"batch_sizes must have shape \[3\], got \[2\]"),
]


@pytest.mark.parametrize("batch_sizes,T,B,message", BAD_BATCH_SIZES,
                         ids=["2-D", "float", "int32", "empty", "first", "increasing", "zero", "length"])
def test_plan_checks_batch_sizes(batch_sizes, T, B, message):
    with pytest.raises(RuntimeError, match=message):
        plan.layer_plan(batch_sizes, T, B, False)


def test_plan_checks_like_the_layer_ops():
    """The same rule and message as the layer ops (check_layer_args) for the same bad input."""
    x_proj, w_hh = torch.zeros(3, 8), torch.zeros(8, 2)
    h0 = c0 = torch.zeros(2, 2)
    for bad in (torch.tensor([2, 3]), torch.tensor([3, 0])):
        with pytest.raises(RuntimeError) as from_layer:
            ops.cpp.layer_fwd(x_proj, w_hh, h0, c0, None, bad, False, False)
        with pytest.raises(RuntimeError) as from_plan:
            plan.layer_plan(bad, 2, 2, False)
        assert str(from_plan.value).splitlines()[0] == str(from_layer.value).splitlines()[0]


@pytest.mark.parametrize("batch_sizes", [torch.tensor([3, 2, 2]), None], ids=["packed", "dense"])
def test_fake_rule_and_opcheck(batch_sizes):
    """The fake rule gives the table's shape and dtype without values (how torch.compile
    and the Triton ops' traced bodies see it); opcheck compares it with the real op."""
    T, B = 3, 3
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(batch_sizes) if batch_sizes is not None else None
        table = torch.ops.fusedlstm.layer_plan(fake, T, B, True)
        assert table.shape == (T, 4) and table.dtype == torch.int64 and table.device.type == "cpu"
    torch.library.opcheck(torch.ops.fusedlstm.layer_plan.default, (batch_sizes, T, B, True))

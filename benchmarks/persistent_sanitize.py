"""One small forward and backward of each persistent CUDA kernel (both tiers,
every number format), for compute-sanitizer (benchmarks/device_check.sh):

    compute-sanitizer --tool racecheck --kernel-name kns=persistent_ python benchmarks/persistent_sanitize.py
    compute-sanitizer --tool synccheck --kernel-name kns=persistent_ python benchmarks/persistent_sanitize.py

Every option that changes the kernels' barriers or exchanges runs: packed
input (rows that end), a projection (the second exchange), reverse (rows that
start late), 2 CTAs per batch group (H = 64), float32 (FFMA) and bfloat16
and float16 (mma.sync), the cluster tier (FUSEDLSTM_PERSISTENT=require) and
the grid tier (=grid): a layer that the kernels do not take is an error. The results are checked against the float64 oracle
too, loosely (the tests hold the tolerances), so that a run under the
sanitizer that computes garbage fails here.
"""

import os
import sys

import torch

from fusedlstm import ops, reference

T, B, H, P = 3, 8, 64, 24
LENGTHS = [3, 3, 2, 2, 2, 1, 1, 1]


def double(args):
    return [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


def main() -> int:
    if ops.cpp is None or not torch.cuda.is_available():
        print("persistent_sanitize: needs the compiled extension and a GPU")
        return 1
    gen = torch.Generator().manual_seed(0)
    batch_sizes = torch.tensor([sum(n > t for n in LENGTHS) for t in range(T)])
    rows = int(batch_sizes.sum())
    worst = 0.0
    for tier in ("require", "grid"):
        os.environ["FUSEDLSTM_PERSISTENT"] = tier  # read at each call
        worst = max(worst, run_tier(tier, gen, batch_sizes, rows))
    bound = 5e-2
    print(f"largest error {worst:.2e} (bound {bound})")
    return 0 if worst < bound else 1


def run_tier(tier, gen, batch_sizes, rows):
    worst = 0.0
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for packed, proj, reverse in ((False, False, False), (True, True, True)):
            out_size = P if proj else H

            def rand(*shape, scale=1.0):
                return (torch.randn(*shape, generator=gen) * scale).to("cuda", dtype)

            x_proj = rand(rows, 4 * H) if packed else rand(T, B, 4 * H)
            args = (x_proj, rand(4 * H, out_size, scale=out_size ** -0.5), rand(B, out_size), rand(B, H),
                    rand(out_size, H, scale=H ** -0.5) if proj else None, batch_sizes if packed else None, reverse)
            forward = ops.cpp.layer_fwd(*args, True)
            grads = [torch.randn(t.shape, generator=gen).to("cuda", dtype) for t in forward[:3]]
            bwd = (*grads, *args[1:7], forward[0], *forward[3:6])
            backward = ops.cpp.layer_bwd(*bwd)
            torch.cuda.synchronize()
            exact = reference.lstm_layer_fwd(*double(args), True)[0]
            exact_grad = reference.lstm_layer_bwd(*double(bwd))[0]
            err = max((forward[0].double() - exact).abs().max().item(),
                      (backward[0].double() - exact_grad).abs().max().item())
            worst = max(worst, err)
            print(f"{tier:7} {str(dtype):15} packed={packed!s:5} proj={proj!s:5} reverse={reverse!s:5} "
                  f"max error {err:.2e}")
    return worst


if __name__ == "__main__":
    sys.exit(main())

"""Compile the Triton WKV6 kernels for a CUDA target without a GPU (a check the interpreter cannot do).

    python -m ptbr.devtools.triton_compile_check --arch 90 --head-size 64 --dtype bf16 --num-warps 4

Runs Triton's real compiler (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the bundled ptxas) for each
kernel at the given head size, so errors that only the GPU path raises (tl.dot shapes, layouts,
constexpr misuse, shared memory) surface on a CPU-only machine. Prints one line per kernel with the
shared memory it needs. Must run in a process where TRITON_INTERPRET is off; it unsets it itself.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compile, don't interpret

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

from ptbr.ops import triton_wkv6 as tw  # noqa: E402

H100_MAX_SHARED = 227 * 1024  # opt-in shared memory per block on sm_90


def kernel_signatures(N: int, dtype: str, H: int = 32) -> dict[str, tuple[dict[str, str], dict[str, object]]]:
    """(argument types, constexprs) for each kernel, as the launchers in triton_wkv6 pass them."""
    io = f"*{dtype}"
    bv_scan, bv_out = tw._scan_block(N), min(N, 64)
    return {
        "_fwd_state_kernel": (
            {"k_ptr": io, "v_ptr": io, "w_ptr": io, "s0_ptr": "*fp32", "h_ptr": "*fp32", "T": "i32"},
            {"H": H, "N": N, "BT": tw.CHUNK, "BV": bv_scan, "HAS_S0": True}),
        "_fwd_output_kernel": (
            {"r_ptr": io, "k_ptr": io, "v_ptr": io, "w_ptr": io, "u_ptr": io, "h_ptr": "*fp32", "y_ptr": io,
             "T": "i32"},
            {"H": H, "N": N, "BT": tw.CHUNK, "BC": tw.SUB_CHUNK, "BV": bv_out}),
        "_bwd_state_kernel": (
            {"r_ptr": io, "w_ptr": io, "dy_ptr": io, "dsT_ptr": "*fp32", "dh_ptr": "*fp32", "ds0_ptr": "*fp32",
             "T": "i32"},
            {"H": H, "N": N, "BT": tw.CHUNK, "BV": bv_scan, "HAS_DST": True, "STORE_DS0": True}),
        "_bwd_grad_kernel": (
            {"r_ptr": io, "k_ptr": io, "v_ptr": io, "w_ptr": io, "u_ptr": io, "dy_ptr": io, "h_ptr": "*fp32",
             "dh_ptr": "*fp32", "dr_ptr": io, "dk_ptr": io, "dv_ptr": io, "dw_ptr": io, "du_ptr": "*fp32",
             "T": "i32"},
            {"H": H, "N": N, "BT": tw.CHUNK, "BC": tw.SUB_CHUNK}),
    }


def compile_kernels(N: int = 64, dtype: str = "bf16", arch: int = 90, num_warps: int = 4) -> dict[str, int]:
    """Compile every kernel for ``sm_<arch>``; returns the shared memory (bytes) each one needs."""
    target = GPUTarget("cuda", arch, 32)
    shared = {}
    for name, (types, consts) in kernel_signatures(N, dtype).items():
        kernel = getattr(tw, name)
        fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
        signature = {**types, **{k: "constexpr" for k in consts}}
        constexprs = {(fn.arg_names.index(k),): v for k, v in consts.items()}
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target,
                                  options={"num_warps": num_warps, "num_stages": 2})
        shared[name] = compiled.metadata.shared
    return shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 (A100), 90 (H100)")
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--num-warps", type=int, default=4)
    args = ap.parse_args()
    shared = compile_kernels(args.head_size, args.dtype, args.arch, args.num_warps)
    for name, nbytes in shared.items():
        print(f"{name}: compiled for sm_{args.arch}, shared memory {nbytes} bytes")
    if max(shared.values()) > H100_MAX_SHARED:
        sys.exit(f"a kernel needs more than {H100_MAX_SHARED} bytes of shared memory")


if __name__ == "__main__":
    main()

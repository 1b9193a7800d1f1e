"""Compile the Triton WKV6 kernels for a CUDA target without a GPU (a check the interpreter cannot do).

    python -m ptbr.devtools.triton_compile_check --arch 90 --head-size 32,64,128 --dtype bf16

Runs Triton's real compiler (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the bundled ptxas) for each
kernel at the given head sizes, with the launch configuration ``ptbr.ops.triton_wkv6.LAUNCH_CONFIGS``
gives it, so errors that only the GPU path raises (tl.dot shapes, layouts, constexpr misuse, shared
memory) surface on a CPU-only machine. Prints one line per kernel: compile time, registers and spills
(ptxas's report), shared memory. Must run in a process where TRITON_INTERPRET is off; it unsets it itself.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compile, don't interpret
# a cache of its own: every kernel is compiled (and timed) for real, never read back from an earlier run
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="ptbr-compile-check-")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

from ptbr.ops import triton_wkv6 as tw  # noqa: E402

H100_MAX_SHARED = 227 * 1024  # opt-in shared memory per block on sm_90


@dataclass
class CompileReport:
    """What the sm_90 compiler says about one kernel: its cost to build and its register use."""

    kernel: str
    head_size: int
    num_warps: int
    seconds: float
    shared_bytes: int
    registers: int | None
    spill_store_bytes: int | None
    spill_load_bytes: int | None

    def line(self, arch: int) -> str:
        spills = "?" if self.spill_store_bytes is None else f"{self.spill_store_bytes}/{self.spill_load_bytes}"
        return (
            f"{self.kernel} N={self.head_size}: compiled for sm_{arch} in {self.seconds:.1f} s, {self.num_warps} "
            f"warps, {self.registers} registers, spill stores/loads {spills} bytes, shared memory "
            f"{self.shared_bytes} bytes"
        )


def kernel_signatures(N: int, dtype: str) -> dict[str, tuple[dict[str, str], dict[str, object]]]:
    """(argument types, constexprs) for each kernel, as the launchers in triton_wkv6 pass them."""
    io = f"*{dtype}"
    bv_scan, bv_out = tw._scan_block(N), min(N, 64)
    sizes = {"T": "i32", "H": "i32", "T_BUCKET": "i32"}  # runtime integers (not specialised)
    return {
        "_fwd_state_kernel": (
            {"k_ptr": io, "v_ptr": io, "w_ptr": io, "s0_ptr": "*fp32", "h_ptr": "*fp32", **sizes},
            {"N": N, "BT": tw.CHUNK, "BV": bv_scan, "HAS_S0": True},
        ),
        "_fwd_output_kernel": (
            {"r_ptr": io, "k_ptr": io, "v_ptr": io, "w_ptr": io, "u_ptr": io, "h_ptr": "*fp32", "y_ptr": io, **sizes},
            {"N": N, "BT": tw.CHUNK, "BC": tw.SUB_CHUNK, "BV": bv_out},
        ),
        "_bwd_state_kernel": (
            {
                "r_ptr": io,
                "w_ptr": io,
                "dy_ptr": io,
                "dsT_ptr": "*fp32",
                "dh_ptr": "*fp32",
                "ds0_ptr": "*fp32",
                **sizes,
            },
            {"N": N, "BT": tw.CHUNK, "BV": bv_scan, "HAS_DST": True, "STORE_DS0": True},
        ),
        "_bwd_grad_kernel": (
            {
                "r_ptr": io,
                "k_ptr": io,
                "v_ptr": io,
                "w_ptr": io,
                "u_ptr": io,
                "dy_ptr": io,
                "h_ptr": "*fp32",
                "dh_ptr": "*fp32",
                "dr_ptr": io,
                "dk_ptr": io,
                "dv_ptr": io,
                "dw_ptr": io,
                "du_ptr": "*fp32",
                **sizes,
            },
            {"N": N, "BT": tw.CHUNK, "BC": tw.SUB_CHUNK},
        ),
    }


def _ptxas_figures(log: str) -> tuple[int | None, int | None, int | None]:
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return (
        int(regs.group(1)) if regs else None,
        int(spills.group(1)) if spills else None,
        int(spills.group(2)) if spills else None,
    )


def compile_kernels(
    N: int = 64, dtype: str = "bf16", arch: int = 90, num_warps: int | None = None
) -> list[CompileReport]:
    """Compile every kernel for ``sm_<arch>`` with the configuration the launcher uses (``num_warps``
    overrides it); ptxas's own report gives registers and spills."""
    target = GPUTarget("cuda", arch, 32)
    triton.knobs.nvidia.dump_ptxas_log = True  # ptxas runs with -v; this prints its report (captured below)
    reports = []
    for name, (types, consts) in kernel_signatures(N, dtype).items():
        kernel = getattr(tw, name)
        fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
        signature = {**types, **{k: "constexpr" for k in consts}}
        constexprs = {(fn.arg_names.index(k),): v for k, v in consts.items()}
        warps, stages = tw.LAUNCH_CONFIGS[name][N]
        warps = num_warps or warps
        log = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                target=target,
                options={"num_warps": warps, "num_stages": stages},
            )
        seconds = time.perf_counter() - t0
        figures = _ptxas_figures(log.getvalue())
        reports.append(CompileReport(name, N, warps, seconds, compiled.metadata.shared, *figures))
    return reports


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 (A100), 90 (H100)")
    ap.add_argument("--head-size", default="64", help="one or more, comma-separated: 16,32,64,128")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--num-warps", type=int, default=None, help="instead of the launcher's configuration")
    ap.add_argument("--json", default=None, help="also write the reports here")
    args = ap.parse_args()
    reports = []
    for N in (int(n) for n in args.head_size.split(",")):
        for report in compile_kernels(N, args.dtype, args.arch, args.num_warps):
            print(report.line(args.arch), flush=True)
            reports.append(report)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    shutil.rmtree(os.environ["TRITON_CACHE_DIR"], ignore_errors=True)
    if max(r.shared_bytes for r in reports) > H100_MAX_SHARED:
        sys.exit(f"a kernel needs more than {H100_MAX_SHARED} bytes of shared memory")


if __name__ == "__main__":
    main()

"""A performance model of the CUDA kernels on an H100, computed without a GPU.

:mod:`~batchnorm_lib.model.h100` holds the device figures and the occupancy, wave and time
arithmetic; :mod:`~batchnorm_lib.model.sass` reads what nvcc and the disassembler say about a
kernel; :func:`analyze_kernel` puts them together for one launch configuration. Every figure it
gives is modelled, none measured.
"""

from batchnorm_lib.model import h100
from batchnorm_lib.model.sass import ToolError, compile_cubin, disassemble, find_tool, loads_in_flight


def _dims(value):
    dims = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),)
    if not 1 <= len(dims) <= 3 or any(d < 1 for d in dims):
        raise ValueError("launch dimensions are 1 to 3 positive integers, got %r" % (value,))
    total = 1
    for d in dims:
        total *= d
    return dims, total


def analyze_kernel(source, kernel, grid, block, shared_bytes=0, dram_bytes=None,
                   latency=h100.LATENCY, arch="sm_90", options=(), tiles=None):
    """Every modelled figure of one launch of ``kernel`` from the .cu file ``source`` on an H100:
    ptxas resources, occupancy, waves, loads and bytes in flight, bandwidth fraction across the
    latency range, and, given ``dram_bytes``, the modelled time. ``shared_bytes`` is the launch's
    dynamic shared memory; ``tiles``, for a grid of resident blocks that walks more work than one
    block each, that work in blocks (h100.waves)."""
    grid_dims, grid_blocks = _dims(grid)
    block_dims, block_threads = _dims(block)
    cubin, resources = compile_cubin(source, arch, options)
    if kernel not in resources:
        raise ToolError("no kernel %r in %s (entries: %s)"
                        % (kernel, source, ", ".join(sorted(resources)) or "none"))
    res = resources[kernel]
    shared = res["shared_bytes"] + int(shared_bytes)
    occ = h100.occupancy(res["registers"], block_threads, shared)
    waves, tail = h100.waves(grid_blocks, occ["blocks_per_sm"], tiles)
    insns, labels = disassemble(cubin, kernel)
    flight = loads_in_flight(insns, labels)
    resident = h100.resident_threads_per_sm(grid_blocks, block_threads, occ["blocks_per_sm"])
    per_sm = int(round(flight["bytes"] * resident))
    out = {
        "kernel": kernel, "arch": arch, "grid": list(grid_dims), "block": list(block_dims),
        "registers": res["registers"], "shared_bytes": shared,
        "spill_stores": res["spill_stores"], "spill_loads": res["spill_loads"],
        "blocks_per_sm": occ["blocks_per_sm"], "occupancy_limited_by": occ["limited_by"],
        "occupancy": occ["occupancy"], "waves": waves, "tail_wave_fill": tail,
        "loads_in_flight_per_thread": flight["loads"],
        "bytes_in_flight_per_thread": flight["bytes"],
        "widest_load_bytes": flight["max_load_bytes"],
        "resident_threads_per_sm": int(round(resident)), "bytes_in_flight_per_sm": per_sm,
        "latency_ns": latency * 1e9,
        "bandwidth_fraction": h100.bandwidth_fraction(per_sm, latency),
    }
    for lat in h100.LATENCY_RANGE:
        out["bandwidth_fraction_%dns" % round(lat * 1e9)] = h100.bandwidth_fraction(per_sm, lat)
    if dram_bytes is not None:
        out["dram_bytes"] = int(dram_bytes)
        out["modelled_time_us"] = h100.launch_time(dram_bytes, per_sm, latency) * 1e6
    return out


__all__ = ["ToolError", "analyze_kernel", "compile_cubin", "disassemble", "find_tool", "h100",
           "loads_in_flight"]

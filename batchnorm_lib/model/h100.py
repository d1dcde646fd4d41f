"""The H100 figures the model uses, in one place, and the arithmetic built on them: occupancy,
waves, and the modelled time of a launch.

Every number here is a modelled figure for an H100 SXM (sm_90); nothing is measured on a GPU.

- ``SMS``, ``REGISTERS_PER_SM``, ``MAX_THREADS_PER_SM``, ``MAX_BLOCKS_PER_SM``,
  ``SHARED_PER_SM``, ``SHARED_PER_BLOCK_MAX``, ``RESERVED_SHARED_PER_BLOCK``: the compute
  capability 9.0 limits of the CUDA programming guide's "technical specifications per compute
  capability" table, for the 132-SM H100 SXM5.
- ``REGISTER_UNIT``: registers are allocated per warp in units of 256 (8 per thread), as the
  CUDA occupancy calculator does for compute capability 7.0 and later.
- ``PEAK_BANDWIDTH``: 3.35 TB/s, the HBM3 figure NVIDIA publishes for the H100 SXM.
- ``ACHIEVABLE_BANDWIDTH``: 3.0 TB/s, about 90% of peak, what a streaming copy reaches.
- ``LATENCY`` (and the ``LATENCY_RANGE`` the report sweeps): loaded DRAM latency, 600-800 ns,
  700 ns by default. By Little's law a device keeps ``bandwidth x latency`` bytes in flight to
  reach a bandwidth: 3.0 TB/s x 700 ns = 2.1 MB, about 16 KB per SM.
- ``LAUNCH_COST``: 2 us per kernel launch, the gap between dependent launches in one stream.
"""

import math

SMS = 132
REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256           # registers per warp are allocated in units of this many
MAX_REGISTERS_PER_THREAD = 255
MAX_THREADS_PER_SM = 2048
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCKS_PER_SM = 32
WARP = 32
SHARED_PER_SM = 228 * 1024
SHARED_PER_BLOCK_MAX = 227 * 1024
RESERVED_SHARED_PER_BLOCK = 1024  # the runtime's own shared memory per resident block
SHARED_UNIT = 128             # shared memory is allocated per block in units of this many bytes
L2_BYTES = 50 * 1024 * 1024

PEAK_BANDWIDTH = 3.35e12      # bytes/s
ACHIEVABLE_BANDWIDTH = 3.0e12  # bytes/s
LATENCY = 700e-9              # s
LATENCY_RANGE = (600e-9, 800e-9)
LAUNCH_COST = 2e-6            # s


def _round_up(value, unit):
    return -(-value // unit) * unit


def occupancy(registers, block_threads, shared_bytes=0):
    """Resident blocks per SM, the limiting resource and the occupancy (resident warps / 64) of a
    kernel using ``registers`` per thread and ``shared_bytes`` (static + dynamic) per block."""
    if block_threads < 1 or block_threads > MAX_THREADS_PER_BLOCK:
        raise ValueError("a block holds 1..%d threads, got %d" % (MAX_THREADS_PER_BLOCK,
                                                                 block_threads))
    if shared_bytes > SHARED_PER_BLOCK_MAX:
        raise ValueError("%d bytes of shared memory exceed the %d a block can have"
                         % (shared_bytes, SHARED_PER_BLOCK_MAX))
    warps = -(-block_threads // WARP)
    limits = {"blocks": MAX_BLOCKS_PER_SM, "threads": (MAX_THREADS_PER_SM // WARP) // warps}
    regs_per_warp = _round_up(max(registers, 1) * WARP, REGISTER_UNIT)
    limits["registers"] = (REGISTERS_PER_SM // regs_per_warp) // warps
    per_block = _round_up(shared_bytes, SHARED_UNIT) + RESERVED_SHARED_PER_BLOCK
    limits["shared memory"] = SHARED_PER_SM // per_block
    limiter = min(limits, key=lambda k: (limits[k], k != "blocks"))
    blocks = limits[limiter]
    return {"blocks_per_sm": blocks, "limited_by": limiter,
            "occupancy": blocks * warps * WARP / MAX_THREADS_PER_SM}


def waves(grid_blocks, blocks_per_sm, tiles=None):
    """(waves, fill of the last wave in 0..1] for ``grid_blocks`` blocks; or, given ``tiles``, for
    a grid whose resident blocks walk ``tiles`` blocks' worth of work in turn (persistent grids:
    the NCHW reductions' tiles, the single-read kernels' channel groups), counted over the slots
    the grid fills: a grid of one resident wave walking 15.5 tiles a block is 15.5 waves, its
    last half full."""
    slots = blocks_per_sm * SMS
    if slots == 0:
        return math.inf, 0.0
    work = grid_blocks
    if tiles is not None:
        slots, work = min(slots, grid_blocks), tiles
    full, rest = divmod(work, slots)
    return work / slots, (rest / slots if rest else 1.0)


def resident_threads_per_sm(grid_blocks, block_threads, blocks_per_sm):
    """Threads resident per SM averaged over the launch: every wave slot but the tail's is full,
    and a grid smaller than one wave spreads over the SMs it has."""
    slots = blocks_per_sm * SMS
    if slots == 0 or grid_blocks == 0:
        return 0.0
    wave_count = -(-grid_blocks // slots)
    return grid_blocks * block_threads / (wave_count * SMS)


def launch_time(dram_bytes, bytes_in_flight_per_sm, latency=LATENCY, launches=1):
    """Modelled seconds for ``dram_bytes`` moved with ``bytes_in_flight_per_sm`` outstanding:
    the slower of the bandwidth bound and Little's law, plus the per-launch cost."""
    stream = dram_bytes / ACHIEVABLE_BANDWIDTH
    if bytes_in_flight_per_sm > 0:
        latency_bound = dram_bytes * latency / (bytes_in_flight_per_sm * SMS)
    else:
        latency_bound = math.inf if dram_bytes else 0.0
    return max(stream, latency_bound) + launches * LAUNCH_COST


def bandwidth_fraction(bytes_in_flight_per_sm, latency=LATENCY):
    """Fraction of the achievable bandwidth a streaming launch reaches with this many bytes in
    flight per SM (launch cost aside): min(1, in flight / (bandwidth x latency))."""
    need = ACHIEVABLE_BANDWIDTH * latency / SMS
    return min(1.0, bytes_in_flight_per_sm / need)

"""Write units of an encoder's embeddings: blocks of rows, and their split among ranks.

A *block* is ``block_rows`` consecutive cells (a multiple of the data chunk rows), so two
writers of different blocks never touch the same stored chunk. A block is written whole
and then marked done; the done marks are what make resuming exact.
"""

from __future__ import annotations


def n_blocks(n_rows: int, block_rows: int) -> int:
    """Number of blocks covering ``n_rows`` rows."""
    if block_rows <= 0:
        raise ValueError(f"block_rows must be positive, got {block_rows}")
    return (n_rows + block_rows - 1) // block_rows


def block_range(block: int, n_rows: int, block_rows: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``block``."""
    start = block * block_rows
    if block < 0 or start >= n_rows:
        raise IndexError(f"block {block} out of range for {n_rows} rows")
    return start, min(start + block_rows, n_rows)


def chunks_for_rank(n_chunks: int, rank: int = 0, world: int = 1) -> list[int]:
    """The blocks rank ``rank`` of ``world`` writes: round-robin, disjoint, covering all.

    The split depends only on ``(n_chunks, rank, world)``, never on what is already done,
    so every rank of a job agrees on it without talking; each rank skips its done blocks.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return list(range(rank, n_chunks, world))

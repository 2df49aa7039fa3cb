"""`evaluate` and `certify` under `torchrun --nproc_per_node=N`: each rank measures a shard of the images,
the ranks' counts are gathered, and every rank builds the same report, which rank 0 alone writes.

Sharding. evaluate deals whole chunks round-robin: chunk c (``batch_size`` consecutive images of the
ordered sample list) goes to rank c % N. An attack draws its noise for a whole chunk at once, so a chunk must
hold the same images, with the same seed (its first sample's index), as in one process: then every count
is the same. certify deals single images round-robin (image i to rank i % N); its noise is seeded per image
index. Reduction: the ranks' small results (evaluate's tallies of counts, up to 4 example images each and
the unreadable files; certify's per-image records) are exchanged with ``all_gather_object`` and merged in
sample order. Resume: each rank keeps its own progress in ``OUT/shard-R-of-N/``, continued by a run with
the same N. Without ``WORLD_SIZE`` (a single process) none of this runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..distributed import Dist
from ..errors import OutDirError
from .cascade import AttackTally, Tally
from .config import N_EXAMPLES
from .state import CERTIFY_LOG, STATE_FILE, prepare_out_dir

T = TypeVar("T")


def state_dir(out: Path, d: Dist) -> Path:
    """Where this rank keeps its resumable progress: the report folder itself in a single process."""
    return out if d.world == 1 else prepare_out_dir(out / f"shard-{d.rank}-of-{d.world}")


def saved_worlds(out: Path) -> set[int]:
    """How many processes saved the progress kept in the report folder `out` (1: a single process)."""
    worlds = {1} if (out / STATE_FILE).is_file() or (out / CERTIFY_LOG).is_file() else set()
    for folder in out.glob("shard-*-of-*"):
        match = re.fullmatch(r"shard-\d+-of-(\d+)", folder.name)
        if match and folder.is_dir() and any(folder.iterdir()):
            worlds.add(int(match.group(1)))
    return worlds


def check_resumable(out: Path, d: Dist) -> None:
    """OutDirError when `out` holds progress saved by another number of processes than this run's: it would
    otherwise be ignored, and hours of work started over without a word."""
    saved = saved_worlds(out)
    if saved and d.world not in saved:
        (world,) = sorted(saved)[:1]
        how = "in a single process" if world == 1 else f"under torchrun --nproc_per_node={world}"
        raise OutDirError(
            f"{out} holds progress saved by {world} process(es), this run has {d.world}: resume it {how}, "
            "or run without --resume to start over"
        )


def remove_state_dir(path: Path, d: Dist) -> None:
    if d.world > 1:
        with contextlib.suppress(OSError):  # emptied by the caller; a file someone else put there stays
            path.rmdir()


# ------------------------------------------------------------------------------------------------ evaluate


def deal_chunks(n: int, batch_size: int, d: Dist) -> list[int]:
    """Indices (of n ordered samples) of this rank's chunks: chunk c goes to rank c % world."""
    return [
        i
        for start in range(d.rank * batch_size, n, d.world * batch_size)
        for i in range(start, min(start + batch_size, n))
    ]


def chunk_offset(batch_size: int, d: Dist) -> Callable[[int], int]:
    """Maps the position of a chunk in this rank's shard to its position in the whole sample list."""
    return lambda local: (local // batch_size * d.world + d.rank) * batch_size


def merge_tallies(tallies: Sequence[Tally]) -> Tally:
    """The sum of the ranks' counts (flags are left empty: they come from one chunk, see ``run``)."""
    total = Tally()
    for t in tallies:
        total.n, total.clean, total.top5 = total.n + t.n, total.clean + t.clean, total.top5 + t.top5
        for name in ("per_class", "per_class_correct", "confused", "corrupt", "ensemble", "black_box_only"):
            getattr(total, name).update(getattr(t, name))  # update adds, keeping zero counts
        for key, rec in t.attacks.items():
            total.attacks[key] = _add(total.attacks[key], rec)
        total.images.update(t.images)
    return total


def _add(a: AttackTally, b: AttackTally) -> AttackTally:
    return AttackTally(*(x + y for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b), strict=True)))


def merge_examples(per_rank: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The examples one process would pick: chunk by chunk in sample order, as many as still fit.

    One process takes the first k of a chunk's ranked candidates with k the room left; a rank has had at
    least as much room left at each of its chunks, so its picks hold those k (each rank keeps ``at``, the
    chunk's first sample index, on its examples).
    """
    by_chunk: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for examples in per_rank:
        for ex in examples:
            by_chunk[ex["at"]].append(ex)
    out: list[dict[str, Any]] = []
    for at in sorted(by_chunk):
        out += by_chunk[at][: N_EXAMPLES - len(out)]
    return out


# ------------------------------------------------------------------------------------------------ certify


def interleave(per_rank: Sequence[list[T]]) -> list[T]:
    """Items dealt round-robin (item i to rank i % world) back in their original order."""
    n = sum(map(len, per_rank))
    return [per_rank[i % len(per_rank)][i // len(per_rank)] for i in range(n)]

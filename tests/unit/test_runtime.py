"""Process-level settings: the glibc allocator keeps large freed buffers mapped; progress off a terminal."""

from __future__ import annotations

import pytest

# malloc, touch and free 1.3 GB three times in a fresh process: above the 1.2 GB trim threshold that
# mallopt received when the value was passed as 100_000_000_000 (masked to a C int)


# a 300 MB block malloc'ed, touched and freed in a thread, then in the main thread


def test_stage_progress_prints_one_line_per_stage_off_a_terminal(capsys: pytest.CaptureFixture) -> None:
    from birdshield.runtime import stage_progress

    with stage_progress("evaluate") as update:
        update("pgd eps=2/255", 0, 64)
        update("pgd eps=2/255", 0, 64)  # the same stage again: no new line
        update("square eps=2/255", 32, 64)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("evaluate: pgd eps=2/255 (0/64 images done")
    assert lines[1].startswith("evaluate: square eps=2/255 (32/64 images done")

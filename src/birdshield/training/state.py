"""Where a run stands after its last finished epoch: saved in the resume file, so --resume goes on."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainState:
    epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the last improvement (early stop at cfg.patience)
    history: list[dict] = field(default_factory=list)  # one row of history.csv per epoch

    def record(self, score: float, epoch: int) -> bool:
        """Count an epoch's validation score; True when it beats every earlier one."""
        improved = score > self.best_score
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        if improved:
            self.best_score, self.best_epoch = score, epoch
        return improved

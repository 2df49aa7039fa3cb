"""Saved progress of long evaluations, so that a killed `evaluate` or `certify` continues with ``resume``.

evaluate writes ``OUT/state.json`` (the tallies, attack plan, examples' labels, unreadable files, samples
read, seconds) after every chunk, and ``OUT/examples.safetensors`` (the example images) whenever an
example is added; certify appends one line per image to ``OUT/certify.jsonl``. Writes are atomic (or, for
the log, a line cut short by a kill is dropped on reading); nothing is pickled. Every state file carries a
fingerprint of what is measured (the config, the model's weights, the chosen samples), and resuming with a
different one is refused. The state files also hold a digest of the bytes of each image already measured
(``content_digest``), checked when resuming: an image replaced under the same name is named and refused,
since its results would no longer be its own. The state files are removed once the report is written.

Per-chunk seeds depend only on the chunk's first sample index (and certify's per-image seeds on the image's
index), so a resumed run gives the numbers of an uninterrupted one. Under torchrun each rank keeps its own
progress (``sharding.state_dir``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .. import data
from ..data.images import read_image_bytes
from ..errors import OutDirError
from ..runtime import atomic_write_bytes, atomic_write_json
from .cascade import AttackTally, Tally

STATE_FILE = "state.json"
EXAMPLES_FILE = "examples.safetensors"
CERTIFY_LOG = "certify.jsonl"
_FORMAT = 4  # 2: per-class counts, top-5 and confusions in the tally; 3: image digests; 4: per-image outcomes
_LOG_FORMAT = 2  # certify.jsonl: 2: each record carries its image's digest
log = logging.getLogger(__name__)


def prepare_out_dir(path: str | Path) -> Path:
    """Create the report folder and prove it writable (before hours of computing, not after)."""
    out = Path(path)
    probe = out / f".birdshield-write-test-{os.getpid()}"  # per process: torchrun's ranks probe at once
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(probe, b"")
        probe.unlink()
    except OSError as e:
        raise OutDirError(f"cannot write to the report folder {out}: {e.strerror or e}") from e
    return out


# ------------------------------------------------------------------------------------------ fingerprints


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What identifies a model: its metadata and a digest of its weights (any device, any memory layout)."""
    meta = getattr(model, "meta", {})
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        flat = t.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    fingerprint = {
        "arch": meta.get("arch"),
        "classes": list(getattr(model, "class_names", None) or []),
        "image_size": meta.get("image_size"),
        "defense": meta.get("defense"),
        "weights": digest.hexdigest(),
    }
    if getattr(model, "digest", None):  # an ONNX session (export.OnnxClassifier): no state_dict to hash
        fingerprint["onnx"] = model.digest
    return fingerprint


def samples_digest(samples: Sequence[data.Sample]) -> str:
    """The sample list (paths and labels; a path that is not UTF-8 as its own bytes)."""
    text = "".join(f"{s.path}\t{s.label}\n" for s in samples)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def content_digest(path: Path) -> str:
    """What the model saw of an image file: the sha256 of the bytes the decoder reads, or why there are none
    (the file is then an unreadable one, and stays so while the reason holds)."""
    try:
        return hashlib.sha256(read_image_bytes(path)).hexdigest()
    except data.BadImageError as e:
        return f"unreadable: {e.reason}"


def check_contents(state: Path, samples: Sequence[data.Sample], digests: Sequence[str]) -> None:
    """OutDirError naming the first of `samples` whose bytes are not those their saved results came from
    (`digests`, in order, as saved in the progress file `state`)."""
    if len(digests) != len(samples):
        raise OutDirError(
            f"{state} is damaged ({len(digests)} image digests for {len(samples)} images); "
            "run without --resume to start over"
        )
    for sample, saved in zip(samples, digests, strict=True):
        if content_digest(sample.path) != saved:
            raise OutDirError(
                f"{sample.path} changed since its results were saved in {state}: put the original back, or "
                "run without --resume to start over"
            )


def _normalised(fingerprint: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(fingerprint))  # tuples -> lists, as read back from a file


def _check(path: Path, saved: Any, fingerprint: dict[str, Any]) -> None:
    expected = _normalised(fingerprint)
    if saved == expected:
        return
    differ = [k for k in expected if not isinstance(saved, dict) or saved.get(k) != expected[k]]
    raise OutDirError(
        f"{path} holds the progress of another run ({', '.join(differ) or 'format'} differ); "
        "run without --resume to start over, or choose another --out"
    )


# ------------------------------------------------------------------------------------------ evaluate


@dataclass
class Progress:
    """Everything an evaluation has gathered so far; ``examples`` is None when none are collected."""

    tally: Tally = field(default_factory=Tally)
    plan: list[str] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    examples: list[dict[str, Any]] | None = None
    bad_images: list[dict[str, str]] = field(default_factory=list)
    samples_done: int = 0  # samples read so far, readable or not
    contents: list[str] = field(default_factory=list)  # content_digest of each of them, in order
    checked_at: int = 0  # first sample index of the chunk the one-chunk model checks (flags) ran on
    seconds: float = 0.0


def _tally_json(t: Tally) -> dict[str, Any]:
    return {
        "n": t.n,
        "clean": t.clean,
        "top5": t.top5,
        "per_class": list(t.per_class.items()),
        "per_class_correct": list(t.per_class_correct.items()),
        "confused": dict(t.confused),
        "corrupt": dict(t.corrupt),
        "attacks": [[e, name, dataclasses.asdict(rec)] for (e, name), rec in t.attacks.items()],
        "ensemble": list(t.ensemble.items()),
        "black_box_only": list(t.black_box_only.items()),
        "flags": t.flags,
        "images": t.images,
    }


def _tally_from(d: dict[str, Any]) -> Tally:
    attacks: defaultdict = defaultdict(AttackTally)
    for e, name, rec in d["attacks"]:
        attacks[(e, name)] = AttackTally(**rec)
    return Tally(
        n=d["n"],
        clean=d["clean"],
        top5=d["top5"],
        per_class=Counter(dict(d["per_class"])),
        per_class_correct=Counter(dict(d["per_class_correct"])),
        confused=Counter(d["confused"]),
        corrupt=Counter(d["corrupt"]),
        attacks=attacks,
        ensemble=Counter(dict(d["ensemble"])),
        black_box_only=Counter(dict(d["black_box_only"])),
        flags=d["flags"],
        images=d["images"],
    )


def save_progress(out: Path, fingerprint: dict[str, Any], p: Progress) -> None:
    """Write the progress atomically. The images go first: state.json lists how many of them are valid."""
    examples = p.examples or []
    tensors = {f"{key}.{i}": ex[key].contiguous() for i, ex in enumerate(examples) for key in ("x", "x_adv")}
    if tensors:
        atomic_write_bytes(out / EXAMPLES_FILE, safetensors.torch.save(tensors))
    labels = [{k: ex[k] for k in ("label", "clean", "adv", "eps", "at") if k in ex} for ex in examples]
    state = {
        "format": _FORMAT,
        "fingerprint": fingerprint,
        "tally": _tally_json(p.tally),
        "plan": p.plan,
        "skipped": p.skipped,
        "examples": None if p.examples is None else labels,
        "bad_images": p.bad_images,
        "samples_done": p.samples_done,
        "contents": p.contents,
        "checked_at": p.checked_at,
        "seconds": p.seconds,
    }
    atomic_write_json(out / STATE_FILE, state)


def load_progress(out: Path, fingerprint: dict[str, Any]) -> Progress | None:
    """The progress saved in ``out``; None (with a warning) when there is none. OutDirError when it was
    saved by another evaluation."""
    path = out / STATE_FILE
    if not path.is_file():
        log.warning("no saved progress in %s: starting from the beginning", out)
        return None
    state = json.loads(path.read_text())
    _check(path, state.get("fingerprint") if state.get("format") == _FORMAT else None, fingerprint)
    examples = state["examples"]
    if examples:
        tensors = safetensors.torch.load((out / EXAMPLES_FILE).read_bytes())
        examples = [
            {"x": tensors[f"x.{i}"], "x_adv": tensors[f"x_adv.{i}"], **ex}
            | {"clean": tuple(ex["clean"]), "adv": tuple(ex["adv"])}
            for i, ex in enumerate(examples)
        ]
    return Progress(
        tally=_tally_from(state["tally"]),
        plan=state["plan"],
        skipped=state["skipped"],
        examples=examples,
        bad_images=state["bad_images"],
        samples_done=state["samples_done"],
        contents=state["contents"],
        checked_at=state.get("checked_at", 0),
        seconds=state["seconds"],
    )


def clear_progress(out: Path) -> None:
    for name in (STATE_FILE, EXAMPLES_FILE):
        (out / name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ certify


class CertifyLog:
    """``OUT/certify.jsonl``: a fingerprint line, then one record per certified image in sample order, each
    with its image's ``content_digest``.

    Opening it with ``resume`` reads the records back (a last line cut short by a kill is dropped) and
    rewrites the file cleanly; without ``resume`` it starts empty. ``records`` are the records without their
    digests, ``digests`` those digests. ``append`` adds a line and fsyncs it.
    """

    def __init__(self, out: Path, fingerprint: dict[str, Any], resume: bool) -> None:
        self.path = out / CERTIFY_LOG
        lines = self._read(fingerprint) if resume else []
        self.records = [{k: v for k, v in line.items() if k != "sha256"} for line in lines]
        self.digests = [line["sha256"] for line in lines]
        head = {"format": _LOG_FORMAT, "fingerprint": fingerprint}
        atomic_write_bytes(self.path, "".join(json.dumps(line) + "\n" for line in [head, *lines]).encode())

    def _read(self, fingerprint: dict[str, Any]) -> list[dict[str, Any]]:
        if not self.path.is_file():
            log.warning("no saved progress in %s: starting from the beginning", self.path.parent)
            return []
        text = self.path.read_text()
        lines = text.split("\n")[:-1]  # the part after the last newline is a cut-short line (or empty)
        try:
            head, *records = [json.loads(line) for line in lines]
        except ValueError as e:
            raise OutDirError(f"{self.path} is damaged ({e}); run without --resume to start over") from e
        current = head.get("format") == _LOG_FORMAT
        _check(self.path, head.get("fingerprint") if current else None, fingerprint)
        if not all(isinstance(r, dict) and "sha256" in r for r in records):
            raise OutDirError(f"{self.path} is damaged (a record without its digest); run without --resume")
        return records

    def append(self, record: dict[str, Any], digest: str) -> None:
        """Log `record`, made from an image whose content_digest is `digest`."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "sha256": digest}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

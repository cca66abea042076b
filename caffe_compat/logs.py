"""Training logs: a CSV file, TensorBoard scalars when available, and a tqdm progress bar.

One CSV row per iteration: ``iter`` (the iteration as Caffe's display names
it, i.e. before the update), ``loss`` (that iteration's loss, averaged over
``iter_size``), ``smoothed_loss`` (Solver::UpdateSmoothedLoss), ``lr`` (the
rate the update used), ``seconds`` (wall time since the run first started,
carried over a resume), then one column per test-net output value,
``test<i>/<blob>`` (``[k]`` appended for blobs of several values), filled on
the rows of the iterations that tested.  The test after the last iteration
gets a row of its own with an empty loss.

The file is appended one flushed row at a time.  A resumed run first
rewrites it (atomically) keeping only complete rows of iterations before the
resume point, so a run killed mid-row or after its last snapshot leaves no
stray lines behind.

TensorBoard is optional: ``torch.utils.tensorboard`` needs the
``tensorboard`` package, which caffekt does not require; without it only the
CSV is written.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .files import atomic_output
from .errors import CaffeFormatError

BASE_COLUMNS = ["iter", "loss", "smoothed_loss", "lr", "seconds"]


def log_path(prefix: str) -> str:
    """The CSV beside the snapshots: ``<snapshot_prefix>_log.csv``."""
    return prefix + "_log.csv"


def test_columns(test_nets: Sequence, compute_loss: bool = False) -> List[str]:
    """Column names for each test net's outputs, in the order ``Solver.test`` reports them."""
    cols = []
    for i, entry in enumerate(test_nets):
        net = entry[0] if isinstance(entry, tuple) else entry
        for name in net.outputs:
            n = int(np.prod(net.blob_shapes.get(name, (1,)), dtype=np.int64))
            cols += [f"test{i}/{name}"] if n == 1 else [f"test{i}/{name}[{k}]" for k in range(n)]
        if compute_loss:
            cols.append(f"test{i}/loss")
    return cols


def _fmt(x) -> str:
    return "" if x is None else repr(float(x))


def _test_values(results: Sequence[Dict[str, np.ndarray]]) -> Dict[str, float]:
    out = {}
    for i, res in enumerate(results):
        for name, v in res.items():
            a = np.asarray(v, dtype=np.float64).reshape(-1)
            key = f"test{i}/loss" if name == "__loss__" else f"test{i}/{name}"
            if a.size == 1:
                out[key] = float(a[0])
            else:
                out.update({f"{key}[{k}]": float(x) for k, x in enumerate(a)})
    return out


def _tensorboard(log_dir: str, purge_step: Optional[int]):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:   # tensorboard is not installed: CSV only
        return None
    return SummaryWriter(log_dir=log_dir, purge_step=purge_step)


def read_log(path: str) -> Dict[str, np.ndarray]:
    """A training CSV as columns of float64 (empty cells are NaN); ``CaffeFormatError`` if it is not one."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise CaffeFormatError(f"cannot read the training log ({e})", path) from None
    if not rows or any(c not in rows[0] for c in ("iter", "loss", "lr")):
        raise CaffeFormatError("not a caffekt training log: expected a header with iter, loss, lr", path,
                               "line 1")
    header = rows[0]
    cols: Dict[str, List[float]] = {h: [] for h in header}
    for n, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise CaffeFormatError(f"expected {len(header)} cells, got {len(row)}", path, f"line {n}")
        for h, cell in zip(header, row):
            try:
                cols[h].append(float(cell) if cell != "" else math.nan)
            except ValueError:
                raise CaffeFormatError(f"cell {h}={cell!r} is not a number", path, f"line {n}") from None
    return {h: np.asarray(v, dtype=np.float64) for h, v in cols.items()}


class TrainLogger:
    """Solver callback writing the CSV (and TensorBoard) and moving the progress bar."""

    def __init__(self, csv_path: Optional[str], columns: Sequence[str], *, start_iter: int, total: int,
                 test_interval: int = 0, test_initialization: bool = True, progress: bool = True,
                 tensorboard_dir: Optional[str] = None, desc: str = "train"):
        self.csv_path = csv_path
        self.columns = list(BASE_COLUMNS) + [c for c in columns if c not in BASE_COLUMNS]
        self.test_interval, self.test_initialization = int(test_interval), bool(test_initialization)
        self.t0 = time.perf_counter()
        self.offset = 0.0
        self._file = None
        self._writer = None
        if csv_path:
            self.offset = self._open_csv(csv_path, start_iter)
        self.tb = _tensorboard(tensorboard_dir, start_iter or None) if tensorboard_dir else None
        self.bar = None
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start_iter, unit="it", dynamic_ncols=True, desc=desc)

    @classmethod
    def for_solver(cls, solver, *, enabled: bool = True, progress: bool = True,
                   desc: str = "train") -> "TrainLogger":
        p = solver.param
        csv_path = log_path(p.snapshot_prefix) if enabled else None
        return cls(csv_path, test_columns(solver.test_nets, p.test_compute_loss), start_iter=solver.iter,
                   total=p.max_iter, test_interval=p.test_interval,
                   test_initialization=p.test_initialization, progress=progress,
                   tensorboard_dir=(p.snapshot_prefix + "_tb") if enabled else None, desc=desc)

    def _open_csv(self, path: str, start_iter: int) -> float:
        """Keep complete earlier rows of a matching log; returns the seconds already spent."""
        kept: List[List[str]] = []
        offset = 0.0
        if start_iter > 0 and os.path.isfile(path):
            with open(path, newline="", encoding="utf-8", errors="replace") as f:
                text = f.read()
            lines = text.split("\n")
            if not text.endswith("\n"):
                lines = lines[:-1]   # a row cut short by a kill
            rows = list(csv.reader(lines))
            if rows and rows[0] == self.columns:
                for row in rows[1:]:
                    if len(row) == len(self.columns) and row[0] and int(row[0]) < start_iter:
                        kept.append(row)
                if kept and kept[-1][4]:
                    offset = float(kept[-1][4])
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        w.writerows(kept)
        with atomic_output(path) as f:
            f.write(buf.getvalue().encode("utf-8"))
        self._file = open(path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator="\n")
        return offset

    def _row(self, values: Dict[str, object]) -> None:
        if self._writer is None:
            return
        self._writer.writerow([values.get(c, "") if isinstance(values.get(c), str) else _fmt(values.get(c))
                               for c in self.columns])
        self._file.flush()

    def _tested(self, it: int) -> bool:
        return bool(self.test_interval) and it % self.test_interval == 0 and (it > 0 or self.test_initialization)

    def on_iteration(self, solver, loss: float) -> None:
        it = solver.iter - 1
        seconds = self.offset + time.perf_counter() - self.t0
        values: Dict[str, object] = {"iter": str(it), "loss": loss, "smoothed_loss": solver.smoothed_loss,
                                     "lr": solver.rate, "seconds": seconds}
        tests = _test_values(solver.test_results) if self._tested(it) and solver.test_results else {}
        values.update(tests)
        self._row(values)
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, it)
            self.tb.add_scalar("train/smoothed_loss", solver.smoothed_loss, it)
            self.tb.add_scalar("train/lr", solver.rate, it)
            for k, v in tests.items():
                self.tb.add_scalar(k, v, it)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{solver.smoothed_loss:.4g}", lr=f"{solver.rate:.3g}", refresh=False)

    def on_final_test(self, solver) -> None:
        """The test Solver::Solve runs after the last iteration: a row with the test columns only."""
        tests = _test_values(solver.test_results)
        self._row({"iter": str(solver.iter), "seconds": self.offset + time.perf_counter() - self.t0, **tests})
        if self.tb is not None:
            for k, v in tests.items():
                self.tb.add_scalar(k, v, solver.iter)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


__all__ = ["TrainLogger", "read_log", "log_path", "test_columns", "BASE_COLUMNS"]

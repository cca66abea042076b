"""A seeded fuzzer over every reader and ``load_net``: real files, mutated, with time and memory limits.

It lives here, at the top of the layering, because it drives the readers of
both ``caffe_compat`` and ``caffekt.converters`` (weights files, deploy forms).

Seeds are real files of each kind (the prototxts under ``../shared/fixtures``
and the shipped nets when present, plus small nets, caffemodels, solvers,
solverstates, binaryprotos, safetensors and ``.pt`` files written by our own
writers).  ``mutate`` derives input ``i`` from ``(seed, i)`` alone, so any
finding replays from its number.  Each input runs in a worker process of a
small pool; the parent kills a worker that takes longer than ``time_limit``
(a hang) and each worker measures its own peak-memory growth per input
(``/proc/self/clear_refs`` resets the high-water mark).

Outcomes: ``ok`` (read or built), ``typed`` (a ``CaffeCompatError``: a clean
refusal), ``untyped`` (any other exception: a bug), ``hang`` (over the time
limit twice: a loaded machine may stall a worker once), ``memory``
(peak growth over the memory budget plus a margin), ``crash`` (the worker died).
"""
from __future__ import annotations

import os
import random
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

OUTCOMES = ("ok", "typed", "untyped", "hang", "memory", "crash")
KINDS = ("caffemodel", "prototxt", "solver", "solverstate", "binaryproto", "safetensors", "pt")
EXT = {"caffemodel": ".caffemodel", "prototxt": ".prototxt", "solver": "_solver.prototxt",
       "solverstate": ".solverstate", "binaryproto": ".binaryproto", "safetensors": ".safetensors",
       "pt": ".pt"}
FUZZ_BUDGET = 64 << 20     # the memory budget inside the fuzzer's workers
MEMORY_MARGIN = 96 << 20   # peak growth allowed beyond the budget (interpreter and torch overheads)

SMALL_NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 stride: 1 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.1 k: 2 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool1" top: "fc1" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc1" top: "prob" }
"""
SMALL_TRAIN = """name: "small_train"
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { crop_size: 8 } data_param { source: "db" batch_size: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc1" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc1" bottom: "label" top: "acc" include { phase: TEST } }
"""
SOLVER = """net: "train_val.prototxt"
test_iter: 10
test_interval: 100
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: 1000
display: 20
max_iter: 4500
momentum: 0.9
weight_decay: 0.0005
snapshot: 1000
snapshot_prefix: "snap"
solver_mode: CPU
"""


# ------------------------------------------------------------------ seeds

def _fixture_texts(kind: str) -> List[bytes]:
    root = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures"))
    out = []
    if os.path.isdir(root):
        for d, _dirs, files in os.walk(root):
            for f in sorted(files):
                if f.endswith(".prototxt") and (("solver" in f) == (kind == "solver")):
                    with open(os.path.join(d, f), "rb") as fh:
                        out.append(fh.read())
    return out


def build_seeds() -> Dict[str, List[bytes]]:
    """Kind -> list of seed files (bytes), written by our writers or read from the fixtures."""
    import numpy as np
    import torch

    from caffe_compat import binary
    from caffe_compat.net import load_net
    from caffe_compat.weights import save_caffemodel

    seeds: Dict[str, List[bytes]] = {k: [] for k in KINDS}
    seeds["prototxt"] = [SMALL_NET.encode(), SMALL_TRAIN.encode()] + _fixture_texts("net")
    seeds["solver"] = [SOLVER.encode()] + _fixture_texts("solver")
    with tempfile.TemporaryDirectory(prefix="caffekt-fuzz-seeds-") as d:
        proto = os.path.join(d, "small.prototxt")
        with open(proto, "w") as f:
            f.write(SMALL_NET)
        net = load_net(proto)
        cm = os.path.join(d, "w.caffemodel")
        save_caffemodel(net, cm)
        seeds["caffemodel"].append(_read(cm))
        st = os.path.join(d, "s.solverstate")
        binary.write_solverstate(st, binary.SolverState(
            iter=7, learned_net="w.caffemodel", current_step=1,
            history=[p.detach().numpy().copy() for p in net.learnable_params()]))
        seeds["solverstate"].append(_read(st))
        bp = os.path.join(d, "m.binaryproto")
        binary.write_blobproto(bp, np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4))
        seeds["binaryproto"].append(_read(bp))
        from .convert import read_weights, write_weights
        ws = read_weights(cm)
        for kind in ("safetensors", "pt"):
            p = os.path.join(d, "w" + EXT[kind])
            write_weights(p, ws)
            seeds[kind].append(_read(p))
        torch.save({"conv1.0": torch.zeros(2, 2)}, os.path.join(d, "plain.pt"))
        seeds["pt"].append(_read(os.path.join(d, "plain.pt")))
    return seeds


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------ mutation

_INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff\x0f", b"\xff" * 9 + b"\x01",
                b"\x80" * 10, b"\x01\x00\x00\x80"]
_TEXT_NUMBERS = [b"0", b"-1", b"2147483648", b"4294967295", b"100000000", b"1000000", b"1e308",
                 b"nan", b"-inf", b"9" * 30, b"65536"]
_TEXT_BITS = [b"{", b"}", b"\"", b"'", b"[", b"layer {", b"#", b"\\", b":", b"\n", b"{" * 200,
              b"\"" + b"x" * 5000]


def mutate(data: bytes, rng: random.Random, text: bool) -> bytes:
    """1-4 random edits of ``data``: bytes flipped, replaced, inserted, deleted, duplicated,
    truncated; for text also numbers replaced by extreme ones and structural tokens planted."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 3 if text else 2)):
        # text: mostly values changed (the grammar survives and the net gets built)
        op = (7 if rng.random() < 0.6 else rng.randrange(9)) if text else rng.randrange(7)
        n = len(b)
        # mostly past the header, so that the file still reads as its kind and the edit goes deep
        pos = rng.randrange(min(16, n), n + 1) if n and rng.random() < 0.9 else rng.randrange(n + 1)
        if op == 0 and n:
            b[min(pos, n - 1)] ^= 1 << rng.randrange(7 if text else 8)
        elif op == 1 and n:
            b[min(pos, n - 1)] = rng.randrange(32, 127) if text else rng.randrange(256)
        elif op == 2:
            b[pos:pos] = rng.choice(_INTERESTING) if not text else \
                bytes(rng.randrange(32, 127) for _ in range(rng.randint(1, 4)))
        elif op == 3 and n:
            del b[pos:pos + rng.randint(1, max(1, min(64, n // 8)))]
        elif op == 4 and n:
            ln = rng.randint(1, max(1, min(256, n // 4)))
            b[pos:pos] = b[pos:pos + ln]
        elif op == 5 and rng.random() < 0.3:
            del b[pos:]
        elif op == 6 and n:
            ln = rng.randint(1, 10)
            b[pos:pos + ln] = rng.choice(_INTERESTING)
        elif op == 7:
            nums = [m.span() for m in re.finditer(rb"-?\d+(?:\.\d+)?(?:e-?\d+)?", bytes(b))]
            if nums:
                s, e = rng.choice(nums)
                b[s:e] = rng.choice(_TEXT_NUMBERS)
        elif op == 8:
            b[pos:pos] = rng.choice(_TEXT_BITS)
    return bytes(b)


def make_input(seeds: Dict[str, List[bytes]], seed: int, i: int) -> Tuple[str, bytes]:
    """Input ``i`` of the run ``seed``: (kind, bytes); a pure function of its arguments."""
    rng = random.Random(seed * 1_000_003 + i)
    kind = KINDS[i % len(KINDS)]
    base = rng.choice(seeds[kind])
    return kind, mutate(base, rng, kind in ("prototxt", "solver"))


# ------------------------------------------------------------------ targets

_SMALL_PROTO: Optional[str] = None


def run_target(kind: str, path: str) -> None:
    """Every reader of ``kind`` on ``path`` (and ``load_net`` where a net is involved)."""
    from caffe_compat import io as cio
    from caffe_compat.errors import CaffeCompatError
    from caffe_compat.net import load_net

    if kind in ("caffemodel", "solverstate", "binaryproto"):
        # the decoders themselves, past the file-kind sniffing of the io readers
        from caffe_compat import binary
        with open(path, "rb") as f:
            buf = f.read()
        decode = {"caffemodel": binary.parse_caffemodel, "solverstate": binary.parse_solverstate,
                  "binaryproto": binary.parse_blobproto}[kind]
        try:
            decode(buf, path)
        except CaffeCompatError:
            pass   # counted when the reader below refuses it too
    if kind == "caffemodel":
        cio.read_caffemodel(path)
        load_net(_SMALL_PROTO, weights=path)
    elif kind == "prototxt":
        from .deploy_form import export_form

        from caffe_compat.errors import name_file
        cio.read_net(path)
        form, _path, _dropped = export_form(path)   # train/test nets: their deploy form
        try:
            load_net(form)
        except CaffeCompatError as e:
            raise name_file(e, path)
    elif kind == "solver":
        cio.read_solver(path)
    elif kind == "solverstate":
        cio.read_solverstate(path)
    elif kind == "binaryproto":
        cio.read_blobproto(path)
    else:
        from .convert import read_weights
        read_weights(path)


def _peak_reset() -> Optional[int]:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _vm("VmRSS")
    except OSError:
        return None


def _vm(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def classify(kind: str, data: bytes, workdir: str) -> Tuple[str, str, int]:
    """Run one input here: (outcome without hang/crash, detail, peak bytes above the start)."""
    from caffe_compat.errors import CaffeCompatError

    path = os.path.join(workdir, "input" + EXT[kind])
    with open(path, "wb") as f:
        f.write(data)
    base = _peak_reset()
    outcome, detail = "ok", ""
    try:
        run_target(kind, path)
    except CaffeCompatError as e:
        outcome, detail = "typed", type(e).__name__
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        outcome, detail = "typed", "missing file"   # a path the file names (net: in a solver)
    except BaseException as e:  # noqa: BLE001 - an untyped exception is the finding
        tb = traceback.extract_tb(e.__traceback__)
        where = f"{os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else "?"
        outcome, detail = "untyped", f"{type(e).__name__} at {where}: {str(e)[:160]}"
    peak = _vm("VmHWM")
    grew = (peak - base) if (peak is not None and base is not None) else 0
    if grew > FUZZ_BUDGET + MEMORY_MARGIN:
        outcome, detail = "memory", f"peak grew by {grew >> 20} MiB ({detail or outcome})"
    return outcome, detail, grew


# ------------------------------------------------------------------ the pool

def _worker(conn, parent: int) -> None:
    import torch

    from caffe_compat import budget

    torch.set_num_threads(1)
    budget.set_budget(FUZZ_BUDGET)
    global _SMALL_PROTO
    with tempfile.TemporaryDirectory(prefix="caffekt-fuzz-") as d:
        _SMALL_PROTO = os.path.join(d, "small.prototxt")
        with open(_SMALL_PROTO, "w") as f:
            f.write(SMALL_NET)
        work = os.path.join(d, "in")
        os.makedirs(work)
        devnull = open(os.devnull, "w")
        while True:
            while not conn.poll(1.0):
                if os.getppid() != parent:   # the parent died: do not linger
                    return
            msg = conn.recv()
            if msg is None:
                return
            kind, data = msg
            old = sys.stderr
            sys.stderr = devnull   # warnings about upgraded fields: not findings
            try:
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = classify(kind, data, work)
            finally:
                sys.stderr = old
            conn.send(res)


@dataclass
class FuzzReport:
    counts: Counter = field(default_factory=Counter)
    by_kind: Dict[str, Counter] = field(default_factory=dict)
    findings: List[Tuple[int, str, str, str]] = field(default_factory=list)  # (i, kind, outcome, detail)
    inputs: int = 0
    seconds: float = 0.0
    max_growth: int = 0

    def merge(self, other: "FuzzReport") -> "FuzzReport":
        """Both runs' counts together (chunks of one long run)."""
        out = FuzzReport(self.counts + other.counts, {}, self.findings + other.findings,
                         self.inputs + other.inputs, self.seconds + other.seconds,
                         max(self.max_growth, other.max_growth))
        for k in set(self.by_kind) | set(other.by_kind):
            out.by_kind[k] = self.by_kind.get(k, Counter()) + other.by_kind.get(k, Counter())
        return out

    @property
    def bad(self) -> int:
        return sum(self.counts[o] for o in ("untyped", "hang", "memory", "crash"))

    def __str__(self) -> str:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        lines = [f"{self.inputs} inputs in {self.seconds:.1f} s ({rate:.0f}/s); largest peak-memory "
                 f"growth {self.max_growth / (1 << 20):.0f} MiB",
                 "outcome   " + "  ".join(f"{o:>8}" for o in OUTCOMES)]
        for kind in KINDS:
            c = self.by_kind.get(kind, Counter())
            lines.append(f"{kind:<12}" + "  ".join(f"{c[o]:>8}" for o in OUTCOMES))
        lines.append(f"{'all':<12}" + "  ".join(f"{self.counts[o]:>8}" for o in OUTCOMES))
        for i, kind, outcome, detail in self.findings[:30]:
            lines.append(f"  input {i} ({kind}): {outcome}: {detail}")
        return "\n".join(lines)


# Long on purpose: the worker-pool loop (spawn, feed, time out, retry, record) reads best in one place.
def run_fuzz(n: int, seed: int = 0, workers: int = 2, time_limit: float = 5.0, start: int = 0,
             progress: Optional[Callable[[int], None]] = None,
             seeds: Optional[Dict[str, List[bytes]]] = None) -> FuzzReport:
    """Run inputs ``start .. start+n-1`` of run ``seed`` in ``workers`` processes."""
    import multiprocessing as mp

    seeds = seeds or build_seeds()
    ctx = mp.get_context("fork")
    report = FuzzReport()
    t0 = time.perf_counter()

    def spawn():
        a, b = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(b, os.getpid()), daemon=True)
        p.start()
        return [p, a, None, 0.0]   # process, conn, (i, kind) in flight, started at

    pool = [spawn() for _ in range(max(1, workers))]
    todo = iter(range(start, start + n))
    pending = True
    retry: List[int] = []     # inputs that timed out once: run again before calling them hangs
    retried: set = set()

    def record(i, kind, outcome, detail, grew=0):
        report.counts[outcome] += 1
        report.by_kind.setdefault(kind, Counter())[outcome] += 1
        report.inputs += 1
        report.max_growth = max(report.max_growth, grew)
        if outcome in ("untyped", "hang", "memory", "crash"):
            report.findings.append((i, kind, outcome, detail))
        if progress:
            progress(1)

    try:
        while pending or retry or any(w[2] is not None for w in pool):
            for w in pool:
                if w[2] is None and (pending or retry):
                    i = retry.pop() if retry else next(todo, None)
                    if i is None:
                        pending = False
                        continue
                    kind, data = make_input(seeds, seed, i)
                    w[1].send((kind, data))
                    w[2], w[3] = (i, kind), time.perf_counter()
            for k, w in enumerate(pool):
                if w[2] is None:
                    continue
                i, kind = w[2]
                if w[1].poll(0.002):
                    try:
                        outcome, detail, grew = w[1].recv()
                    except (EOFError, OSError):
                        record(i, kind, "crash", f"worker exit code {w[0].exitcode}")
                        pool[k] = spawn()
                        continue
                    record(i, kind, outcome, detail, grew)
                    w[2] = None
                elif not w[0].is_alive():
                    record(i, kind, "crash", f"worker exit code {w[0].exitcode}")
                    pool[k] = spawn()
                elif time.perf_counter() - w[3] > time_limit:
                    w[0].kill()
                    w[0].join()
                    if i in retried:
                        record(i, kind, "hang", f"over {time_limit:g} s, twice")
                    else:   # a loaded machine can stall a worker once; a hang repeats
                        retried.add(i)
                        retry.append(i)
                    pool[k] = spawn()
    finally:
        for w in pool:
            try:
                w[1].send(None)
            except (OSError, BrokenPipeError):
                pass
            w[0].join(timeout=2)
            if w[0].is_alive():
                w[0].kill()
    report.seconds = time.perf_counter() - t0
    return report


__all__ = ["run_fuzz", "make_input", "mutate", "build_seeds", "classify", "FuzzReport", "OUTCOMES", "KINDS"]

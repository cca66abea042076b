"""Kill ``caffekt train`` with SIGKILL at 20 random points and resume each time from the last
complete snapshot: the final weights and solver history are bit-identical to an uninterrupted
run, and no file under a snapshot's name is ever partial.

The kills land (a) after a random number of iterations, (b) around a random atomic rename
(before it: a finished temp file is abandoned; after it: a snapshot is half written, e.g. the
caffemodel without its solverstate), (c) after a random wall-clock delay.  The runs are forked
from one server process that imported everything once, so twenty restarts stay cheap.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

import _train_case as case

SERVER = textwrap.dedent(r"""
    import json, os, random, signal, sys, time, glob
    import numpy as np
    from caffe_compat import cli, binary
    from caffe_compat import train as T, logs  # noqa: F401  (imported before the forks)
    from caffe_compat.solver import solver as S, snapshot as snap
    from caffe_compat.io import read_caffemodel, read_solverstate
    import caffe_compat.layers, caffe_compat.data.loader, caffe_compat.data.sources, cv2, torch  # noqa

    req = json.loads(sys.argv[1])
    T0 = time.time()

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def child(out, fault):
        kind = fault[0]
        if kind == "iter":
            orig, n = S.Solver.apply_update, [0]
            def apply_update(self):
                orig(self)
                n[0] += 1
                if n[0] == fault[1]:
                    die()
            S.Solver.apply_update = apply_update
        elif kind == "rename":
            orig_replace, n = os.replace, [0]
            def replace(a, b):
                n[0] += 1
                if n[0] == fault[1] and fault[2] == "before":
                    die()
                orig_replace(a, b)
                if n[0] == fault[1]:
                    die()
            os.replace = replace
        args = ["train", req["solver"], "-o", out, "--quiet", "--resume", "auto"]
        os._exit(cli.main(args))

    def run(out, fault):
        pid = os.fork()
        if pid == 0:
            try:
                child(out, fault)
            finally:
                os._exit(70)
        if fault[0] == "time":
            time.sleep(fault[1])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def check_complete(out):
        # every file under its final name must read back whole
        bad = []
        for p in sorted(os.listdir(out)):
            full = os.path.join(out, p)
            if p.startswith("."):
                continue
            try:
                if p.endswith(".caffemodel"):
                    with read_caffemodel(full) as m:
                        [np.array(b) for lb in m.layers for b in lb.blobs]
                elif p.endswith(".solverstate"):
                    read_solverstate(full)
                elif p.endswith(".json"):
                    json.load(open(full))
                elif p.endswith(".npz"):
                    with np.load(full, allow_pickle=False) as z:
                        [z[k] for k in z.files]
            except Exception as e:
                bad.append(f"{p}: {e}")
        return bad

    ref = run(req["ref"], ("none",))
    rng = random.Random(req["seed"])
    kinds = ["iter"] * 8 + ["rename"] * 6 + ["time"] * 6
    rng.shuffle(kinds)
    report = {"ref_rc": ref, "kills": [], "bad": [], "resumed_from": []}
    for kind in kinds:
        if kind == "iter":
            fault = ("iter", rng.randint(1, 8))
        elif kind == "rename":
            fault = ("rename", rng.randint(1, 13), rng.choice(["before", "after"]))
        else:
            fault = ("time", rng.uniform(0.02, 0.25))
        start = T.latest_snapshot(os.path.join(req["out"], "tiny"))
        report["resumed_from"].append(start and os.path.basename(start))
        rc = run(req["out"], fault)
        report["kills"].append([list(fault), rc])
        report["bad"] += check_complete(req["out"])
    report["final_rc"] = run(req["out"], ("none",))
    report["bad"] += check_complete(req["out"])
    report["seconds"] = time.time() - T0
    print(json.dumps(report))
""")


def test_twenty_sigkills_then_bit_identical(tmp_path):
    sp = case.make_case(str(tmp_path), max_iter=200, snapshot=5, test_interval=50, average_loss=4)
    req = {"solver": sp, "ref": str(tmp_path / "ref"), "out": str(tmp_path / "chain"), "seed": 20180618}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", SERVER, json.dumps(req)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["ref_rc"] == 0 and rep["final_rc"] == 0, rep
    assert rep["bad"] == [], rep["bad"]
    # all twenty fault runs died by SIGKILL before the run was over
    assert [rc for _f, rc in rep["kills"]] == [-9] * 20, list(zip(rep["kills"], rep["resumed_from"]))
    assert sum(r is not None for r in rep["resumed_from"]) >= 10, rep["resumed_from"]
    print(list(zip(rep["kills"], rep["resumed_from"])), rep["seconds"])
    ref, chain = tmp_path / "ref", tmp_path / "chain"
    with open(ref / "tiny_iter_200.caffemodel", "rb") as a, open(chain / "tiny_iter_200.caffemodel", "rb") as b:
        assert a.read() == b.read()
    from caffe_compat.io import read_solverstate
    sa, sb = read_solverstate(str(ref / "tiny_iter_200.solverstate")), read_solverstate(str(chain / "tiny_iter_200.solverstate"))
    assert sa.iter == sb.iter == 200 and sa.current_step == sb.current_step
    for x, y in zip(sa.history, sb.history):
        np.testing.assert_array_equal(x, y)
    # the log of the interrupted chain tells the same story, one row per iteration (iter, loss,
    # lr; the smoothed loss restarts at a resume, as Solver::Step clears its window in Caffe)
    la = (ref / "tiny_log.csv").read_text().splitlines()
    lb = (chain / "tiny_log.csv").read_text().splitlines()
    cols = lambda rows: [(r.split(",")[0], r.split(",")[1], r.split(",")[3]) for r in rows]  # noqa: E731
    assert cols(la) == cols(lb)
    assert len(lb) == 1 + 200 + 1      # header, 200 iterations, the final test at 200

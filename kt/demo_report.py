"""The demo's report: summary numbers, loss curves, and report.md that says in words what they show."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from typing import Dict, Optional

import numpy as np

from caffe_compat.files import atomic_output

TILE_INPUT = 64                   # the pretext tile and the student's crop


def _write_text(path: str, text: str) -> None:
    with atomic_output(path) as f:
        f.write(text.encode("utf-8"))


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` iterations (shorter at the start); NaNs skipped."""
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    n = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(1, len(v) + 1)
    lo = np.maximum(0, i - window)
    cnt = n[i] - n[lo]
    return np.where(cnt > 0, (c[i] - c[lo]) / np.maximum(cnt, 1), np.nan)


def loss_curves_png(logs: Dict[str, str], out_png: str, chance: Optional[Dict[str, float]] = None) -> None:
    """One panel per training log: the loss, its moving average (1/20 of the run), and the chance level ln(classes).

    The logs' ``smoothed_loss`` is Caffe's ``average_loss`` window, which is
    1 (no smoothing) in these solvers, so the average is computed here.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from caffe_compat.logs import read_log

    fig, axes = plt.subplots(1, len(logs), figsize=(5.5 * len(logs), 3.6), squeeze=False)
    for ax, (title, path) in zip(axes[0], logs.items()):
        cols = read_log(path)
        window = max(5, len(cols["loss"]) // 20)
        ax.plot(cols["iter"], cols["loss"], lw=0.6, alpha=0.35, label="loss")
        ax.plot(cols["iter"], smooth(cols["loss"], window), lw=2.0, label=f"moving average ({window} iterations)")
        if chance and title in chance:
            ax.axhline(chance[title], color="k", ls="--", lw=1,
                       label=f"chance: ln {int(round(np.exp(chance[title])))} = {chance[title]:.2f}")
        ax.set_title(title)
        ax.set_yscale("log")   # an early spike would otherwise flatten the rest of the curve
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("softmax loss (log scale)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic_output(out_png) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def _final_loss(path: str, last: int = 10) -> Dict[str, float]:
    from caffe_compat.logs import read_log
    cols = read_log(path)
    loss = cols["loss"][~np.isnan(cols["loss"])]
    return {"first": float(loss[0]), "last_mean": float(loss[-last:].mean()), "iterations": int(len(loss))}


def _summary(cfg: dict, scale, seed: int, exports: dict, puzzles: dict, times: dict) -> dict:
    import csv

    from caffe_compat.data.sources import list_image_paths

    work = cfg["workdir"]
    files = cfg["data"]
    from .labels import read_list
    stamp = "fashion_mnist.json" if files["kind"] == "fashion-mnist" else "photo_set.json"
    with open(os.path.join(files["dir"], stamp), encoding="utf-8") as f:
        params = json.load(f)
    _, ytest = read_list(files["probe_test"])
    counts = {"pretext": len(list_image_paths(files["pretext"])),
              "probe_train": len(read_list(files["probe_train"])[0]),
              "probe_test": len(ytest), "clustered": len(list_image_paths(files["cluster"]))}
    with open(os.path.join(work, "pseudo_labels.json"), encoding="utf-8") as f:
        clusters = json.load(f)
    probes: Dict[str, Dict[str, float]] = {}
    with open(os.path.join(work, "probes", "probes.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    for row in rows[1:]:
        probes[row[0]] = {l: float(v) for l, v in zip(rows[0][1:], row[1:]) if v != ""}
    return {
        "scale": asdict(scale), "seed": seed,
        "data": {**params, "kind": files["kind"], "dir": files["dir"], **counts},
        "probe_chance": float(np.bincount(ytest).max() / len(ytest)),
        "jigsaw": {**_final_loss(os.path.join(work, "jigsaw", "jigsaw_log.csv")), "puzzles": puzzles},
        "cluster": {k: clusters[k] for k in ("k", "images", "objective_per_image", "empty_clusters", "sizes",
                                             "nmi", "purity") if k in clusters},
        "cc": _final_loss(os.path.join(work, "cc", "cc_log.csv")),
        "probes": probes, "exports": exports, "seconds": dict(times),
    }


def _puzzle_verdict(pz: dict, sc: dict) -> str:
    """One honest sentence on the teacher's held-out puzzle accuracy (a binomial 2-sigma margin over chance)."""
    ch, n = pz["chance"], pz["puzzles"]
    margin = 2 * float(np.sqrt(ch * (1 - ch) / n))
    if pz["accuracy"] > ch + margin:
        return (f"above chance by more than two standard errors ({pz['accuracy'] / ch:.1f}x chance): the teacher has "
                "learned the puzzle task beyond its training images.")
    short = " (the quick scale is too short for the teacher to learn)" if sc.get("name") == "quick" else ""
    return f"within two standard errors of chance{short}: the teacher has not learned the puzzle task."


def _seen_crops_note(jg: dict) -> str:
    """Puzzle accuracy on the crops the teacher trained on, and whether the gap to held-out crops is memorisation."""
    seen, held = jg.get("puzzles_train_crops"), jg["puzzles"]
    if not seen:
        return ""
    ch = held["chance"]
    margin = 2 * float(np.sqrt(ch * (1 - ch) / held["puzzles"]))
    gap = (" (the gap to the held-out images is memorisation of its training images)"
           if seen["accuracy"] > held["accuracy"] + margin else "")
    return f" Fresh puzzles of the training images it saw: {100 * seen['accuracy']:.1f}%{gap}."


def data_text(d: dict) -> str:
    """The report's data paragraph."""
    if d["kind"] == "fashion-mnist":
        return (f"Fashion-MNIST (10 clothing classes, 28x28 gray, from `{d.get('source', '?')}`), upsampled to "
                f"{d['size']}x{d['size']}: {d['pretext']} train images, unlabelled, for the pretext task, the "
                f"clustering and the student; their labels train the linear probes only, which are scored on "
                f"{d['probe_test']} test images. Cached in `{d['dir']}`.")
    return (f"{d['probe_train'] + d['probe_test']} random crops ({d['size']}x{d['size']}) of {len(d['photos'])} "
            f"photos that scikit-image ships ({', '.join(d['photos'])}), labelled by source photo: "
            f"{d['probe_train']} train / {d['probe_test']} val (Fashion-MNIST is not installed; "
            f"`apt-get install dataset-fashion-mnist` makes the demo use it). Cached in `{d['dir']}`.")


def probe_words(probes: Dict[str, Dict[str, float]], chance: float, n_train: int, n_test: int, held: str) -> str:
    """The probe table in words: resolution, chance, what beats what by how much, and whether that is noise."""
    best = {m: max(r.items(), key=lambda kv: kv[1]) for m, r in probes.items()}
    ranked = sorted(best.items(), key=lambda kv: -kv[1][1])
    top = max(v for _, v in best.values())
    res = 100 * 2 * float(np.sqrt(2 * top * (1 - top) / n_test))   # 2 s.e. of a difference between two probes
    out = [f"Each number is the top-1 accuracy of a linear classifier trained on one frozen layer's features of "
           f"the {n_train} training images and scored on {n_test} {held}: one image is {100 / n_test:.2f} points, "
           f"and two probes on the same images differ by less than about {res:.1f} points (two binomial standard "
           f"errors) by chance alone. Chance (the most frequent class) is {100 * chance:.1f}%.",
           "Best layer per net: " + ", ".join(f"{m} {100 * v:.1f}% ({l})" for m, (l, v) in ranked) + "."]
    base = best.get("random init")
    for m, (l, v) in ranked:
        if m == "random init" or base is None:
            continue
        diff = 100 * (v - base[1])
        how = ("beats" if diff > res else "trails" if diff < -res else "is level with (within the noise)")
        out.append(f"{m} {how} random init by {abs(diff):.1f} points.")
    out.append(f"Every net is {min(v for _, v in best.values()) / chance:.1f}x chance or more at its best layer: "
               "even random convolutions give linearly useful features, which is why random init is the baseline "
               "to beat, not chance.")
    return " ".join(out)


def write_report(report_dir: str, cfg: dict, s: dict) -> None:
    """``report.md`` and its figures, from ``s`` (the run's summary) and the work folder."""
    from .probes import table_markdown

    work = cfg["workdir"]
    os.makedirs(report_dir, exist_ok=True)
    titles = {"jigsaw": "Jigsaw++ teacher (puzzle classes)", "cc": "CC student (cluster classes)"}
    loss_curves_png({titles["jigsaw"]: os.path.join(work, "jigsaw", "jigsaw_log.csv"),
                     titles["cc"]: os.path.join(work, "cc", "cc_log.csv")},
                    os.path.join(report_dir, "loss_curves.png"),
                    chance={titles["jigsaw"]: float(np.log(s["scale"]["jigsaw_perms"])),
                            titles["cc"]: float(np.log(s["cluster"]["k"]))})
    for name in ("clusters.png", "cluster_sizes.png"):
        shutil.copyfile(os.path.join(work, name), os.path.join(report_dir, name))
    for name in ("probes.png", "probes.csv"):
        shutil.copyfile(os.path.join(work, "probes", name), os.path.join(report_dir, name))
    sc, d, jg, cl, ex = s["scale"], s["data"], s["jigsaw"], s["cluster"], s["exports"]
    held = "test images" if d["kind"] == "fashion-mnist" else "val crops"
    pz = jg["puzzles"]
    fr, ox = ex["frcnn"], ex["onnx"]
    L = [f"# caffekt demo report ({sc['name']} scale, seed {s['seed']})", "",
         "Every number below was computed by the run that wrote this file.", "",
         "## Data", "", data_text(d), "",
         "## Teacher: Jigsaw++", "",
         f"9-tower AlexNet (conv1 stride 2, widths x{sc['jigsaw_width']:g}, fc6 {sc['jigsaw_fc6']} per tile, "
         f"fc7 {sc['jigsaw_fc7']}), {sc['jigsaw_perms']} permutations, {jg['iterations']} iterations of "
         f"batch {sc['jigsaw_batch']} on the {d['pretext']} unlabelled training images. "
         f"Loss {jg['first']:.3f} at the first iteration, "
         f"{jg['last_mean']:.3f} averaged over the last 10 (chance level ln {sc['jigsaw_perms']} = "
         f"{np.log(sc['jigsaw_perms']):.3f}).", "",
         f"Small-scale recipe: {sc.get('jigsaw_init', 'authors')} init + {sc.get('jigsaw_solver', 'SGD')} "
         f"{sc['jigsaw_lr']:g} (constant), dropout {sc.get('jigsaw_dropout', 0.5):g}, because at this scale "
         "the authors' SGD recipe (Gaussian fillers, SGD 0.01) stays at chance; the paper's full-scale configs "
         "keep the authors' recipe.", "",
         f"Puzzle accuracy on {pz['puzzles']} puzzles of {held} (images the teacher never saw): "
         f"{100 * pz['accuracy']:.1f}% (chance {100 * pz['chance']:.1f}%): " + _puzzle_verdict(pz, sc)
         + _seen_crops_note(jg), "",
         "## Clusters: teacher conv5 -> k-means", "",
         f"k = {cl['k']} on {cl['images']} images; NMI with the true labels (used only for this check) "
         f"{cl.get('nmi', float('nan')):.3f}, "
         f"purity {cl.get('purity', float('nan')):.3f}, empty clusters {cl['empty_clusters']}, "
         f"sizes {min(cl['sizes'])}..{max(cl['sizes'])}.", "",
         "![clusters](clusters.png)", "", "![cluster sizes](cluster_sizes.png)", "",
         "## Student: cluster classification", "",
         f"Stride-4 AlexNet (full width) on {TILE_INPUT}x{TILE_INPUT} crops, {s['cc']['iterations']} iterations "
         f"of batch {sc['cc_batch']} ({sc.get('cc_solver', 'SGD')} {sc['cc_lr']:g}"
         + (", constant: the ImageNet recipe's SGD 0.01 stays at chance at this budget" if sc.get("cc_solver", "SGD")
            != "SGD" else "") + f"): loss {s['cc']['first']:.3f} -> {s['cc']['last_mean']:.3f} "
         f"(last 10; chance ln {cl['k']} = {np.log(cl['k']):.3f}).", "",
         "![loss curves](loss_curves.png)", "",
         "## Linear probes", "",
         table_markdown(s["probes"], s["probe_chance"]).rstrip(), "",
         probe_words(s["probes"], s["probe_chance"], d["probe_train"], d["probe_test"], held), "",
         "![probes](probes.png)", "",
         "## Exports", "",
         f"**Fast R-CNN CaffeNet** (`{os.path.relpath(fr['path'], os.path.dirname(report_dir))}`, {fr['bytes']} "
         f"bytes): loaded with a strict `CopyTrainedLayersFrom` into the built-in Fast R-CNN CaffeNet test net: "
         f"{len(fr['strict_load_copied'])} layers copied, {len(fr['strict_load_untouched'])} left with fillers; "
         f"conv1..conv5 equal to the student's: {'yes' if fr['conv_weights_equal_student'] else 'NO'}.", "",
         "```", fr["report"], "```", "",
         f"**ONNX** (`{os.path.relpath(ox['path'], os.path.dirname(report_dir))}`): onnx.checker {ox['checker']}; "
         f"onnxruntime against our module:", "",
         "| output | shape | max abs error | max rel error | within rtol " + f"{ox['rtol']:g} |",
         "|---|---|---:|---:|---|"]
    L += [f"| {o['name']} | {'x'.join(map(str, o['shape']))} | {o['max_abs_err']:.3g} | {o['max_rel_err']:.3g} | "
          f"{'yes' if o['ok'] else 'NO'} |" for o in ox["outputs"]]
    L += ["", "## Time", "", f"torch threads: {s.get('torch_threads', '?')}.", "", "| stage | seconds |", "|---|---:|"]
    L += [f"| {k} | {v:.1f} |" for k, v in s["seconds"].items()]
    L += ["", "Scale settings: `" + json.dumps(sc) + "`", ""]
    _write_text(os.path.join(report_dir, "report.md"), "\n".join(L))


__all__ = ["smooth", "loss_curves_png", "probe_words", "data_text", "write_report", "TILE_INPUT"]

"""What a Caffe file holds: the library behind ``caffekt inspect`` (``describe``, ``format_table``).

Nets (prototxt or caffemodel): format version as found (V0/V1/V2) and the
upgrade steps Caffe would apply, the pooling dialect (BVLC ``round_mode`` vs
the forks' ``ceil_mode``; for caffemodels the raw field 13 values), fork
fields in use, and every layer with type, bottoms, tops and blob shapes.  For
a prototxt the blob shapes come from building the net with
``caffe_compat.net`` on the meta device (no memory, no fillers run); when that
is not possible (data layers without shapes, a layer type not implemented)
the blob lists stay empty and ``shapes_note`` says why.
Solvers, solverstates, mean files (binaryproto) and Datums get a summary.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional

from .errors import WrongFileKind
from .proto import caffe_pb2

# Fields only forks define (see caffe.proto's "fork" comments): Message.field
FORK_FIELDS = frozenset({
    "TransformationParameter.hash_file", "TransformationParameter.gap_size",
    "TransformationParameter.jitter_size", "TransformationParameter.siamese_size",
    "TransformationParameter.patch_size", "DataParameter.rand_jump", "ConcatParameter.hash_file",
    "LayerParameter.merge_data_param", "V1LayerParameter.merge_data_param",
    "LayerParameter.roi_pooling_param", "LayerParameter.smooth_l1_loss_param",
    "BlobProto.raw_data", "BlobProto.raw_data_type",
})


# ----------------------------------------------------------------- helpers

def net_version(net) -> str:
    """V0 (``layers { layer {...} }``), V1 (``layers``), V2 (``layer``), or V1+V2 (both: invalid)."""
    if any(l.HasField("layer") for l in net.layers):
        return "V0"
    if len(net.layers) and len(net.layer):
        return "V1+V2"
    return "V1" if len(net.layers) else "V2"


def fork_fields(net) -> Dict[str, List[str]]:
    """Fork field (``Message.field``) -> names of the layers that set it."""
    found: Dict[str, List[str]] = {}

    def walk(msg, layer: str) -> None:
        for fd, value in msg.ListFields():
            key = f"{fd.containing_type.name}.{fd.name}"
            if key in FORK_FIELDS and layer not in found.setdefault(key, []):
                found[key].append(layer)
            if fd.message_type is not None and fd.name != "blobs":
                for v in (value if fd.is_repeated else [value]):
                    walk(v, layer)

    for lp in list(net.layers) + list(net.layer):
        name = lp.name or (lp.layer.name if hasattr(lp, "layer") else "")
        walk(lp, name)
    return found


def _infer_shapes(net) -> "tuple[Optional[Dict[str, List[List[int]]]], Optional[str]]":
    """Blob shapes per layer by building the net on the meta device, or (None, why not)."""
    try:
        import torch
        from .net import Net
    except ImportError as e:
        return None, f"net builder unavailable ({e})"
    last = None
    for phase in ("TEST", "TRAIN"):
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                built = Net(net, phase=phase)
            return {k: [list(p.shape) for p in ps] for k, ps in built.blobs_by_layer.items()}, None
        except Exception as e:  # any failure only means "no shapes": the file itself parsed fine
            last = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return None, f"net not built ({last})"


def _layer_rows(net, shapes: Optional[Dict[str, List[List[int]]]]) -> List[dict]:
    return [{"name": lp.name, "type": lp.type, "bottom": list(lp.bottom), "top": list(lp.top),
             "blobs": list((shapes or {}).get(lp.name, []))} for lp in net.layer]


def _count(shapes: List[List[int]]) -> int:
    return sum(math.prod(s) for s in shapes)


# ----------------------------------------------------------------- per kind

def _describe_net_text(path: str, infer: bool) -> dict:
    from .prototxt import parse_net_text, read_text_file
    from .upgrade import upgrade_net
    raw, info = parse_net_text(read_text_file(path), path)
    version, forks = net_version(raw), fork_fields(raw)
    net = caffe_pb2.NetParameter()
    net.CopyFrom(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, applied = upgrade_net(net, path)
    shapes, note = _infer_shapes(net) if infer else (None, "not requested (--no-shapes)")
    layers = _layer_rows(net, shapes)
    out = {"kind": "net", "version": version, "upgrades": applied, "name": net.name,
           "dialect": {"pooling": sorted(info.dialects),
                       "explicit_rounding": {k: caffe_pb2.PoolingParameter.RoundMode.Name(v)
                                             for k, v in info.pool_rounding.items()}},
           "fork_fields": forks, "layers": layers,
           "num_params": sum(_count(l["blobs"]) for l in layers),
           "shapes_inferred": shapes is not None}
    if note:
        out["shapes_note"] = note
    return out


def _describe_caffemodel(path: str) -> dict:
    from .io import read_caffemodel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = read_caffemodel(path, check_finite=None)
    with model:
        forks = fork_fields(model.net)
        for layer, fld, _value in model.fork_fields:
            if fld != "pooling_param.13":
                forks.setdefault(fld, []).append(layer)
        layers = [{"name": lb.name, "type": lb.type, "bottom": list(lp.bottom), "top": list(lp.top),
                   "blobs": [list(a.shape) for a in lb.blobs]}
                  for lb, lp in zip(model.layers, model.net.layer)]
        towers = _towers([lb.name for lb in model.layers if lb.blobs])
        return {"kind": "caffemodel", "version": model.format, "upgrades": list(model.upgrades),
                "towers": towers,
                "name": model.net.name, "bytes": model.nbytes,
                # field 13 is BVLC round_mode (0 CEIL, 1 FLOOR) or a fork's ceil_mode (1 = true)
                "dialect": {"pooling_field13": dict(model.pooling_field13)},
                "fork_fields": forks, "layers": layers,
                "num_params": sum(_count(l["blobs"]) for l in layers),
                "nonfinite": [{"layer": n, "blob": i, "count": c} for n, i, c in (model.nonfinite or [])]}


def _towers(names) -> int:
    """How many towers a snapshot's weighted layers form (``conv1_s1`` ... ``conv1_s9``: 9), else 0."""
    from .weights import tower_of
    ids = {t[1] for t in (tower_of(n) for n in names) if t}
    return len(ids) if len(ids) > 1 else 0


def _describe_solver(path: str) -> dict:
    from google.protobuf import text_format
    from .prototxt import parse_solver_text, read_text_file
    raw = parse_solver_text(read_text_file(path), path)
    fields = {fd.name: (text_format.MessageToString(v, as_one_line=True) if fd.message_type else
                        (list(v) if fd.is_repeated else v))
              for fd, v in raw.ListFields()}
    for fd in raw.DESCRIPTOR.fields:
        if fd.name not in fields or fd.is_repeated:
            continue
        if fd.enum_type is not None:  # enums by name
            fields[fd.name] = fd.enum_type.values_by_number[fields[fd.name]].name
        elif fd.type == fd.TYPE_FLOAT:  # the float32 as written (0.01, not 0.0099999997)
            fields[fd.name] = float(f"{fields[fd.name]:.7g}")
    return {"kind": "solver", "version": "solver_type enum (old)" if raw.HasField("solver_type") else "current",
            "upgrades": ["SolverType"] if raw.HasField("solver_type") else [],
            "fields": fields, "layers": [], "num_params": 0}


def _describe_solverstate(path: str) -> dict:
    from .io import read_solverstate
    st = read_solverstate(path)
    shapes = [list(h.shape) for h in st.history]
    return {"kind": "solverstate", "version": "binary", "iter": st.iter, "learned_net": st.learned_net,
            "current_step": st.current_step, "history": shapes, "layers": [], "num_params": _count(shapes)}


def _describe_binaryproto(path: str) -> dict:
    from .io import read_blobproto
    a = read_blobproto(path)
    out = {"kind": "binaryproto", "version": "binary", "shape": list(a.shape), "layers": [],
           "num_params": int(a.size)}
    if a.size:
        out.update(min=float(a.min()), max=float(a.max()), mean=float(a.mean(dtype="float64")))
        if a.ndim >= 3:  # a mean image: per-channel means help spot BGR/RGB mix-ups
            ch = a.reshape((-1,) + a.shape[-3:]).mean(axis=(0, 2, 3), dtype="float64")
            out["channel_means"] = [float(c) for c in ch]
    return out


def _describe_datum(path: str) -> dict:
    from . import binary
    with open(path, "rb") as f:
        d = binary.decode_datum(f.read(), path)
    out = {"kind": "datum", "version": "binary", "layers": [], "num_params": 0}
    for k in ("channels", "height", "width", "label", "encoded"):
        if hasattr(d, k):
            v = getattr(d, k)
            out[k] = v if isinstance(v, (int, bool, type(None))) else str(v)
    return out


_DESCRIBE = {"caffemodel": _describe_caffemodel, "solver": _describe_solver,
             "solverstate": _describe_solverstate, "binaryproto": _describe_binaryproto,
             "datum": _describe_datum}


def describe(path: str, infer_shapes: bool = True) -> dict:
    """The report of ``caffekt inspect`` as a dict (keys: kind, version, layers, num_params, ...)."""
    from .io import detect_kind
    kind = detect_kind(path)
    if kind == "net":
        out = _describe_net_text(path, infer_shapes)
    elif kind in _DESCRIBE:
        out = _DESCRIBE[kind](path)
    elif kind == "hdf5":
        raise WrongFileKind("is an HDF5 snapshot (.h5), which caffekt does not read; expected a "
                            "prototxt, caffemodel, solverstate or binaryproto", path)
    else:
        raise WrongFileKind("is not a recognisable Caffe file; expected a prototxt net or solver, "
                            "caffemodel, solverstate, binaryproto or Datum", path)
    return {"file": path, **out}


# ----------------------------------------------------------------- output

def _fmt_shapes(shapes: List[List[int]]) -> str:
    return " ".join("x".join(map(str, s)) or "scalar" for s in shapes)


def format_table(r: dict) -> str:
    """The human-readable form of a ``describe`` report."""
    kind = r["kind"]
    if r.get("towers"):
        kind += (f" ({r['towers']}-tower pretext snapshot: load one tower into a deploy with "
                 f"load_net(deploy, weights, tower=N))")
    lines = [f"file:     {r['file']}", f"kind:     {kind}", f"version:  {r['version']}"]
    if r.get("upgrades"):
        lines.append(f"upgrades: {', '.join(r['upgrades'])} (applied on read, as Caffe does)")
    dialect = r.get("dialect")
    if dialect:
        if dialect.get("pooling"):
            lines.append(f"pooling rounding given as: {', '.join(dialect['pooling'])}")
        if dialect.get("pooling_field13"):
            lines.append(f"pooling field 13 set (round_mode or a fork's ceil_mode) in: "
                         f"{', '.join(f'{k}={v}' for k, v in dialect['pooling_field13'].items())}")
    for fld, layers in (r.get("fork_fields") or {}).items():
        lines.append(f"fork field {fld}: {', '.join(layers)}")
    for k in ("name", "iter", "learned_net", "current_step", "shape", "channels", "height", "width",
              "label", "encoded", "min", "max", "mean", "channel_means"):
        if k in r and r[k] not in ("", None):
            lines.append(f"{k + ':':9} {r[k]}")
    if "history" in r:
        lines.append(f"history:  {len(r['history'])} blobs: {_fmt_shapes(r['history'])}")
    for k, v in (r.get("fields") or {}).items():
        lines.append(f"  {k}: {v}")
    if r["layers"]:
        rows = [("#", "name", "type", "bottom", "top", "blobs")]
        for i, l in enumerate(r["layers"]):
            rows.append((str(i), l["name"], l["type"], ",".join(l["bottom"]), ",".join(l["top"]),
                         _fmt_shapes(l["blobs"])))
        widths = [max(len(row[c]) for row in rows) for c in range(5)]
        for row in rows:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5])
        lines.append(f"layers:   {len(r['layers'])}")
    if r.get("shapes_note"):
        lines.append(f"blob shapes: {r['shapes_note']}")
    for bad in r.get("nonfinite") or []:
        lines.append(f"WARNING: layer {bad['layer']} blob {bad['blob']} has {bad['count']} NaN/Inf values")
    lines.append(f"parameters: {r['num_params']:,}")
    return "\n".join(lines)


"""The train and test nets a solver names (Solver::InitTrainNet / InitTestNets), built with their feeders."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import CaffeCompatError, CaffeFormatError, UnsupportedParameter
from ..proto import caffe_pb2
from .feeders import ConstantFeed, FeedContext, Feeder, FeederFactory, NetFeed, claimed_python, make_feeder


@dataclass
class NetSpec:
    param: Any                  # NetParameter with its state merged
    source: str                 # for messages: "net file X" / "net_param"
    phase: str


def _read_net_file(path: str, field_name: str):
    from ..io import read_net
    if not os.path.exists(path):
        raise CaffeFormatError(f"net file not found (solver field {field_name!r})", path)
    return read_net(path)


def _with_state(net_param, phase: int, extra_state=None):
    """NetState: the phase, merged with the net's own state, then the solver's train/test state."""
    st = caffe_pb2.NetState(phase=phase)
    st.MergeFrom(net_param.state)
    if extra_state is not None:
        st.MergeFrom(extra_state)
    net_param.state.CopyFrom(st)
    return net_param


def net_specs(param, where: str) -> Tuple[NetSpec, List[NetSpec]]:
    """(train, [tests]) as Solver::InitTrainNet / InitTestNets pick and state them."""
    given = [f for f in ("net", "net_param", "train_net", "train_net_param") if param.HasField(f)]
    if len(given) != 1:
        raise UnsupportedParameter(f"{where}: SolverParameter must specify exactly one train net with "
                                   f"net, net_param, train_net or train_net_param; found {given or 'none'}")
    if param.HasField("train_net_param"):
        train = NetSpec(copy.deepcopy(param.train_net_param), "train_net_param", "TRAIN")
    elif param.HasField("train_net"):
        train = NetSpec(_read_net_file(param.train_net, "train_net"), f"train_net file {param.train_net}", "TRAIN")
    elif param.HasField("net_param"):
        train = NetSpec(copy.deepcopy(param.net_param), "net_param", "TRAIN")
    else:
        train = NetSpec(_read_net_file(param.net, "net"), f"net file {param.net}", "TRAIN")
    _with_state(train.param, caffe_pb2.TRAIN, param.train_state if param.HasField("train_state") else None)

    tests: List[NetSpec] = [NetSpec(copy.deepcopy(p), "test_net_param", "TEST") for p in param.test_net_param]
    tests += [NetSpec(_read_net_file(p, "test_net"), f"test_net file {p}", "TEST") for p in param.test_net]
    generic = param.HasField("net") or param.HasField("net_param")
    n_iter = len(param.test_iter)
    if (n_iter < len(tests)) if generic else (n_iter != len(tests)):
        raise UnsupportedParameter(f"{where}: test_iter must be specified for each test network "
                                   f"({len(tests)} test nets, {n_iter} test_iter)")
    for _ in range(n_iter - len(tests)):
        if param.HasField("net_param"):
            tests.append(NetSpec(copy.deepcopy(param.net_param), "net_param", "TEST"))
        else:
            tests.append(NetSpec(_read_net_file(param.net, "net"), f"net file {param.net}", "TEST"))
    if len(param.test_state) and len(param.test_state) != len(tests):
        raise UnsupportedParameter(f"{where}: test_state must be unspecified or specified once per test "
                                   f"net ({len(tests)} test nets, {len(param.test_state)} test_state)")
    for i, t in enumerate(tests):
        _with_state(t.param, caffe_pb2.TEST, param.test_state[i] if len(param.test_state) else None)
    return train, tests


def build_net(spec: NetSpec, ctx: FeedContext, feeds: Optional[Mapping[str, Any]] = None,
              feeders: Optional[Mapping[str, FeederFactory]] = None):
    """(Net, NetFeed): feeders made from each kept data layer's params, then the net with their shapes.

    ``feeds`` (top name -> tensor) replaces the feeder of any data layer whose tops it all names;
    ``feeders`` (layer name -> factory(lp, ctx), as registered ones) replaces a layer's feeder.  A feeder with a
    ``bind(net)`` method is handed the built net (e.g. to drive its MergeData layer).
    """
    from .. import layers as L
    from ..layers.input import NetInput
    from ..net import Net, filter_layers
    p = spec.param
    phase = caffe_pb2.TRAIN if spec.phase == "TRAIN" else caffe_pb2.TEST
    given = dict(feeders or {})
    made: Dict[str, Feeder] = {}
    shapes: Dict[str, Tuple[int, ...]] = {}
    feeds = dict(feeds or {})
    for lp in filter_layers(p, phase, p.state.level, list(p.state.stage), spec.source):
        claimed = claimed_python(lp)
        try:
            cls = None if claimed else L.get(lp.type, lp.name)
        except CaffeCompatError:
            continue   # the net builder reports it with its context
        if not claimed and not (isinstance(cls, type) and issubclass(cls, NetInput)):
            continue
        lctx = copy.copy(ctx)
        lctx.phase = spec.phase
        lctx.where = f"{spec.source}, layer {lp.name!r} (type {lp.type})"
        if lp.name in given:
            f = given[lp.name](lp, lctx)
        elif len(lp.top) and all(t in feeds for t in lp.top):
            f = ConstantFeed({t: torch.as_tensor(feeds[t]) for t in lp.top})
        else:
            f = make_feeder(lp, lctx)
        made[lp.name] = f
        shapes.update(f.shapes())
    # a bottomless Python layer claimed by a registered feeder is a named input (its code never runs)
    python_layers = "as_input" if any(map(claimed_python, p.layer)) else "refuse"
    net = Net(p, phase=spec.phase, level=p.state.level, input_shapes=shapes, path=spec.source,
              python_layers=python_layers)
    # the Net took the file's stages from p.state already
    for f in made.values():
        if hasattr(f, "bind"):
            f.bind(net)
    return net, NetFeed(made)

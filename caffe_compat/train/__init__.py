"""The one training driver (``caffekt train``): ``caffe train --solver`` on our Solver.

Modules: ``driver`` (``train``: what is read from where, in Caffe's order),
``feeders`` (what fills data layers; one registry, entry-point plugins),
``nets`` (the train/test nets a solver names), ``distributed`` (torchrun
ranks as Caffe's multi-GPU solver, seeds), ``paths`` (paths as Caffe opens
them, snapshots).
"""
from .distributed import shutdown_distributed
from .driver import TrainResult, check_labels_fit, train
from .feeders import (DATA_FEEDERS, ConstantFeed, FeedContext, NetFeed, SourceFeed,
                      TrainFeed, make_feeder, register_data_feeder)
from .nets import NetSpec, build_net, net_specs
from .paths import latest_snapshot, resolve_solver_paths, snapshot_complete

__all__ = ["train", "TrainResult", "check_labels_fit", "FeedContext", "register_data_feeder", "DATA_FEEDERS",
           "make_feeder", "SourceFeed", "ConstantFeed", "NetFeed", "TrainFeed", "NetSpec",
           "net_specs", "build_net", "resolve_solver_paths", "latest_snapshot", "snapshot_complete",
           "shutdown_distributed"]

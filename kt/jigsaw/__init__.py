"""Jigsaw++ pretext training: the puzzle source, batches, nets, feeds, training and evaluation.

One puzzle source serves both ways of feeding a 9-tower net from stored images:

* **generated net** (``nets.cfn_net_param`` or the shipped
  ``jigsaw_cfn_pretext_9tower.prototxt``): one ``data`` input of tiles
  (``PuzzleDataset``), ``label``;
* **authors' net** (``train_val_cfn_jps++.prototxt`` as released): its two
  fork ``Data`` layers fed with what they would produce (``data_0``: permuted,
  jittered, colour-processed tiles, *unnormalised*; ``data_r``: tiles of the
  occluder image in natural order; ``label``), so the prototxt's own
  Slice/MergeData/MVN/Power run in the graph.

The tiles are cut by the fork's DataTransformer (``caffe_compat.data.jps``),
the same code ``caffekt train`` runs on the authors' LMDB.  Sample ``i`` of
epoch ``e`` is built from generators seeded by (seed, e, i) alone, so batches
do not depend on the worker count.  The MergeData step is ``merge_plan``, a
port of the loop in the fork's merge_data_layer.cpp driven by a per-sample
``rand()``; on the authors' net the feed hands those same ``rand()`` values
to the net's MergeData layer, so both nets put identical tensors into the
towers (tests/kt/test_jigsaw.py).  Training goes through the one driver
(``caffe_compat.train.train``); see ``train``.

Modules: ``merge`` (MergeData's plan), ``source`` (puzzles of stored images),
``batches`` (resumable sharded batches), ``nets`` (the 9-tower net),
``feed`` (what a net takes; the driver's feeder), ``train``, ``evaluate``.
"""
from .batches import PuzzleLoader, StreamSampler
from .evaluate import evaluate, load_eval_net
from .feed import (NetFeedSpec, PuzzleFeed, check_perms_fit, feed_spec, input_layers,
                   make_feed, perms_file, puzzle_feeders, resolve_hash_file)
from .merge import NTILES, RAND_MAX, DrawStream, merge_plan
from .nets import AUTHORS_BATCH, VGG16_BLOCKS, cfn_net_param, write_cfn_prototxt
from .source import (OCCLUDERS, PuzzleDataset, PuzzleParts, PuzzlePartsDataset, PuzzleSource, load_perms)
from .train import AUTHORS_SCHEDULE, PREFIX, build_train_net, default_solver_param, train, write_solver

__all__ = ["PuzzleLoader", "StreamSampler", "evaluate", "load_eval_net", "NetFeedSpec", "PuzzleFeed",
           "check_perms_fit", "feed_spec", "input_layers", "make_feed", "perms_file", "puzzle_feeders", "resolve_hash_file",
           "NTILES", "RAND_MAX", "DrawStream", "merge_plan", "AUTHORS_BATCH", "VGG16_BLOCKS", "cfn_net_param",
           "write_cfn_prototxt", "OCCLUDERS", "PuzzleDataset", "PuzzleParts", "PuzzlePartsDataset",
           "PuzzleSource", "load_perms", "AUTHORS_SCHEDULE", "PREFIX", "build_train_net",
           "default_solver_param", "train", "write_solver"]

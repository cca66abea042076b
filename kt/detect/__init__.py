"""Fast R-CNN fine-tuning and PASCAL VOC evaluation (``caffekt detect``), without the Caffe fork.

What rbgirshick/fast-rcnn (commit b612190) does in Python, re-written here:
``voc`` (lib/datasets/pascal_voc.py, imdb.py), ``proposals`` (selective search
or the user's box files), ``roidb`` (lib/roi_data_layer/roidb.py), ``minibatch``
(lib/roi_data_layer/minibatch.py, lib/utils/blob.py), ``feeder`` (the
``roi_data_layer.layer.RoIDataLayer`` Python layer, as a registered data
feeder of ``caffe_compat.train``), ``train`` (lib/fast_rcnn/train.py),
``test`` (lib/fast_rcnn/test.py), ``nms`` (lib/utils/nms.py) and ``voc_eval``
(the VOCdevkit's VOCevaldet, as py-faster-rcnn's lib/datasets/voc_eval.py).

Where it differs from the fork (each module's docstring says more):

* Proposals: OpenCV's selective search is not the MATLAB code whose boxes the
  fork's ``selective_search_data/*.mat`` hold; give those files with
  ``--proposals`` for the fork's boxes.
* Random streams: one ``np.random.RandomState(RNG_SEED)`` draws what the
  fork's global ``numpy.random`` draws (same sequence for the same roidb,
  tested against a port), but Dropout and fillers use caffekt's torch
  streams, so a training run is not bit-identical to the fork's.
* Boxes are float32 (the fork stores ground truth as uint16, truncating
  fractional XML coordinates); boxes reaching outside an image are clipped
  with a warning (the fork does not check); a class whose regression targets
  have zero spread gets std 1 (the fork divides by zero).
* No prefetch process (the fork's default ``USE_PREFETCH: False`` too), no
  ``detections.pkl`` (no pickle; the VOC results files are the output) and
  the MATLAB devkit is replaced by ``voc_eval`` (VOCevaldet's rules,
  MATLAB's recall points).
* Configs are JSON or the fork's YAML; a ``SOLVER`` section is added.
"""

"""Fast R-CNN fine-tuning and PASCAL VOC evaluation (``caffekt detect``), without the Caffe fork.

What rbgirshick/fast-rcnn (commit b612190) does in Python, re-written here:
``voc`` (lib/datasets/pascal_voc.py, imdb.py), ``proposals`` (selective search
or the user's box files), ``roidb`` (lib/roi_data_layer/roidb.py), ``minibatch``
(lib/roi_data_layer/minibatch.py, lib/utils/blob.py), ``feeder`` (the
``roi_data_layer.layer.RoIDataLayer`` Python layer, as a registered data
feeder of ``caffe_compat.train``), ``train`` (lib/fast_rcnn/train.py),
``test`` (lib/fast_rcnn/test.py), ``nms`` (lib/utils/nms.py) and ``voc_eval``
(the VOCdevkit's VOCevaldet, as py-faster-rcnn's lib/datasets/voc_eval.py).
"""

"""Caffe <-> PyTorch/ONNX converters and Fast R-CNN export (installed as ``caffekt.converters``)."""

"""The ``onnxruntime`` backend of ``caffekt parity``: our module exported to ONNX and run in onnxruntime.

Registered in the ``caffekt.parity_backends`` entry-point group (setup.cfg), so
``caffe_compat.parity`` finds it without importing this package.
"""
from __future__ import annotations

import os
import tempfile
from typing import Dict, List, Mapping

import numpy as np


def export_onnx(net, path: str, batch: int = 1, opset: int = 17) -> List[str]:
    """Write ``net`` (a ``caffe_compat.Net``) as ONNX with every non-input blob an output.

    The export is the project's exporter (``caffekt.converters.onnx_export.
    export_net``: TorchScript tracing, opset >= 13, dynamic batch axis).
    Outputs are named ``blob_<i>`` (Caffe names may hold any character);
    returns the Caffe blob name of each output, in order.
    """
    from .onnx_export import export_net

    names = [b for b in net.blob_shapes if b not in net.inputs]
    return export_net(net, path, outputs=names, opset=opset, batch=batch,
                      onnx_names=[f"blob_{i}" for i in range(len(names))])


def onnxruntime_forward(net, inputs: Mapping[str, np.ndarray], opset: int = 17
                        ) -> Dict[str, np.ndarray]:
    """Every blob of ``net`` through its ONNX export (``export_onnx``) run in onnxruntime."""
    import onnxruntime as ort

    in_names = list(net.inputs)
    with tempfile.TemporaryDirectory(prefix="caffekt-onnx-") as d:
        path = os.path.join(d, "net.onnx")
        # traced at the inputs' own batch: layers that bake shapes still run
        batch = int(np.shape(inputs[in_names[0]])[0]) if in_names else 1
        names = export_onnx(net, path, batch=batch, opset=opset)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {n: np.ascontiguousarray(inputs[n], dtype=np.float32) for n in in_names}
    outs = sess.run([o.name for o in sess.get_outputs()], feed)
    result = dict(feed)
    result.update({n: np.asarray(o) for n, o in zip(names, outs)})
    return result

"""Caffe's binary files: caffemodel, solverstate, binaryproto (mean) and Datum.

Modules: ``blobs`` (BlobProto on the wire, file mapping, blob writers),
``caffemodel``, ``solverstate``, ``blobproto``, ``datum``, ``sniff``.

Readers map the file read-only and walk the wire format (``wire.py``) so that a
blob stored the way Caffe writes it (one packed run of ``BlobProto.data``)
becomes a zero-copy ``np.frombuffer`` view of the mapping; every other encoding
(unpacked floats, several runs, ``double_data``, OpenCV/NVCaffe ``raw_data``)
costs one float32 copy.  Layer parameters other than blobs are small and are
handed to the schema (``caffe_pb2``).  Readers return the raw net: upgrading
V0/V1 is ``upgrade.py``'s job.

Blob shape mirrors ``Blob::FromProto`` (src/caffe/blob.cpp): if any of the
legacy ``num/channels/height/width`` is present the shape is those four (an
absent one is 0, the proto default), else ``shape.dim``; no dims = a scalar.
The number of values must equal the shape's product (``CHECK_EQ`` there).

Writers stream to a temp file beside the target and ``os.replace`` it in, so
a failed write leaves nothing behind, and compute the size first so a file
over Caffe's read limit (``kProtoReadBytesLimit = INT_MAX``,
src/caffe/util/io.cpp) is refused before anything is written.
"""
from .blobproto import encode_blobproto, parse_blobproto, read_blobproto, write_blobproto
from .blobs import CAFFE_MAX_BYTES, F32, DecodedBlob, count_nonfinite, decode_blob, map_file, release_map
from .caffemodel import CaffeModel, LayerBlobs, parse_caffemodel, read_caffemodel, write_caffemodel
from .datum import D_ENCODED, Datum, decode_datum, encode_datum
from .sniff import sniff_binary
from .solverstate import SolverState, parse_solverstate, read_solverstate, write_solverstate

__all__ = ["CAFFE_MAX_BYTES", "F32", "DecodedBlob", "decode_blob", "count_nonfinite", "CaffeModel", "LayerBlobs",
           "parse_caffemodel", "read_caffemodel", "write_caffemodel", "SolverState", "parse_solverstate",
           "read_solverstate", "write_solverstate", "parse_blobproto", "read_blobproto", "encode_blobproto",
           "write_blobproto", "Datum", "encode_datum", "decode_datum", "D_ENCODED", "sniff_binary", "map_file",
           "release_map"]

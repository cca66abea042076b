"""Property test: corrupted Caffe binaries give a valid parse or one CaffeFormatError.

Seeds are caffemodels in every layout the readers accept (V2 packed, V1 with
legacy dims and unpacked floats, V0, fp16 raw data) plus a solverstate and a
Datum.  Hypothesis truncates them, flips and inserts bytes, plants huge
varints and lengths, wrong wire types and absurd dims.  Any exception other
than a CaffeFormatError subclass fails the test, as does an array larger than
the input could hold, or an example taking longer than a few seconds.
"""
from __future__ import annotations

import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caffe_compat import binary, wire
from caffe_compat.errors import CaffeFormatError
from caffe_compat.proto import caffe_pb2


def _seeds():
    rng = np.random.default_rng(1)
    net = caffe_pb2.NetParameter(name="fuzz")
    net.input.append("data")
    conv = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["c"])
    conv.convolution_param.num_output = 2
    b = conv.blobs.add()
    b.shape.dim.extend([2, 1, 2, 2])
    b.data.extend(rng.standard_normal(8).tolist())
    pool = net.layer.add(name="pool", type="Pooling")
    pool.pooling_param.round_mode = caffe_pb2.PoolingParameter.FLOOR
    h = net.layer.add(name="half", type="Scale").blobs.add(
        raw_data_type=caffe_pb2.BlobProto.FLOAT16, raw_data=np.ones(3, "<f2").tobytes())
    h.shape.dim.append(3)
    merge = caffe_pb2.MergeDataParameter(max_substitute=2).SerializeToString()
    v2 = net.SerializeToString() + wire.field_bytes(
        100, wire.field_bytes(1, b"m") + wire.field_bytes(2, b"MergeData") + wire.field_bytes(140, merge))

    v1 = caffe_pb2.NetParameter(name="old")
    lay = v1.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    blob = lay.blobs.add(num=1, channels=1, height=2, width=3)
    unpacked = b"".join(wire.encode_tag(5, wire.I32) + v.tobytes()
                        for v in rng.standard_normal(6).astype("<f4"))
    v1_bytes = v1.SerializeToString()
    blob_bytes = blob.SerializeToString() + unpacked
    layer_bytes = wire.field_bytes(4, b"ip") + wire.field_varint(5, 14) + wire.field_bytes(6, blob_bytes)
    v1_bytes += wire.field_bytes(2, layer_bytes)

    v0 = caffe_pb2.NetParameter()
    outer = v0.layers.add()
    outer.layer.name, outer.layer.type = "conv", "conv"
    ob = outer.layer.blobs.add(num=1, channels=1, height=1, width=2)
    ob.double_data.extend([1.0, 2.0])

    state = caffe_pb2.SolverState(iter=3, learned_net="x", current_step=1)
    hb = state.history.add()
    hb.shape.dim.append(2)
    hb.data.extend([1.0, 2.0])
    datum = caffe_pb2.Datum(channels=1, height=2, width=2, data=bytes(4), label=1,
                            float_data=[0.5])
    return [v2, v1_bytes, v0.SerializeToString(), state.SerializeToString(), datum.SerializeToString()]


SEEDS = _seeds()

HUGE = [wire.encode_varint(2**64 - 1), b"\xff" * 11 + b"\x01", wire.encode_varint(2**31),
        wire.encode_varint(2**62)]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "huge", "tag", "length", "dims"]))
        at = draw(st.integers(0, len(data)))
        if op == "truncate":
            del data[at:]
        elif op == "flip" and data:
            i = min(at, len(data) - 1)
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "huge":
            data[at:at] = draw(st.sampled_from(HUGE))
        elif op == "tag":  # a field with a wrong or impossible wire type
            data[at:at] = wire.encode_tag(draw(st.sampled_from([1, 5, 7, 100, 140])),
                                          draw(st.integers(0, 7)))
        elif op == "length":  # a length-delimited field claiming far more than is there
            data[at:at] = wire.encode_tag(draw(st.sampled_from([2, 5, 7, 100])), wire.LEN) + \
                draw(st.sampled_from(HUGE[:1] + HUGE[2:]))
        else:  # a blob whose dims multiply past any sane size
            dims = wire.field_bytes(1, wire.encode_packed_varints([2**40, 2**40, 7]))
            blob = wire.field_bytes(7, dims) + wire.field_bytes(5, bytes(8))
            data[at:at] = wire.field_bytes(100, wire.field_bytes(7, blob))
    return bytes(data)


def _alarm(signum, frame):
    raise TimeoutError("a reader took more than 5 s on a small input (hang?)")


def _check_arrays(arrays, nbytes):
    total = sum(a.size for a in arrays if a is not None)
    # fp16 raw data doubles in size as float32; nothing else may exceed the input
    assert total * 4 <= 2 * nbytes + 64, (total, nbytes)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_corrupt_binaries_parse_or_raise_caffe_format_error(data):
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(5)
    try:
        for reader in (binary.parse_caffemodel, binary.parse_solverstate, binary.decode_datum,
                       binary.parse_blobproto):
            try:
                out = reader(data)
            except CaffeFormatError:
                continue
            if isinstance(out, binary.CaffeModel):
                _check_arrays([b for lb in out.layers for b in lb.blobs], len(data))
                assert all(len(lp.blobs) == 0 for lp in out.net.layer)
            elif isinstance(out, binary.SolverState):
                _check_arrays(out.history, len(data))
            elif isinstance(out, binary.Datum):
                try:
                    _check_arrays([out.to_array()], len(data))
                except CaffeFormatError:
                    pass
            else:
                _check_arrays([out], len(data))
        assert isinstance(binary.sniff_binary(data), list)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_every_truncation_of_every_seed(seed):
    data = SEEDS[seed]
    for n in range(len(data)):
        try:
            binary.parse_caffemodel(data[:n])
        except CaffeFormatError:
            pass

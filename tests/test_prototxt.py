"""Prototxt text: round trips on every shipped file, located errors, pooling dialects."""
from __future__ import annotations

import os
import re

import pytest

from caffe_compat.errors import TextFormatError
from caffe_compat.io import text_kind
from caffe_compat.proto import caffe_pb2 as pb
from caffe_compat.prototxt import (format_text, parse_net_text, parse_solver_text, parse_text,
                                   read_text_file, write_prototxt)
from conftest import fixture_prototxts

FIXTURE_FILES = fixture_prototxts()


def _parse_any(text, path=None):
    kind = text_kind(text)
    assert kind in ("net", "solver"), path
    return parse_net_text(text, path)[0] if kind == "net" else parse_solver_text(text, path)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: os.path.relpath(p, os.path.dirname(p) + "/.."))
def test_fixture_round_trip(path, tmp_path):
    text = read_text_file(path)
    first = _parse_any(text, path)
    out = tmp_path / "out.prototxt"
    write_prototxt(first, str(out))
    second = _parse_any(out.read_text(), str(out))
    assert second == first
    assert second.SerializeToString() == first.SerializeToString()
    # nothing left beside the target but the target
    assert os.listdir(tmp_path) == ["out.prototxt"]


def test_fixture_list_is_not_empty(fixtures_dir):
    assert len(FIXTURE_FILES) >= 18


def test_jigsaw_fork_net_parses_as_is(fixtures_dir):
    path = os.path.join(fixtures_dir, "jigsaw", "train_val_cfn_jps++.prototxt")
    text = read_text_file(path)
    net, info = parse_net_text(text, path)
    assert len(net.layer) == len(re.findall(r"^layer \{", text, re.M)) == 195
    merge = [l for l in net.layer if l.type == "MergeData"]
    assert [l.name for l in merge] == ["merge"]
    assert (merge[0].merge_data_param.min_substitute, merge[0].merge_data_param.max_substitute) == (0, 3)
    assert len(merge[0].bottom) == 18 and list(merge[0].top)[-1] == "sub_num"
    data0 = net.layer[0]
    assert data0.transform_param.hash_file == "./permutations_701.bin"
    assert (data0.transform_param.siamese_size, data0.transform_param.patch_size,
            data0.transform_param.jitter_size) == (9, 64, 18)
    assert data0.data_param.rand_jump == 2
    assert info.dialects == set()


# ----------------------------------------------------------------- errors

def _error(text, path="net.prototxt", parser=parse_net_text) -> TextFormatError:
    with pytest.raises(TextFormatError) as ei:
        parser(text, path)
    return ei.value


def _pos(text, needle, nth=0):
    """1-based line:col of the nth occurrence of ``needle`` (computed independently)."""
    i = -1
    for _ in range(nth + 1):
        i = text.index(needle, i + 1)
    line = text.count("\n", 0, i) + 1
    col = i - (text.rfind("\n", 0, i) + 1) + 1
    return line, col


def test_unknown_field_names_type_position_and_suggestion():
    text = 'name: "n"\nlayer {\n  name: "c"\n  convolution_param {\n    kernal_size: 3\n  }\n}\n'
    e = _error(text)
    line, col = _pos(text, "kernal_size")
    assert (e.line, e.column, e.token) == (line, col, "kernal_size") == (5, 5, "kernal_size")
    assert str(e) == ("net.prototxt: line 5:5: unknown field 'kernal_size' in message "
                      "caffe.ConvolutionParameter (did you mean 'kernel_size'?), found 'kernal_size'")


def test_unknown_field_without_close_match():
    e = _error('layer { name: "a" zzzzzz: 1 }')
    assert "unknown field 'zzzzzz' in message caffe.LayerParameter; expected a field" in str(e)
    assert "did you mean" not in str(e)
    assert (e.line, e.column) == _pos('layer { name: "a" zzzzzz: 1 }', "zzzzzz")


def test_solver_field_in_net_is_unknown():
    e = _error("base_lr: 0.1\n", "s.prototxt")
    assert str(e).startswith("s.prototxt: line 1:1: unknown field 'base_lr' in message caffe.NetParameter")


def test_unknown_enum_value_lists_the_expected_ones():
    text = 'layer {\n  name: "p"\n  pooling_param { pool: MAXX }\n}'
    e = _error(text)
    assert (e.line, e.column, e.token) == (*_pos(text, "MAXX"), "MAXX")
    assert "unknown value MAXX for enum caffe.PoolingParameter.PoolMethod; expected one of MAX, AVE, STOCHASTIC" \
        in str(e)


def test_unquoted_type_string():
    text = 'layer {\n  name: "a"\n  type: Pooling\n}\n'
    e = _error(text)
    assert (e.line, e.column, e.token) == (3, 9, "Pooling")
    assert "Expected string" in str(e) and "line 3:9" in str(e)


def test_premature_end_of_input():
    e = _error('layer {\n  name: "a"\n  # the closing brace is missing\n')
    assert e.token == "end of input"
    assert str(e).startswith('net.prototxt: line 2:9: Expected "}", found end of input after \'"a"\'')


def test_bad_bool_and_out_of_range():
    e = _error("layer { convolution_param { bias_term: maybe } }")
    assert e.token == "maybe" and 'Expected "true" or "false"' in str(e)
    e = _error("layer { convolution_param { num_output: -3 } }")
    assert e.token == "-3" and "out of range" in str(e)


def test_duplicate_singular_field():
    text = 'layer { name: "a" }\nlayer { name: "b" name: "c" }'
    e = _error(text)
    assert (e.line, e.token) == (2, '"c"')
    assert "field 'name' given twice in message caffe.LayerParameter" in str(e)


def test_error_in_solver_names_solver_type():
    e = _error("base_lr: 0.1\nlr_polcy: \"step\"\n", "solver.prototxt", parse_solver_text)
    assert "line 2:1" in str(e) and "caffe.SolverParameter (did you mean 'lr_policy'?)" in str(e)


def test_non_utf8_file_is_located(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_bytes(b'name: "a"\nlayer { name: "\xff" }\n')
    with pytest.raises(TextFormatError) as ei:
        read_text_file(str(p))
    assert (ei.value.line, ei.value.column) == (2, 16)
    assert str(p) in str(ei.value) and "not UTF-8" in str(ei.value)


# ----------------------------------------------------------------- dialects

def test_ceil_mode_false_becomes_round_mode_floor():
    text = ('layer { name: "p1" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 ceil_mode: false } }\n'
            'layer { name: "p2" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 ceil_mode: true } }\n'
            'layer { name: "p3" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 round_mode: FLOOR } }\n'
            'layer { name: "p4" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 } }\n')
    net, info = parse_net_text(text)
    P = pb.PoolingParameter
    assert [l.pooling_param.round_mode for l in net.layer] == [P.FLOOR, P.CEIL, P.FLOOR, P.CEIL]
    assert not any(l.pooling_param.HasField("ceil_mode") for l in net.layer)
    assert info.pool_rounding == {"p1": P.FLOOR, "p2": P.CEIL, "p3": P.FLOOR}
    assert info.dialects == {"ceil_mode", "round_mode"}
    out = format_text(net)
    assert "ceil_mode" not in out
    assert out.count("round_mode: FLOOR") == 2 and out.count("round_mode: CEIL") == 1


def test_ceil_mode_in_v1_layers_is_folded_too():
    net, info = parse_net_text('layers { name: "p" type: POOLING pooling_param { ceil_mode: false } }')
    assert net.layers[0].pooling_param.round_mode == pb.PoolingParameter.FLOOR
    assert not net.layers[0].pooling_param.HasField("ceil_mode")
    assert info.pool_rounding == {"p": pb.PoolingParameter.FLOOR}


def test_conflicting_dialects_are_refused():
    e = _error('layer { name: "pp" pooling_param { ceil_mode: false round_mode: CEIL } }')
    assert "layer 'pp'" in str(e) and "ceil_mode: false and round_mode: CEIL" in str(e)
    net, _ = parse_net_text('layer { name: "ok" pooling_param { ceil_mode: false round_mode: FLOOR } }')
    assert net.layer[0].pooling_param.round_mode == pb.PoolingParameter.FLOOR


def test_hand_built_ceil_mode_is_written_as_round_mode():
    net = pb.NetParameter()
    lp = net.layer.add(name="p", type="Pooling")
    lp.pooling_param.ceil_mode = False
    out = format_text(net)
    assert "round_mode: FLOOR" in out and "ceil_mode" not in out
    assert net.layer[0].pooling_param.HasField("ceil_mode")  # the caller's message is untouched


def test_solver_with_embedded_net_folds_dialect():
    s = parse_solver_text('net_param { layer { name: "p" pooling_param { ceil_mode: false } } }\nbase_lr: 0.1')
    assert s.net_param.layer[0].pooling_param.round_mode == pb.PoolingParameter.FLOOR
    assert not s.net_param.layer[0].pooling_param.HasField("ceil_mode")


def test_parse_text_bom_and_generic_message():
    m = parse_text('\ufeffdim: 1 dim: 2', pb.BlobShape)
    assert list(m.dim) == [1, 2]

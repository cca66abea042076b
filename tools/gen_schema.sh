#!/usr/bin/env bash
# Regenerate caffe_compat/proto/caffe_pb2.py from caffe.proto.
# Needs protoc (Debian: apt-get install protobuf-compiler; 3.21.x is the
# version the committed file comes from: its output loads on Python protobuf
# 4.21 .. 7.x).  Idempotent: the same protoc gives the same bytes.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
protoc_bin="${PROTOC:-protoc}"
if ! command -v "$protoc_bin" >/dev/null 2>&1; then
    echo "gen_schema.sh: protoc not found (install protobuf-compiler, or set PROTOC)" >&2
    exit 2
fi
echo "gen_schema.sh: using $("$protoc_bin" --version)"
cd "$repo"
# Run from the repo root with -I . so the schema's file name in the descriptor
# pool is "caffe_compat/proto/caffe.proto", not a bare "caffe.proto" that
# pycaffe's own schema could also claim.
tmp="$(mktemp -d caffe_compat/proto/.gen.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
"$protoc_bin" -I . --python_out="$tmp" caffe_compat/proto/caffe.proto
# Atomic replace: a half-written caffe_pb2.py would break every import.
mv -f "$tmp/caffe_compat/proto/caffe_pb2.py" caffe_compat/proto/caffe_pb2.py.tmp
mv -f caffe_compat/proto/caffe_pb2.py.tmp caffe_compat/proto/caffe_pb2.py
echo "gen_schema.sh: wrote caffe_compat/proto/caffe_pb2.py"

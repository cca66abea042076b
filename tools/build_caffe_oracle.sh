#!/usr/bin/env bash
# Build the real Caffe that caffekt's tests and `caffekt parity` compare against.
#
#   bash tools/build_caffe_oracle.sh [PREFIX]
#
# What you get: a CPU-only Caffe with its Python bindings (pycaffe), built from
# the PyPI source distribution brocolli-caffe==9.0.2 (the inisis fork of BVLC
# Caffe; sha256 pinned below) against Debian 12's -dev packages, inside PREFIX:
#
#   PREFIX/venv/bin/python   a venv of its own: `import caffe` works there.  It
#                            never shares an environment with torch.
#   PREFIX/install/python/   the caffe package (_caffe.so + a caffe_pb2.py that
#                            Debian's protoc regenerates, loadable by protobuf>=3.20)
#   PREFIX/env.sh            `source` it to import caffe from another CPython 3.11
#   PREFIX/logs/*.log        one log per stage
#
# PREFIX defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/caffekt/caffe-oracle, the
# place tests/_oracle.py looks (CAFFEKT_ORACLE_PYTHON overrides it there).
#
# A rerun is a no-op apart from the smoke test (a few seconds) while the stamp
# file matches the recipe; FORCE=1 rebuilds from scratch.
#
# Knobs: PYTHON (must be Debian's CPython 3.11: Boost.Python exists only for
# it), JOBS (make parallelism, default: all cores), SDIST (a local copy of the
# tarball, skips the download), KEEP_BUILD=1 (keep the source and build trees).
set -euo pipefail

# ------------------------------------------------------------------ settings
PREFIX=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/caffekt/caffe-oracle}
PYTHON=${PYTHON:-/usr/bin/python3}
JOBS=${JOBS:-$(nproc)}
FORCE=${FORCE:-0}

CAFFE_SDIST=brocolli-caffe-9.0.2.tar.gz
CAFFE_SDIST_SHA256=c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a
# The oracle venv's packages.  caffe/io.py imports scipy and skimage when caffe
# is imported, so they are needed even though the oracle only runs nets.
VENV_PKGS="numpy==2.4.6 protobuf==7.36.2 six==1.17.0 scipy==1.17.1 scikit-image==0.26.0"
DEBIAN_PKGS="build-essential cmake ca-certificates python3-dev python3-venv
  protobuf-compiler libprotobuf-dev libgoogle-glog-dev libgflags-dev libhdf5-dev
  libopenblas-dev libboost-system-dev libboost-thread-dev libboost-filesystem-dev
  libboost-regex-dev libboost-python-dev libgtest-dev"
# Bump when the recipe below changes in a way that needs a rebuild.
RECIPE=2

mkdir -p "$PREFIX/logs"
PREFIX=$(cd "$PREFIX" && pwd)
LOGS=$PREFIX/logs
START=$(date +%s)

say() { printf '[caffe-oracle +%ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
die() { printf '[caffe-oracle] error: %s\n' "$*" >&2; exit 1; }
# run_logged NAME CMD...: run CMD with its output in $LOGS/NAME.log; on failure
# show the end of that log so CI output says what broke.
run_logged() {
  local name=$1; shift
  if ! "$@" >"$LOGS/$name.log" 2>&1; then
    printf '[caffe-oracle] %s failed; last lines of %s:\n' "$name" "$LOGS/$name.log" >&2
    grep -m 5 -E '(error|Error):' "$LOGS/$name.log" >&2 || true
    tail -n 25 "$LOGS/$name.log" >&2
    exit 1
  fi
}

# ------------------------------------------------------------ system packages
install_debian_packages() {
  local want=() p
  for p in $DEBIAN_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || want+=("$p")
  done
  if [ ${#want[@]} -eq 0 ]; then
    say "Debian packages present"
    return
  fi
  command -v apt-get >/dev/null || die "missing packages (${want[*]}) and no apt-get: this recipe targets Debian 12"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  say "apt-get install ${want[*]}"
  run_logged apt-update $sudo apt-get update
  run_logged apt-install env DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${want[@]}"
}

# ----------------------------------------------------------------------- venv
make_venv() {
  VPY=$PREFIX/venv/bin/python
  if [ ! -x "$VPY" ]; then
    say "venv from $PYTHON"
    run_logged venv "$PYTHON" -m venv "$PREFIX/venv"
  fi
  # pip is slow even when nothing changes, so only run it when the pin set moved.
  if [ "$(cat "$PREFIX/venv/.caffekt-pkgs" 2>/dev/null)" != "$VENV_PKGS" ]; then
    say "pip install into the venv: $VENV_PKGS"
    run_logged pip "$VPY" -m pip install --disable-pip-version-check $VENV_PKGS
    echo "$VENV_PKGS" > "$PREFIX/venv/.caffekt-pkgs"
  fi
  PYTAG=$("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
}

# ---------------------------------------------------------------------- sdist
sdist_ok() { [ -f "$1" ] && echo "$CAFFE_SDIST_SHA256  $1" | sha256sum -c --status; }

fetch_sdist() {
  TARBALL=$PREFIX/download/$CAFFE_SDIST
  mkdir -p "$PREFIX/download"
  sdist_ok "$TARBALL" && return
  rm -f "$TARBALL"
  if [ -n "${SDIST:-}" ]; then
    cp "$SDIST" "$TARBALL"
  else
    say "downloading $CAFFE_SDIST from PyPI"
    run_logged download "$VPY" -m pip download --disable-pip-version-check --no-deps \
      --no-binary :all: -d "$PREFIX/download" brocolli-caffe==9.0.2
  fi
  sdist_ok "$TARBALL" || die "$TARBALL does not match the pinned sha256 $CAFFE_SDIST_SHA256"
}

# ---------------------------------------------------------------------- build
# The sdist's CMakeLists assumes a conda tree at ANACONDA_HOME: headers under
# include/pythonX.Y, numpy's under lib/pythonX.Y/site-packages/numpy/core/include,
# and a plain libboost_python in lib/.  Rather than patching it, we hand it a
# tree of symlinks with that layout pointing at the venv and Debian's files.
make_conda_layout() {
  local home=$1 multiarch pyinc npinc
  multiarch=$(gcc -print-multiarch)
  pyinc=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  npinc=$("$VPY" -c 'import numpy; print(numpy.get_include())')
  [ -f "$pyinc/Python.h" ] || die "no Python.h under $pyinc (python3-dev missing?)"
  local boost=/usr/lib/$multiarch/libboost_python${PYTAG/./}.so
  [ -e "$boost" ] || die "no $boost: PYTHON must be the CPython that Debian's Boost.Python was built for"
  rm -rf "$home"
  mkdir -p "$home/include" "$home/lib/python$PYTAG/site-packages/numpy/core"
  ln -s "$pyinc" "$home/include/python$PYTAG"
  ln -s "$npinc" "$home/lib/python$PYTAG/site-packages/numpy/core/include"
  ln -s "$boost" "$home/lib/libboost_python.so"
  # pycaffe links -lhdf5 -lhdf5_hl by name; Debian keeps them in a subfolder.
  ln -s "/usr/lib/$multiarch/hdf5/serial/libhdf5.so" "$home/lib/libhdf5.so"
  ln -s "/usr/lib/$multiarch/hdf5/serial/libhdf5_hl.so" "$home/lib/libhdf5_hl.so"
}

build_caffe() {
  local src=$PREFIX/src bld=$PREFIX/build home=$PREFIX/conda-layout
  rm -rf "$src" "$bld" "$PREFIX/install" "$PREFIX/stamp"
  mkdir -p "$src"
  tar -xzf "$TARBALL" -C "$src" --strip-components=1
  # The tarball carries a stale compiled caffe_pb2 cache; the build regenerates it.
  rm -rf "$src/.git" "$src/python/caffe/__pycache__"
  make_conda_layout "$home"
  say "cmake (log: $LOGS/cmake.log)"
  run_logged cmake cmake -S "$src" -B "$bld" -Wno-dev \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$PREFIX/install" \
    -DANACONDA_HOME="$home" -DPYTHON_VERSION="python$PYTAG" \
    -DCPU_ONLY=ON -DUSE_CUDNN=OFF -DUSE_NCCL=OFF -DUSE_OPENCV=OFF \
    -DUSE_LEVELDB=OFF -DUSE_LMDB=OFF -DUSE_HDF5=OFF \
    -DBUILD_python=ON -DBUILD_python_layer=OFF -DBUILD_docs=OFF -DBUILD_matlab=OFF \
    -DCMAKE_CXX_FLAGS="-I/usr/include/hdf5/serial"
  say "make -j$JOBS (log: $LOGS/make.log; about 3 min per core-pair)"
  run_logged make make -C "$bld" -j"$JOBS"
  run_logged make-install make -C "$bld" install
  [ -f "$PREFIX/install/python/caffe/_caffe.so" ] || die "build finished without install/python/caffe/_caffe.so"
  [ "${KEEP_BUILD:-0}" = 1 ] || rm -rf "$src" "$bld"
}

# --------------------------------------------------------------------- wiring
wire_up() {
  local site
  site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$PREFIX/install/python" > "$site/caffekt_oracle.pth"
  local tmp=$PREFIX/env.sh.tmp
  cat > "$tmp" <<EOF
# Generated by caffekt's tools/build_caffe_oracle.sh.  \`source\` this file to
# import caffe from a CPython $PYTAG that has numpy and protobuf>=3.20.
export PYTHONPATH="$PREFIX/install/python\${PYTHONPATH:+:\$PYTHONPATH}"
export GLOG_minloglevel=\${GLOG_minloglevel:-2}
export OPENBLAS_NUM_THREADS=\${OPENBLAS_NUM_THREADS:-1}
export CAFFEKT_ORACLE_PYTHON="$VPY"
EOF
  mv -f "$tmp" "$PREFIX/env.sh"
}

# ----------------------------------------------------------------- smoke test
# One small net through forward, save and reload: proves the import, the
# BLAS link, the pooling ceil rule of this fork, and the caffemodel writer.
smoke_test() {
  GLOG_minloglevel=2 OPENBLAS_NUM_THREADS=1 "$VPY" - <<'PY'
import os, tempfile
import numpy as np
import caffe

caffe.set_mode_cpu()
net_text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 11 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
layer { name: "pool" type: "Pooling" bottom: "y" top: "p"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "p" top: "z" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "z" top: "prob" }
"""
with tempfile.TemporaryDirectory() as d:
    proto = os.path.join(d, "smoke.prototxt")
    with open(proto, "w") as f:
        f.write(net_text)
    net = caffe.Net(proto, caffe.TEST)
    rng = np.random.RandomState(7)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.uniform(-0.2, 0.2, b.data.shape)
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    net.blobs["x"].data[...] = x
    prob = net.forward()["prob"].copy()
    # ceil rounding: 9 -> 5 rows, 11 -> 6 columns
    assert net.blobs["p"].data.shape == (2, 4, 5, 6), net.blobs["p"].data.shape
    assert np.allclose(prob.sum(axis=1), 1.0, atol=1e-6)
    model = os.path.join(d, "smoke.caffemodel")
    net.save(model)
    again = caffe.Net(proto, caffe.TEST, weights=model)
    again.blobs["x"].data[...] = x
    assert np.array_equal(again.forward()["prob"], prob)
print("smoke test passed:", caffe.__file__)
PY
}

# ----------------------------------------------------------------------- main
[ "$(uname -s)" = Linux ] || die "Linux (Debian 12) only"
install_debian_packages
make_venv
fetch_sdist
WANT_STAMP="recipe=$RECIPE sdist=$CAFFE_SDIST_SHA256 python=$PYTAG $("$VPY" -c 'import numpy; print("numpy=" + numpy.__version__)') $(protoc --version | tr ' ' '=')"
if [ "$FORCE" != 1 ] && [ -f "$PREFIX/install/python/caffe/_caffe.so" ] \
   && [ "$(cat "$PREFIX/stamp" 2>/dev/null)" = "$WANT_STAMP" ]; then
  say "already built for this recipe (FORCE=1 rebuilds)"
  BUILT=0
else
  B0=$(date +%s)
  build_caffe
  BUILT=$(( $(date +%s) - B0 ))
  say "compiled in ${BUILT}s"
fi
wire_up
say "smoke test"
run_logged smoke smoke_test
cat "$LOGS/smoke.log"
# Stamp only a build that passed its smoke test, so a broken one is redone.
echo "$WANT_STAMP" > "$PREFIX/stamp.tmp" && mv -f "$PREFIX/stamp.tmp" "$PREFIX/stamp"
say "done in $(( $(date +%s) - START ))s (compile ${BUILT}s); prefix size $(du -sh "$PREFIX" | cut -f1)"
echo "oracle python: $VPY"

#!/usr/bin/env bash
# The GPU checks in one device call: onnxruntime-gpu joined from the pieces earlier calls left in /tmp/parts,
# then the GPU tests (TESTS=0 skips them), benchmarks/decoder_gpu.py (BENCH=0 skips it) and (FUSION=1) benchmarks/gpu_fusion.py, each log and table
# under $OUT.
#
# Here, once: unpack the onnxruntime-gpu wheel (shared/tools/gpu-wheels downloads it), drop its TensorRT
# provider, and cut an xz tar of its files into pieces under 56 MiB in the git-ignored .gpu-wheels/:
#   mkdir /tmp/ortgpu && (cd /tmp/ortgpu && unzip -q $OLDPWD/.gpu-wheels/onnxruntime_gpu-*.whl \
#     && rm onnxruntime/capi/libonnxruntime_providers_tensorrt.so && tar cf - . | xz -T2 -9) > /tmp/ortgpu.tar.xz
#   split -n 4 -d /tmp/ortgpu.tar.xz .gpu-wheels/xzpart-
# Then one device call per piece, back to back (the machine stays warm 30 s), carrying that piece alone:
#   mkdir -p /tmp/parts && cp .gpu-wheels/xzpart-* /tmp/parts/
# (a carried folder is replaced whole on the device, so pieces only accumulate outside the repository), and
# last this script, carrying the last piece.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p /tmp/parts /tmp/site "$OUT"
cp .gpu-wheels/xzpart-* /tmp/parts/ 2>/dev/null
# joined once per warm machine: a later call (BENCH=0 first, then TESTS=0) finds it there
if [ ! -d /tmp/site/onnxruntime ]; then
  cat /tmp/parts/xzpart-* | python3 -c "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site')" || exit 3
fi
export PYTHONPATH=/tmp/site:$PWD
site=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# onnxruntime-gpu finds cuBLAS/cuDNN in the nvidia-* packages PyTorch's CUDA build brought
export LD_LIBRARY_PATH=$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')${LD_LIBRARY_PATH:-}
python3 -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if [ "${TESTS:-1}" = 1 ]; then
  # addopts cleared: the device image may lack pytest-xdist (addopts asks for -n auto)
  timeout 150 python3 -m pytest -p no:cacheprovider -o addopts="-ra --strict-markers" -m gpu tests/test_gpu.py \
    tests/test_latency_gpu.py -q -rA 2>&1 | tee "$OUT/pytest_gpu.log" | tail -12
fi
# its 30-layer export, optimize (verified) and fp16 conversion took 289 s of an H200 machine's CPU time
[ "${BENCH:-1}" = 1 ] && timeout 420 python3 benchmarks/decoder_gpu.py --layers "${LAYERS:-30}" --out "$OUT" 2>&1 | tee "$OUT/decoder_gpu.log" | tail -12
# FUSION=1 with the tests too can outrun a device call's 600 s: run it with TESTS=0
if [ "${FUSION:-0}" = 1 ]; then
  timeout 200 python3 benchmarks/gpu_fusion.py --out "$OUT" 2>&1 | tee "$OUT/gpu_fusion.log" | tail -20
fi

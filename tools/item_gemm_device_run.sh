#!/bin/bash
# One GPU-machine call (the `run` tool) that measures the prefill-GEMM paths of issue 17 before and
# after in the same call: the CUDA tests, then bench_item (7B shape, clips 10,60) with the defaults
# (cublasGemmEx + a bias pass, each product converting its own x), with OUTRO_CUDA_LT=1
# OUTRO_CUDA_GROUP=1 (cuBLASLt with the bias in its epilogue, products of one x grouped and the bf16
# copy written by the norm / SwiGLU before them) plus --gemm-shapes, the same with
# OUTRO_CUDA_LT_TUNE=1, and tools/bench_transformers_item.py against the new path's JSON.
# Logs under $OUT. Binaries from $BIN (default out/h17: bench_item and cuda_tests from
# tools/link_cuda_dist.sh, carried). The tests' fixtures are read from the build's source dir: pass
# it as SRC (default /work/h17) so that it can be linked to this tree. Run it from the repository
# root (where `run` starts); a copy of it may sit elsewhere, e.g. out/h17/.
ROOT=$PWD
[ -f tools/bench_transformers_item.py ] || { echo "run this from the repository root"; exit 2; }
D=${BIN:-out/h17}
lib=$(find /usr/local /opt /usr/lib -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
export LD_LIBRARY_PATH=$(dirname "$lib"):$LD_LIBRARY_PATH PYTHONUNBUFFERED=1
[ -e /work/main ] || { mkdir -p /work && ln -s "$ROOT" /work/main; }
SRC=${SRC:-/work/h17}
[ -e "$SRC" ] || { mkdir -p "$(dirname "$SRC")" && ln -s "$ROOT" "$SRC"; }
t0=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - t0 )) s"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv > $OUT/smi.txt 2>&1
M=/tmp/item7b
ITEM="$D/bench_item --device cuda --shape 7b --clips 10,60 --reps 3 --keep $M"
stamp tests
timeout 110 $D/cuda_tests --gtest_brief=1 > $OUT/tests.log 2>&1; echo "tests rc=$?" >> $OUT/tests.log
tail -25 $OUT/tests.log
stamp before
timeout 130 $ITEM --strategies baseline > $OUT/item_before.log 2>&1; echo "rc=$?" >> $OUT/item_before.log
stamp after
OUTRO_CUDA_LT=1 OUTRO_CUDA_GROUP=1 timeout 90 $ITEM --json $OUT/ours.json --gemm-shapes > $OUT/item_after.log 2>&1
echo "rc=$?" >> $OUT/item_after.log
stamp transformers
timeout 130 python3 tools/bench_transformers_item.py --shape 7b --clips 10,60 --reps 3 --ours $OUT/ours.json > $OUT/tf.log 2>&1
echo "rc=$?" >> $OUT/tf.log
stamp tuned
OUTRO_CUDA_LT=1 OUTRO_CUDA_GROUP=1 OUTRO_CUDA_LT_TUNE=1 timeout 60 $ITEM --strategies baseline > $OUT/item_tuned.log 2>&1
echo "rc=$?" >> $OUT/item_tuned.log
stamp end
for f in item_before item_after item_tuned; do
  echo "-- $f"
  grep -h "^|\|rc=\|^clip\|error" $OUT/$f.log | grep -v "^|---" | cut -c1-160
done
tail -25 $OUT/tf.log

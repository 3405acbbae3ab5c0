#!/bin/bash
# One run on the GPU machine (the `run` tool): the CUDA tests, bench_cuda, bench_outro --device cuda
# (auto and given sinks) and tools/bench_transformers.py, logs under $OUT. The binaries come from
# $BIN (default build-cuda/dist, carried): built on the build machine (nvcc 13.0, as on the image)
# rather than there; cuda_tests is test_cuda.cpp linked alone with
# -Wl,--as-needed so that it needs only libcublas from the image (see README, "CUDA backend").
#   STEP=all or a comma list of tests,bench,outro,tf  BENCH_ARGS=...  OUTRO_PROMPT=1024
# Building dist on the build machine (a build-cuda configured with -G Ninja -DCMAKE_BUILD_TYPE=Release):
#   ninja -C build-cuda outro_lib outro_cuda CMakeFiles/{bench_cuda,bench_outro}.dir/bench/{bench_cuda,bench_outro}.cpp.o \
#         CMakeFiles/outro_tests.dir/tests/test_cuda.cpp.o
#   then, in build-cuda, for each program: c++ -O3 -Wl,--as-needed OBJ -o dist/NAME liboutro_lib.a liboutro_cuda.a
#   liboutro_lib.a liboutro_cuda.a + the LINK_LIBRARIES that build.ninja lists for bench_cuda (+ libgtest_main.a
#   libgtest.a for cuda_tests), and strip: each then needs only libcublas.so.13 beyond libc/libstdc++.
cd "$(dirname "$0")/.."
ROOT=$PWD
D=${BIN:-build-cuda/dist}
lib=$(find /usr/local /opt /usr/lib -name 'libcublasLt.so.13*' 2>/dev/null | head -1)
echo "cublas: $lib"
export LD_LIBRARY_PATH=$(dirname "$lib"):/usr/local/cuda/lib64:$LD_LIBRARY_PATH
[ -e /work/main ] || { mkdir -p /work && ln -s "$ROOT" /work/main; }
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv
df -h /dev/shm /tmp | tail -2
ldd $D/cuda_tests | grep "not found"
STEP=${STEP:-all}
step() { [[ $STEP == all || ,$STEP, == *,$1,* ]]; }
if step tests; then
  timeout 200 $D/cuda_tests 2>&1 | tee $OUT/tests.log | grep -E "^\[  (FAILED|PASSED|SKIPPED) |rel err|Failure|Expected|Which is|error|Actual" | head -80
fi
if step bench; then
  timeout 240 $D/bench_cuda --json $OUT/ours.json --dir /tmp/m7b --keep ${BENCH_ARGS} 2>&1 | tee $OUT/bench.log
fi
if step outro; then
  timeout 120 $D/bench_outro --device cuda --model /tmp/m7b --prompt ${OUTRO_PROMPT:-1024} --decode 32 --reps 5 2>&1 | tee $OUT/outro.log | grep -A4 "^| strategy"
  printf 'strategy = "outro"\nsinks = [0]\n' > /tmp/outro_sinks.toml
  echo "OutRo with the sink given (no host-side sink detection):"
  timeout 120 $D/bench_outro --device cuda --model /tmp/m7b --prompt ${OUTRO_PROMPT:-1024} --decode 32 --reps 5 --outro-config /tmp/outro_sinks.toml 2>&1 | tee $OUT/outro_sinks.log | grep -A8 "^| strategy"
fi
if step tf; then
  PYTHONUNBUFFERED=1 timeout 240 python3 tools/bench_transformers.py --json $OUT/theirs.json --ours $OUT/ours.json 2>&1 | tee $OUT/tf.log | grep -v Warning
fi

#!/bin/bash
# Links the GPU machine's binaries (bench_outro, bench_cuda, bench_item, bench_moe, cuda_tests) statically against the
# project's libraries from an existing CUDA-on build dir, into BUILD/dist, stripped: each then needs
# only libcublas from the device image. Usage: tools/link_cuda_dist.sh [build]   (then carry build/dist)
set -euo pipefail
B=${1:-build}
ninja -C "$B" -j2 outro_lib outro_cuda CMakeFiles/bench_outro.dir/bench/bench_outro.cpp.o \
  CMakeFiles/bench_cuda.dir/bench/bench_cuda.cpp.o CMakeFiles/bench_item.dir/bench/bench_item.cpp.o CMakeFiles/bench_moe.dir/bench/bench_moe.cpp.o \
  CMakeFiles/outro_tests.dir/tests/test_cuda.cpp.o >/dev/null
cd "$B"
libs=$(sed -n 's/.*-o bench_outro *//p' CMakeFiles/bench_outro.dir/link.txt 2>/dev/null || true)
if [ -z "$libs" ]; then  # Ninja keeps the link line in build.ninja
  libs=$(awk '/^build bench_outro:/{f=1} f&&/LINK_LIBRARIES/{sub(/.*LINK_LIBRARIES = /,""); print; exit}' build.ninja)
fi
mkdir -p dist
L="-L/usr/local/cuda/lib64 liboutro_lib.a liboutro_cuda.a liboutro_lib.a liboutro_cuda.a $libs"
c++ -O3 -Wl,--as-needed CMakeFiles/bench_outro.dir/bench/bench_outro.cpp.o -o dist/bench_outro $L
c++ -O3 -Wl,--as-needed CMakeFiles/bench_cuda.dir/bench/bench_cuda.cpp.o -o dist/bench_cuda $L
c++ -O3 -Wl,--as-needed CMakeFiles/bench_item.dir/bench/bench_item.cpp.o -o dist/bench_item $L
c++ -O3 -Wl,--as-needed CMakeFiles/bench_moe.dir/bench/bench_moe.cpp.o -o dist/bench_moe $L
c++ -O3 -Wl,--as-needed CMakeFiles/outro_tests.dir/tests/test_cuda.cpp.o -o dist/cuda_tests $L \
  /usr/lib/x86_64-linux-gnu/libgtest_main.a /usr/lib/x86_64-linux-gnu/libgtest.a
strip dist/bench_outro dist/bench_cuda dist/bench_item dist/bench_moe dist/cuda_tests
ls -la dist

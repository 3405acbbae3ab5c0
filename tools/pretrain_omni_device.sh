#!/bin/bash
# One device call (the `run` tool) for the omni demo's decoder pre-training (tools/pretrain_omni_decoder.py): a
# ~20-second smoke run first (tiny batch, a few steps, its save and reload), and only if it passes the real run,
# timed so that the whole command ends by END_S seconds (default 500) after it starts. Logs and the real run's
# folder go to $OUT: smoke.log, pretrain.log, pretrain/ (two float32 decoder files, decoder.json, tokenizer.json,
# pretrain_log.json). Run from the repository root, or from a copy of tools/ (TOOLS=that folder):
#   TOOLS=out/h19/tools END_S=500 out/h19/tools/pretrain_omni_device.sh [extra flags for the real run]
set -o pipefail
T0=$(date +%s)
TOOLS=${TOOLS:-tools}
END_S=${END_S:-500}
TOK=${TOK:-models/outro-omni-demo/tokenizer.json}
# the tokenizer's threads (rayon) and the file readers leave some of the 16 cores free
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-12}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import site, sys; print('site-packages:', site.getsitepackages(), sys.version.split()[0])"
# each run under `timeout`, so that a hang costs its own limit and not the call's
timeout 90 python3 "$TOOLS/pretrain_omni_decoder.py" /tmp/pretrain_smoke --smoke --tokenizer "$TOK" 2>&1 | tee "$OUT/smoke.log" \
  || { echo "smoke run failed: no real run"; exit 1; }
echo "smoke run passed after $(( $(date +%s) - T0 ))s"
timeout $(( T0 + END_S + 20 - $(date +%s) )) python3 "$TOOLS/pretrain_omni_decoder.py" "$OUT/pretrain" --tokenizer "$TOK" --minutes 30 \
  --deadline $(( T0 + END_S - 25 )) "$@" 2>&1 | tee "$OUT/pretrain.log"
rc=$?
echo "command took $(( $(date +%s) - T0 ))s, rc $rc"
ls -la "$OUT" "$OUT/pretrain"
exit $rc

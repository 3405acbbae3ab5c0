#!/bin/bash
# One training call on the GPU machine (the `run` tool) for the omni demo model: runs one or more
# tools/train_omni_demo.py runs side by side on the one GPU and packs each output folder as
# $OUT/NAME.tar (model, tokenizer, configs, train_log.json, reference fixture).
#   RUNS="A:--lr 2e-3 --wd 0.1;B:--lr 3e-3 --wd 0.3" MINUTES=7 tools/train_omni_device.sh
# Each run NAME continues /tmp/omni_NAME (full optimiser state in /tmp/omni_NAME.pt) when that exists
# on the machine, else out/omni_runs/NAME (a folder from an earlier call's tar, carried: weights
# only), else starts fresh. The data pack out/omni (tools/omni_clips.py) must be carried.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} TOKENIZERS_PARALLELISM=false
MINUTES=${MINUTES:-7}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
pids=()
names=()
IFS=';' read -ra specs <<< "$RUNS"
for spec in "${specs[@]}"; do
  name=${spec%%:*}
  flags=${spec#*:}
  resume=()
  if [ -d /tmp/omni_$name ]; then
    resume=(--resume /tmp/omni_$name)
  elif [ -d out/omni_runs/$name ]; then
    resume=(--resume out/omni_runs/$name)
  fi
  new=/tmp/omni_${name}_new
  rm -rf $new
  # shellcheck disable=SC2086
  python3 tools/train_omni_demo.py out/omni $new --minutes $MINUTES --state /tmp/omni_$name.pt \
    "${resume[@]}" $flags > $OUT/$name.log 2>&1 &
  pids+=($!)
  names+=($name)
  echo "run $name: ${resume[*]} $flags"
done
rc=0
for i in "${!pids[@]}"; do
  wait ${pids[$i]} || { echo "run ${names[$i]} failed"; tail -30 $OUT/${names[$i]}.log; rc=1; continue; }
  name=${names[$i]}
  rm -rf /tmp/omni_$name
  mv /tmp/omni_${name}_new /tmp/omni_$name
  tar -C /tmp -cf $OUT/$name.tar omni_$name
  grep -E "held-out accuracy|trained |sinks |text only|captions, attribute|reference fixture" $OUT/$name.log
done
exit $rc

#!/usr/bin/env bash
# Pretraining runs side by side on one GPU machine, each with the same wall-clock budget, for the start-point
# comparison in experiments/results/. Run from the repository root there, with .gpu/external (made here by
# `python experiments/gpu_transfer.py pack`) carried along. Each argument is NAME=OPTIONS (pretrain options);
# writes into $OUT: NAME.tar (the checkpoint folder; NAME.tar.partN when over 15 MB) and logs.tar.
#   OUT=dir SECONDS_EACH=270 bash experiments/gpu_pretrain.sh \
#     "b0_s1.5=--variant b0 --input-scale 1.5 --batch-size 32 --lr 0.001" \
#     "b1_s1.5=--variant b1 --input-scale 1.5 --batch-size 32 --lr 0.001"
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
: "${OUT:?set OUT}" "${SECONDS_EACH:=270}" "${THREADS:=4}"
mkdir -p "$OUT"
work=/tmp/pretrain && mkdir -p $work/logs
python3 experiments/gpu_transfer.py unpack .gpu/external /tmp/external
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $work/logs/gpu.txt
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a $work/logs/gpu.txt
common=(--data /tmp/external/monuseg_train --data /tmp/external/nuinsseg_human_spleen --device cuda
        --threads "$THREADS" --boundary-width 2 --crop 256 --warmup 300 --steps 100000
        --max-seconds "$SECONDS_EACH" --save-every 100000 --log-every 250)
names=()
for spec in "$@"; do
  name=${spec%%=*} && names+=("$name")
  # shellcheck disable=SC2086
  python3 -m cryonuseg_hf.cli -v pretrain --out $work/$name "${common[@]}" ${spec#*=} > $work/logs/$name.log 2>&1 &
done
fail=0
for job in $(jobs -p); do wait "$job" || fail=1; done
tail -n 3 $work/logs/*.log
for name in "${names[@]}"; do
  [ -f $work/$name/model.safetensors ] || continue
  tar -C $work -cf $work/$name.tar $name
  if [ "$(stat -c %s $work/$name.tar)" -gt 15000000 ]; then
    split -b 15000000 -d -a 1 $work/$name.tar "$OUT/$name.tar.part"
  else
    cp $work/$name.tar "$OUT/"
  fi
done
tar -C $work -cf "$OUT/logs.tar" logs
ls -la "$OUT"
exit $fail

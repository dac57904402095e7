#!/usr/bin/env bash
# bigft's GPU benchmarks, as one prepared run for one H200 (under 8 minutes):
#   1. MFU of bigft's step, full fine-tuning and LoRA of a 7B-shaped Llama (mfu.py, ~3 min)
#   2. one real QLoRA step of a 65B-shaped Llama, measured beside bigft-plan (qlora65b_memory.py, ~5 min)
# Results (JSON + Markdown, dated, hardware named) go to benchmarks/results/gpu/, and to $OUT
# when set (the device tool's output folder). Random weights built on the GPU: no download.
#
#   bash benchmarks/gpu/run.sh            # needs torch with CUDA, transformers, peft, bitsandbytes
set -uo pipefail
cd "$(dirname "$0")/../.."
RESULTS=benchmarks/results/gpu
mkdir -p "$RESULTS"
{
  date -u +"%Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, peft, bitsandbytes as b; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', b.__version__)"
} > "$RESULTS/hardware.txt" 2>&1
cat "$RESULTS/hardware.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
timeout 200 python3 benchmarks/gpu/mfu.py || status=$?
timeout 280 python3 benchmarks/gpu/qlora65b_memory.py || status=$?
if [ -n "${OUT:-}" ]; then cp -r "$RESULTS" "$OUT/"; fi
exit $status

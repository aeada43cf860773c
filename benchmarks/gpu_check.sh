#!/usr/bin/env bash
# The one GPU check of issue #29 item 6 (docs/model.md "Figures"): benchmarks/train_step.py on the paper
# profile (params.paper.yaml; batch 14 = train.batch_size there), fast (bf16 autocast + SDPA + batched pooling
# and loss) vs faithful (fp32 eager, TF32 off, explicit attention, looped pooling and loss), with the two
# fast-path options (torch.compile'd vision tower, fused AdamW), interleaved; then the tiny (demo, conv)
# profile on the same card. JSON + logs go to $1, else $OUT (the device tool's folder), else ./gpu_check_out.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Sized to finish in under 8 minutes on one H100 (each benchmark has its own timeout; the paper run is
# mostly model build, the FLOP count and the first compiled step). Needs a CUDA torch: the repo's .venv
# when it has one, else `python3` (the lent machines' image holds torch, transformers, tokenizers, numpy,
# pyyaml, but not pydantic: carry wheels in .whl, made here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl pydantic pydantic-core annotated-types typing-inspection
# and they are installed into /tmp/site below).
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-${OUT:-gpu_check_out}}
mkdir -p "$out_dir"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
py=python3
if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  py=.venv/bin/python
fi
started=$(date +%s)
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$py" -c "import torch, pydantic, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
    torch.cuda.get_device_name() if torch.cuda.is_available() else '-', 'pydantic', pydantic.__version__,
    'transformers', transformers.__version__)"
} 2>&1 | tee "$out_dir/env.txt"
"$py" -c "import torch, pydantic, sys; sys.exit(not torch.cuda.is_available())" || {
  echo "gpu_check: needs a CUDA torch and pydantic (see the header)" | tee -a "$out_dir/env.txt"
  exit 2
}
status=0
# paper profile: 4 configurations x (2 warm-up + 10 timed) steps of batch 14; the compiled one's first step
# pays the compilation (reported apart as "1st step s")
timeout 390 "$py" benchmarks/train_step.py --paper --steps 10 --warmup 2 --compile --fused \
  --json "$out_dir/train_step_paper.json" 2>&1 | tee "$out_dir/train_step_paper.log" || status=1
# tiny profile (the demo's conv encoder, params.yaml) on the same card, for the CPU table's GPU twin
timeout 75 "$py" benchmarks/train_step.py --tiny --steps 20 --warmup 2 --compile --fused \
  --json "$out_dir/train_step_tiny.json" 2>&1 | tee "$out_dir/train_step_tiny.log" || status=1
echo "gpu_check: $(($(date +%s) - started)) s, status $status" | tee -a "$out_dir/env.txt"
exit $status

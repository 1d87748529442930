#!/usr/bin/env bash
# The main job's before/after table on the quick subset (grace.evaluation.runner.before_after):
#   experiments/offline_suite/quick.sh                  # base without and with a rationale
#   experiments/offline_suite/quick.sh outputs/run      # + a trained run (newest checkpoint)
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-outputs/eval/offline_suite/quick}
CHECKPOINT=${1:-}
shift || true

overrides=()
if [[ -n "$CHECKPOINT" ]]; then
  overrides+=("eval.models=[\
{label: 'base (no rationale)', source: 'packaged:smollm2-135m', rationale: false},\
{label: 'base + rationale', source: 'packaged:smollm2-135m', rationale: true},\
{label: 'GRACE-trained + rationale', source: '$CHECKPOINT', rationale: true}]")
fi
exec "$PYTHON" -m grace.cli.eval eval=quick hydra.run.dir="$OUT" "${overrides[@]}" "$@"

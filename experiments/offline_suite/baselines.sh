#!/usr/bin/env bash
# The baseline table of README.md: the whole offline suite for the packaged SmolLM2-135M-Instruct without
# and with a greedy 48-token rationale, all-MiniLM-L6-v2 for reference and, when given, a GRACE checkpoint.
#
#   experiments/offline_suite/baselines.sh                          # the three baseline rows
#   experiments/offline_suite/baselines.sh outputs/run              # + a trained run (newest checkpoint)
#   OUT=outputs/eval/mine experiments/offline_suite/baselines.sh '' eval.max_new_tokens=32
#
# Re-running with the same OUT resumes: mteb's result cache (OUT/mteb) keeps finished tasks and the
# embedding cache ($GRACE_CACHE/embeddings.sqlite) keeps every finished chunk of 256 texts.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-outputs/eval/offline_suite/baselines}
CHECKPOINT=${1:-}
shift || true

overrides=()
if [[ -n "$CHECKPOINT" ]]; then
  overrides+=("eval.models=[\
{label: 'SmolLM2-135M base (no rationale)', source: 'packaged:smollm2-135m', rationale: false},\
{label: 'SmolLM2-135M base + rationale', source: 'packaged:smollm2-135m', rationale: true},\
{label: 'GRACE-trained + rationale', source: '$CHECKPOINT', rationale: true},\
{label: 'all-MiniLM-L6-v2 (reference)', source: 'packaged:all-minilm-l6-v2', kind: sentence-transformers}]")
fi
exec "$PYTHON" -m grace.cli.eval eval=baselines hydra.run.dir="$OUT" "${overrides[@]}" "$@"

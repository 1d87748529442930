#!/usr/bin/env bash
# The third pass of the quality study (experiments/quality/README.md, "Third pass"), one stage per argument:
#
#   bash experiments/quality/third_pass.sh options-train     # baseline + 4 options, 18 steps x seeds 0,1,2
#   bash experiments/quality/third_pass.sh options-evaluate  # their checkpoints + base rows, three tasks, 32 tokens
#   bash experiments/quality/third_pass.sh tokens64-evaluate # the 64-token option and base + rationale, at 64 tokens
#   bash experiments/quality/third_pass.sh budget-36         # the baseline continued to 36 steps, evaluated
#
# Every stage resumes where it stopped: training with trainer.resume=auto (run directories are named by their
# overrides, not their budget), evaluation from mteb's result cache and the embedding cache. Run them one at a
# time on 2 cores. Runs go to $OUT (default outputs/quality/third, ignored by git); each evaluation's
# quality.json is copied aside under a name that says what it holds, for scores.py and costs.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_WAIT_POLICY=PASSIVE
OUT=${OUT:-outputs/quality/third}
PYTHON=${PYTHON:-.venv/bin/python}
TASKS=GraceLeeSTS,GracePangLeePolarity,GraceChatterbotRetrieval
BASELINE=quality_grace_no_truncation_rule
OPTIONS_AT_32=quality_option_per_component,quality_option_constant,quality_option_queries  # evaluated at 32 tokens
OPTIONS="$OPTIONS_AT_32,quality_option_64_tokens"
QUALITY="$PYTHON experiments/quality/quality.py"

case "${1:-}" in
  options-train)
    $QUALITY train --out "$OUT" --methods "$BASELINE,$OPTIONS" -- trainer.max_steps=18 logger.progress_bar=false ;;
  options-evaluate)
    $QUALITY evaluate --out "$OUT" --methods "$BASELINE,$OPTIONS_AT_32" --tasks "$TASKS"
    cp "$OUT/quality.json" "$OUT/quality_step18.json" ;;
  tokens64-evaluate)
    $QUALITY evaluate --out "$OUT" --methods quality_option_64_tokens --tasks "$TASKS" --max-new-tokens 64 --no-reference
    mv "$OUT/quality.json" "$OUT/tokens64.json" ;;  # not quality*.json: its base + rationale row is another setting
  budget-36)
    $QUALITY train --out "$OUT" --methods "$BASELINE" -- trainer.max_steps=36 logger.progress_bar=false
    $QUALITY evaluate --out "$OUT" --methods "$BASELINE" --tasks "$TASKS"
    cp "$OUT/quality.json" "$OUT/quality_step36.json" ;;
  *)
    sed -n '2,12p' "$0"; exit 2 ;;
esac

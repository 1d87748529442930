#!/usr/bin/env bash
# The third pass of the quality study (experiments/quality/README.md, "Third pass"), one stage per argument:
#
#   bash experiments/quality/third_pass.sh options-train     # baseline + 4 options, 18 steps x seeds 0,1,2
#   bash experiments/quality/third_pass.sh options-evaluate  # their checkpoints + base rows, three tasks, 32 tokens
#   bash experiments/quality/third_pass.sh tokens64-train    # the 64-token option alone, 18 steps x seeds 0,1,2
#   bash experiments/quality/third_pass.sh tokens64-evaluate # the 64-token option and base + rationale, at 64 tokens
#   bash experiments/quality/third_pass.sh budget            # the baseline to 18, 36, 90 steps; contrastive FT as long
#   bash experiments/quality/third_pass.sh suite step90      # the budget's newest checkpoints + base rows, all six tasks
#   bash experiments/quality/third_pass.sh two-stage         # SFT, gentle / aggressive GRACE from it, gentle from base
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
TWO_STAGE=two_stage_sft,two_stage_gentle,two_stage_aggressive,two_stage_gentle_from_base
QUALITY="$PYTHON experiments/quality/quality.py"

case "${1:-}" in
  options-train)
    $QUALITY train --out "$OUT" --methods "$BASELINE,$OPTIONS" -- trainer.max_steps=18 logger.progress_bar=false ;;
  options-evaluate)
    $QUALITY evaluate --out "$OUT" --methods "$BASELINE,$OPTIONS_AT_32" --tasks "$TASKS"
    cp "$OUT/quality.json" "$OUT/quality_step18.json" ;;
  tokens64-train)
    $QUALITY train --out "$OUT" --methods quality_option_64_tokens -- trainer.max_steps=18 logger.progress_bar=false ;;
  tokens64-evaluate)
    $QUALITY evaluate --out "$OUT" --methods quality_option_64_tokens --tasks "$TASKS" --max-new-tokens 64 --no-reference
    mv "$OUT/quality.json" "$OUT/tokens64.json" ;;  # not quality*.json: its base + rationale row is another setting
  budget)  # at each budget: the baseline's 3 seeds, then contrastive fine-tuning for the minutes they trained
    for steps in ${BUDGET_STEPS:-18 36 90}; do
      $QUALITY train --out "$OUT" --methods "$BASELINE" -- trainer.max_steps="$steps" logger.progress_bar=false
      # Contrastive fine-tuning's own step time sets its steps: 4 steps measure it before the first budget.
      ls -d "$OUT"/runs/experiment=quality_contrastive,* >/dev/null 2>&1 ||
        $QUALITY train --out "$OUT" --methods quality_contrastive -- trainer.max_steps=4 logger.progress_bar=false
      matched=$($QUALITY budget --out "$OUT" --as-long-as "$BASELINE" | tee /dev/stderr | sed -n 's/^quality_contrastive: .*max_steps=//p')
      $QUALITY train --out "$OUT" --methods quality_contrastive -- trainer.max_steps="$matched" logger.progress_bar=false
      $QUALITY evaluate --out "$OUT" --methods "$BASELINE,quality_contrastive" --tasks "$TASKS"
      cp "$OUT/quality.json" "$OUT/quality_budget$steps.json"
    done ;;
  suite)  # not quality*.json: scores.py draws the three-task snapshots. Named after the budget it evaluates.
    $QUALITY evaluate --out "$OUT" --methods "$BASELINE,quality_contrastive" --tasks offline
    mv "$OUT/quality.json" "$OUT/suite_${2:-newest}.json" ;;
  two-stage)  # per seed: SFT on the packaged model's best-of-3 rationales, then each RL preset from that SFT run
    demos="$OUT/two_stage_demos.jsonl"  # one set of demonstrations for every seed, as experiments/two_stage/run.sh makes it
    [ -f "$demos" ] || $PYTHON -m grace.cli.sft sample experiment=two_stage_common logger=none logger.progress_bar=false \
      sample.output="$demos" sample.num_examples=12 sample.keep_truncated=true seed=1
    $QUALITY train --out "$OUT" --cli sft --methods two_stage_sft -- data.train_file="$(realpath "$demos")" logger=none logger.progress_bar=false
    sft="$(realpath "$OUT")/runs/experiment=two_stage_sft,seed=\${seed}"  # each job's own seed, resolved by Hydra
    $QUALITY train --out "$OUT" --methods two_stage_gentle,two_stage_aggressive -- "model.source='$sft'" logger=none logger.progress_bar=false
    $QUALITY train --out "$OUT" --methods two_stage_gentle_from_base -- logger=none logger.progress_bar=false
    $QUALITY evaluate --out "$OUT" --methods "$TWO_STAGE" --tasks "$TASKS"
    mv "$OUT/quality.json" "$OUT/two_stage.json"  # not quality*.json: other runs, another training setting
    $QUALITY guards --out "$OUT" --methods "$TWO_STAGE" | tee "$OUT/two_stage_guards.md" ;;
  *)
    sed -n '2,15p' "$0"; exit 2 ;;
esac

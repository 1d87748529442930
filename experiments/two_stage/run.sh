#!/usr/bin/env bash
# Two-stage training on the packaged SmolLM2 and chatterbot triplets, then the gentle and the aggressive
# RL stage from the same SFT warm start (experiments/two_stage/README.md). About an hour on 2 shared CPU
# cores. Rerunning continues: each stage is skipped when its output exists, and the training stages
# resume from their newest checkpoint (trainer.resume=auto).
#   experiments/two_stage/run.sh [OUT]        (OUT defaults to outputs/two_stage)
set -euo pipefail
OUT=${1:-outputs/two_stage}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python}
COMMON=(logger=none logger.progress_bar=false)
mkdir -p "$OUT"

# 1. Demonstrations without a teacher: the packaged policy's best of 3 rationales (<= 24 tokens) for every
#    text of 12 training triplets, by the GRACE reward; rationales cut at the limit are kept (see two_stage_sft.yaml).
[ -f "$OUT/demos.jsonl" ] || $PY -m grace.cli.sft sample experiment=two_stage_common "${COMMON[@]}" \
  sample.output="$OUT/demos.jsonl" sample.num_examples=12 sample.keep_truncated=true seed=1

# 2. Stage 1: supervised fine-tuning on them (12 steps of 6 demonstrations, 6 held out).
$PY -m grace.cli.sft experiment=two_stage_sft "${COMMON[@]}" data.train_file="$OUT/demos.jsonl" \
  trainer.output_dir="$OUT/sft" trainer.resume=auto

# 3. Stage 2, twice from the same warm start: gentle polishing, and its aggressive counterpart.
for preset in gentle aggressive; do
  $PY -m grace.cli.train experiment=two_stage_$preset "${COMMON[@]}" model.source="$OUT/sft" \
    trainer.output_dir="$OUT/$preset" trainer.resume=auto
done

# 4. The figures of the README.
$PY experiments/two_stage/plots.py "$OUT" experiments/two_stage

#!/usr/bin/env bash
# Train and register the two tutorial tasks with their specs' own settings:
#   train_examples.sh DATA_DIR [BASE_MODEL] [REGISTRY]
#   DATA_DIR   the folder holding dog_grooming/ and awesome_chatgpt_prompts/ (e.g. ../shared/data)
#   BASE_MODEL a Hugging Face id, local path or embedded id; default: the specs' smollm2-135m-instruct
#   REGISTRY   default: $PROMPTMUX_REGISTRY, else the per-user registry
# Learning curves and metrics land in ./promptmux-runs/.
set -euo pipefail
data=${1:?usage: train_examples.sh DATA_DIR [BASE_MODEL] [REGISTRY]}
model=${2:-}
registry=${3:-${PROMPTMUX_REGISTRY:-}}
here=$(cd "$(dirname "$0")" && pwd)
common=(${model:+--base-model "$model"} ${registry:+--registry "$registry"} --alias production)
promptmux train --spec "$here/dog-grooming.yaml" "${common[@]}" \
  --data "$data/dog_grooming/dog_grooming_reviews_train_data.json" \
  --eval-data "$data/dog_grooming/dog_grooming_reviews_test_data.json" \
  --output-dir promptmux-runs/dog-grooming
promptmux train --spec "$here/act-as.yaml" "${common[@]}" \
  --data "$data/awesome_chatgpt_prompts/prompts.csv" --limit 50 \
  --output-dir promptmux-runs/act-as

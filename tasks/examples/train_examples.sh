#!/usr/bin/env bash
# Train and register the two tutorial tasks: train_examples.sh DATA_DIR [BASE_MODEL] [REGISTRY]
#   DATA_DIR   the folder holding dog_grooming/ and awesome_chatgpt_prompts/ (e.g. ../shared/data)
#   BASE_MODEL a Hugging Face id or path (bigscience/bloomz-560m, ibm-granite/...), default tiny-random-llama
set -euo pipefail
data=${1:?usage: train_examples.sh DATA_DIR [BASE_MODEL] [REGISTRY]}
model=${2:-tiny-random-llama}
registry=${3:-${PROMPTMUX_REGISTRY:-}}
here=$(cd "$(dirname "$0")" && pwd)
promptmux train --spec "$here/dog-grooming.yaml" --base-model "$model" ${registry:+--registry "$registry"} \
  --data "$data/dog_grooming/dog_grooming_reviews_train_data.json" \
  --eval-data "$data/dog_grooming/dog_grooming_reviews_test_data.json" \
  --input-field input --target-field output --init-text "Classify if the customer was satisfied" \
  --num-virtual-tokens 8 --epochs 3 --alias production
promptmux train --spec "$here/act-as.yaml" --base-model "$model" ${registry:+--registry "$registry"} \
  --data "$data/awesome_chatgpt_prompts/prompts.csv" --limit 50 \
  --input-field act --target-field prompt --init-text "I want you to act as" \
  --num-virtual-tokens 4 --epochs 5 --lr 3e-2 --alias production

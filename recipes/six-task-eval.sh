#!/usr/bin/env bash
# Retrieval-only evaluation of a trained model against the base encoder and BM25 on the six dev sets that
# `llm-embedder pipeline recipes/reproduce.yaml` built and scored, on the same records as that pipeline (first
# 100 of a seeded shuffle). Used for the training check in docs/results.md:
#   llm-embedder train --config recipes/six-task-train.yaml -o runs/six-task
#   DEV_icl=runs/icl-gemma/dev.scored.jsonl recipes/six-task-eval.sh runs/six-task [EXTRA_RETRIEVER_SPEC ...]
# Writes runs/six-task/eval/<task>.{json,md,png}; ~10 min on 2 CPU cores. TASKS="icl tool" picks tasks.
set -euo pipefail
model=${1:?usage: six-task-eval.sh MODEL_DIR [LABEL=SPEC ...]}
shift
run=${REPRODUCE_DIR:-runs/reproduce}
data=$run/data
cli=${LLM_EMBEDDER:-llm-embedder}
extra=()
for spec in "$@"; do extra+=(-r "$spec"); done
for task in ${TASKS:-qa convsearch chat lrlm icl tool}; do
  override=DEV_$task  # e.g. DEV_icl=runs/icl-gemma/dev.scored.jsonl: the same records, another teacher's labels
  dev=${!override:-$data/$task/dev.scored.jsonl}
  [[ -f $dev ]] || dev=$data/$task/dev.jsonl
  # the corpus the pipeline's build stage recorded (none: rank each record's own candidates), as its eval does
  path=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["result"].get("corpus") or "")' \
    "$run/state/build-$task.json")
  corpus=()
  [[ -n $path ]] && corpus=(--corpus "$path")
  "$cli" eval --task "$task" --data "$dev" "${corpus[@]}" -r bm25 -r base=default -r "trained=$model" "${extra[@]}" \
    --limit 100 --sample random --seed 0 --no-downstream --quiet -o "$model/eval"
done

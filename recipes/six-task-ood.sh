#!/usr/bin/env bash
# The out-of-distribution half of the training check (docs/results.md): the models that
# `llm-embedder pipeline recipes/six-task.yaml` trained, against the plain base encoder and BM25, on data from
# other distributions than the training data:
#   qa    MS MARCO (50 TREC-DL queries, 5,000 passages, graded qrels; ../shared/data/raw/msmarco_subset) - the
#         training questions are Natural Questions
#   lrlm  other CPython 3.11 standard-library files than the training ones (argparse, pathlib, dataclasses,
#         logging), scored by the same LM as the pipeline's lrlm records (relevant = its favourite earlier chunk)
#   tool  is already out of distribution in the pipeline's own eval: its dev queries are StableToolBench G2/G3,
#         its training queries G1.
# Usage: recipes/six-task-ood.sh [RUN_DIR [MODEL ...]]   (default runs/six-task and every model folder of
#        RUN_DIR/models; name MODELs to evaluate only those; ~10 min on 2 CPU cores, half of it scoring)
# Writes RUN_DIR/ood/<set>/ (records) and RUN_DIR/ood/eval/<task>.{json,md,png}. Rerun it: finished steps are kept.
set -euo pipefail
run=${1:-runs/six-task}
shift $(( $# > 0 ? 1 : 0 ))
shared=${LLM_EMBEDDER_DATA:-../shared/data}
cli=${LLM_EMBEDDER:-llm-embedder}
stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
ood=$run/ood
mkdir -p "$ood"

models=()
if [[ $# -gt 0 ]]; then
  for name in "$@"; do
    [[ -f $run/models/$name/llm_embedder.json ]] || { echo "six-task-ood.sh: no trained model $run/models/$name" >&2; exit 2; }
    models+=(-r "$name=$run/models/$name")
  done
else
  for dir in "$run"/models/*/; do
    [[ -f $dir/llm_embedder.json ]] && models+=(-r "$(basename "$dir")=${dir%/}")
  done
fi
[[ ${#models[@]} -gt 0 ]] || { echo "six-task-ood.sh: no trained model in $run/models (run the pipeline first)" >&2; exit 2; }

# qa: MS MARCO subset, graded relevance
[[ -f $ood/msmarco/dev.jsonl ]] || "$cli" build beir "$shared/raw/msmarco_subset" --task qa -o "$ood/msmarco"
"$cli" eval --task qa --data "$ood/msmarco/dev.jsonl" --corpus "$ood/msmarco/corpus.jsonl" \
  -r bm25 -r base=default "${models[@]}" --no-downstream --quiet -o "$ood/eval/msmarco"

# lrlm: other standard-library files, chunked and scored as the training records are
if [[ ! -f $ood/lrlm/dev.scored.jsonl ]]; then
  [[ -f $ood/lrlm/dev.jsonl ]] || "$cli" build lrlm "$stdlib/argparse.py" "$stdlib/pathlib.py" \
    "$stdlib/dataclasses.py" "$stdlib/logging/__init__.py" --chunk-tokens 128 --every 12 --min-history 4 \
    --max-candidates 16 -o "$ood/lrlm/dev.jsonl"
  "$cli" score --task lrlm --max-key-tokens 256 "$ood/lrlm/dev.jsonl" -o "$ood/lrlm/dev.scored.jsonl"
fi
"$cli" eval --task lrlm --data "$ood/lrlm/dev.scored.jsonl" \
  -r bm25 -r base=default "${models[@]}" --no-downstream --quiet -o "$ood/eval/lrlm-stdlib"

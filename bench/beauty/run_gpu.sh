#!/usr/bin/env bash
# The Beauty recipe, one stage per call, each stage under 10 minutes (bench/beauty/README.md).
#
#   bash bench/beauty/run_gpu.sh STAGE [ABLATION]
#
# Stages: prepare | train | evaluate | baselines | bench | ablation NAME {prepare|train|evaluate} | all
# `train` resumes and stops itself after the config's time_limit with a checkpoint: call it again
# until it prints "training done". Large files (data, cache, checkpoints) stay in $RUN on the
# machine; small results (metrics, logs, throughput) go to $OUT/<stage>/, at most 8 files each.
#
# Environment: CONFIG (default bench/beauty/config.json), RUN (default runs/beauty), OUT (default
# $RUN/out; the GPU tool copies $OUT back), BEAUTY (default ../shared/data/beauty).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CONFIG="${CONFIG:-$HERE/config.json}"
RUN="${RUN:-runs/beauty}"
OUT="${OUT:-$RUN/out}"
BEAUTY="${BEAUTY:-$REPO/../shared/data/beauty}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
# the GPU machine has no installed p5x: the stages and bench/ scripts import it from the checkout
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# progress bars are \r-joined megabyte lines in captured logs; the Trainer still logs its numbers
export HF_DATASETS_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1

usage() {
  echo "usage: run_gpu.sh {prepare|train|evaluate|baselines|bench|all} | run_gpu.sh ablation NAME {prepare|train|evaluate}" >&2
  exit 2
}

flags() { "$PY" "$HERE/flags.py" "$CONFIG" "$@"; }
now() { date +%s.%N; }

# stage_time DIR NAME START: record the wall time of a stage as DIR/time_NAME.json
stage_time() {
  "$PY" - "$1/time_$2.json" "$3" "$(now)" "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'EOF'
import json, sys
path, t0, t1, commit = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
json.dump({"seconds": round(t1 - t0, 2), "commit": commit}, open(path, "w"), indent=1)
EOF
}

# do_prepare MODEL_DIR RESULTS_DIR [extra train flags...]: convert Beauty (once) and build the cache
do_prepare() {
  local model="$1" res="$2"; shift 2
  mkdir -p "$res"
  local t0; t0="$(now)"
  if [ ! -f "$RUN/data/manifest.json" ]; then
    "$PY" -m data_prep p5 --input "$BEAUTY" --output "$RUN/data" --name beauty
  fi
  # shellcheck disable=SC2046
  "$PY" "$REPO/train.py" $(flags train) "$@" --data "$RUN/data" --output "$model" --prepare-only \
    2>&1 | tail -n 40 | tee "$res/prepare.log"
  stage_time "$res" prepare "$t0"
}

# do_train MODEL_DIR RESULTS_DIR [extra train flags...]: one resumable slice of training
do_train() {
  local model="$1" res="$2"; shift 2
  mkdir -p "$res"
  local t0; t0="$(now)"
  # shellcheck disable=SC2046
  "$PY" "$REPO/train.py" $(flags train) "$@" --data "$RUN/data" --output "$model" --pretokenize --resume \
    2>&1 | grep -v "it/s]$\|s/it]$" | tail -n 60 > "$res/train_last.log"
  local step
  step="$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['global_step'])" "$model/throughput.json")"
  cp "$model/throughput.json" "$res/throughput_step$step.json"
  "$PY" -c "import json,sys; json.dump(json.load(open(sys.argv[1]))['log_history'], open(sys.argv[2], 'w'))" \
    "$model/trainer_state.json" "$res/log_history.json"
  stage_time "$res" "train_step$step" "$t0"
  if "$PY" -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))['done'] else 1)" "$model/throughput.json"; then
    echo "training done (step $step)"
  else
    echo "training not done (step $step): run the train stage again"
  fi
}

# the prompts scored a second time with the history left out (config oneshot.exclude_history_templates)
excluded_templates() {
  "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["oneshot"].get("exclude_history_templates") or "sequential-1")' "$CONFIG"
}

# do_evaluate MODEL_DIR RESULTS_DIR: full test ranking, seen and unseen prompts, timed; then the
# seen prompt with each user's history left out of the search (a second protocol, in RESULTS_DIR/history_excluded)
do_evaluate() {
  local model="$1" res="$2"
  mkdir -p "$res"
  local t0; t0="$(now)"
  # shellcheck disable=SC2046
  "$PY" -m p5x.evaluate --checkpoint "$model" $(flags evaluate) --no-baselines --no-progress \
    --out "$res" 2>&1 | tail -n 40 > "$res/evaluate.log"
  stage_time "$res" evaluate "$t0"
  cat "$res/metrics.md"
  mkdir -p "$res/history_excluded"
  t0="$(now)"
  # shellcheck disable=SC2046
  "$PY" -m p5x.evaluate --checkpoint "$model" $(flags evaluate "template_ids=$(excluded_templates)") \
    --no-baselines --no-progress --exclude-history \
    --out "$res/history_excluded" 2>&1 | tail -n 40 > "$res/history_excluded/evaluate.log"
  stage_time "$res" evaluate_history_excluded "$t0"
  cat "$res/history_excluded/metrics.md"
}

stage="${1:-}"
case "$stage" in
  prepare) do_prepare "$RUN/model" "$OUT/prepare" ;;
  train) do_train "$RUN/model" "$OUT/train" ;;
  evaluate) do_evaluate "$RUN/model" "$OUT/eval" ;;
  baselines)
    mkdir -p "$OUT/baselines"
    t0="$(now)"
    # shellcheck disable=SC2046
    "$PY" -m p5x.baselines --data "$RUN/data" $(flags baselines) --no-progress --out "$OUT/baselines" \
      2>&1 | tail -n 40 > "$OUT/baselines/baselines.log"
    stage_time "$OUT/baselines" baselines "$t0"
    cat "$OUT/baselines/metrics.md" ;;
  bench)
    mkdir -p "$OUT/bench"
    tok="$RUN/model/pretokenized/tokenizer"  # the run's own vocabulary when prepare has run
    # shellcheck disable=SC2046
    "$PY" "$REPO/bench/train_throughput.py" --data "$RUN/data" $(flags bench.throughput) \
      $( [ -d "$tok" ] && echo --tokenizer "$tok" ) \
      --json "$OUT/bench/train_throughput.json" > "$OUT/bench/train_throughput.log" 2>&1
    dev="$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")"
    # shellcheck disable=SC2046
    "$PY" "$REPO/bench/decode_bench.py" --device "$dev" $(flags bench.decode) \
      --json "$OUT/bench/decode_bench.json" > "$OUT/bench/decode_bench.log" 2>&1
    # one-token ids (the one-command run's atomic index): adds p5x.inference.one_token_beams
    # shellcheck disable=SC2046
    "$PY" "$REPO/bench/decode_bench.py" --device "$dev" $(flags bench.decode_atomic) \
      --json "$OUT/bench/decode_bench_atomic.json" > "$OUT/bench/decode_bench_atomic.log" 2>&1
    # a decoder-only model of SmolLM2-135M's shape over three-token ids
    # shellcheck disable=SC2046
    "$PY" "$REPO/bench/decode_bench.py" --device "$dev" $(flags bench.decode_llama) \
      --json "$OUT/bench/decode_bench_llama.json" > "$OUT/bench/decode_bench_llama.log" 2>&1
    cat "$OUT/bench/train_throughput.json" "$OUT/bench/decode_bench.json" "$OUT/bench/decode_bench_atomic.json" \
      "$OUT/bench/decode_bench_llama.json" ;;
  ablation)
    name="${2:-}"; step="${3:-}"
    [ -n "$name" ] || usage
    abl="$(flags "ablations.$name")" || usage
    case "$step" in
      prepare) eval "do_prepare \"$RUN/abl-$name\" \"$OUT/abl-$name\" $abl" ;;
      train) eval "do_train \"$RUN/abl-$name\" \"$OUT/abl-$name\" $abl" ;;
      evaluate) do_evaluate "$RUN/abl-$name" "$OUT/abl-$name" ;;
      *) usage ;;
    esac ;;
  all)
    do_prepare "$RUN/model" "$OUT/prepare"
    until do_train "$RUN/model" "$OUT/train" | tee /dev/stderr | grep -q "^training done"; do :; done
    do_evaluate "$RUN/model" "$OUT/eval" ;;
  *) usage ;;
esac

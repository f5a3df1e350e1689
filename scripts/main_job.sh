#!/usr/bin/env bash
# The main job: distil the real English encoder all-MiniLM-L6-v2 (6 layers) into a 3-layer
# student on real English text, measure what the student kept, and write a report. Any other
# encoder and text work the same (see the knobs below).
#
#   fetch assets -> build the corpus -> fit the teacher's MLM head -> initialise the student
#   -> distil -> the same budget for three comparisons (random init, KL alone, MLM alone)
#   -> evaluate (held-out MLM, agreement, sentiment probe and fine-tuning, speed) -> report
#
# Safe to run again: every stage whose output exists is reused (an interrupted training run
# is resumed from its last checkpoint). Knobs (environment variables, defaults in brackets):
#   DISTIL_RUNS [runs/main]        where everything this job makes goes
#   DISTIL_STEPS [150]             optimiser steps of every training run (the budget)
#   DISTIL_BATCH_TOKENS [2048]     padded tokens per batch
#   DISTIL_FIT_ROWS [60000]        masked positions the teacher's head is fitted on
#   DISTIL_PROBE_SEEDS [3]         seeds of the linear probe
#   DISTIL_FINETUNE_SEEDS [1]      seeds of fine-tuning (teacher and student)
#   DISTIL_FINETUNE_EPOCHS [1]
#   DISTIL_BENCH_REPEATS [3]
#   DISTIL_COMPARISONS [1]         0: skip the three comparison runs
#   DISTIL_TEACHER []              a teacher that has its own MLM head: no head is fitted
#   DISTIL_ENCODER [assets/all-MiniLM-L6-v2]  the encoder whose head is fitted otherwise
#   DISTIL_TEXT [assets/text]      text the corpus is built from
#   DISTIL_CORPUS [assets/corpus-minilm]
#   DISTIL_CORPUS_OPTIONS []       more `distil corpus build` options, e.g. "--heldout 0.1"
#   DISTIL_CLASSIFY_LIMIT []       use only the first N sentences of each sentiment split (tests)
#   DISTIL_BIN []                  a distil binary to use instead of building the release one
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=${DISTIL_RUNS:-runs/main}
steps=${DISTIL_STEPS:-150}
batch_tokens=${DISTIL_BATCH_TOKENS:-2048}
fit_rows=${DISTIL_FIT_ROWS:-60000}
probe_seeds=${DISTIL_PROBE_SEEDS:-3}
finetune_seeds=${DISTIL_FINETUNE_SEEDS:-1}
finetune_epochs=${DISTIL_FINETUNE_EPOCHS:-1}
bench_repeats=${DISTIL_BENCH_REPEATS:-3}
comparisons=${DISTIL_COMPARISONS:-1}
text=${DISTIL_TEXT:-assets/text}
corpus=${DISTIL_CORPUS:-assets/corpus-minilm}
limit=()
if [ -n "${DISTIL_CLASSIFY_LIMIT:-}" ]; then limit=(--limit "$DISTIL_CLASSIFY_LIMIT"); fi
encoder=${DISTIL_TEACHER:-${DISTIL_ENCODER:-assets/all-MiniLM-L6-v2}}
started=$SECONDS

stage() { printf '\n== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
reused() { echo "reusing $1"; }

if [ -n "${DISTIL_BIN:-}" ]; then
    distil=$DISTIL_BIN
else
    stage "fetch assets, build distil"
    scripts/fetch_assets.sh
    cargo build --release --quiet
    distil=target/release/distil
fi
mkdir -p "$runs"

stage "corpus: $text -> $corpus"
if [ -f "$corpus/manifest.json" ]; then reused "$corpus"; else
    # shellcheck disable=SC2086 # the options are words on purpose
    "$distil" corpus build --tokenizer "$encoder" --input "$text" --out "$corpus" ${DISTIL_CORPUS_OPTIONS:-}
fi

if [ -n "${DISTIL_TEACHER:-}" ]; then
    teacher=$DISTIL_TEACHER
else
    stage "teacher: fit an MLM head on the frozen $encoder"
    teacher=$runs/teacher
    if [ -f "$teacher/fit-head.json" ]; then reused "$teacher"; else
        "$distil" teacher fit-head --teacher "$encoder" --corpus "$corpus" --out "$teacher" --rows "$fit_rows"
    fi
fi

stage "student: half the teacher's layers"
if [ -f "$runs/student-init/model.safetensors" ]; then reused "$runs/student-init"; else
    "$distil" student init --teacher "$teacher" --out "$runs/student-init"
fi
# The random-init comparison: the same student's config and tokenizer, no weights.
mkdir -p "$runs/student-random"
for f in "$runs"/student-init/*; do
    case $(basename "$f") in model.safetensors) ;; *) cp "$f" "$runs/student-random/" ;; esac
done

# train NAME STUDENT [--set ...]: one run of the budget; finished runs are reused, stopped
# ones resumed.
train() {
    local name=$1 student=$2 out=$runs/$1
    shift 2
    stage "train $name ($steps steps)"
    if [ -f "$out/student/model.safetensors" ]; then reused "$out"; return; fi
    if [ -f "$out/run.toml" ]; then "$distil" train --resume "$out"; return; fi
    "$distil" train --config examples/run.toml --set teacher="$teacher" --set student="$student" \
        --set corpus="$corpus" --set out="$out" --set run.steps="$steps" --set batch.tokens="$batch_tokens" \
        --set loss.restrict_ce_to_mask=true --set run.eval_every=$(((steps + 3) / 4)) \
        --set run.checkpoint_every=50 "$@"
}

# evaluate NAME MODEL [finetune]: held-out MLM (with agreement unless it is the teacher),
# sentiment probe, and optionally fine-tuning; results in the main run's or its own eval/.
evaluate() {
    local role=$1 model=$2 dir=$3 finetune=${4:-}
    mkdir -p "$dir/eval"
    local agreement=()
    if [ "$role" = student ]; then agreement=(--teacher "$teacher"); fi
    if [ ! -f "$dir/eval/$role-mlm.json" ]; then
        "$distil" eval mlm --model "$model" --corpus "$corpus" "${agreement[@]}" --out "$dir/eval/$role-mlm.json"
    fi
    if [ ! -f "$dir/eval/$role-probe.json" ]; then
        "$distil" eval classify --model "$model" --task rt-sentiment --mode probe --seeds "$probe_seeds" \
            "${limit[@]}" --out "$dir/eval/$role-probe.json"
    fi
    if [ -n "$finetune" ] && [ ! -f "$dir/eval/$role-finetune.json" ]; then
        "$distil" eval classify --model "$model" --task rt-sentiment --mode finetune --seeds "$finetune_seeds" \
            --epochs "$finetune_epochs" "${limit[@]}" --out "$dir/eval/$role-finetune.json"
    fi
}

main=$runs/distil
train distil "$runs/student-init"
compare=()
if [ "$comparisons" != 0 ]; then
    train random-init "$runs/student-random"
    train kl-only "$runs/student-init" --set loss.alpha_mlm=0 --set loss.alpha_cos=0
    train mlm-only "$runs/student-init" --set loss.alpha_ce=0 --set loss.alpha_cos=0
    compare=(--compare "random init=$runs/random-init" --compare "KL alone=$runs/kl-only"
        --compare "MLM alone=$runs/mlm-only")
fi

stage "evaluate the teacher and the student"
evaluate teacher "$teacher" "$main" finetune
evaluate student "$main/student" "$main" finetune
if [ "$comparisons" != 0 ]; then
    for name in random-init kl-only mlm-only; do
        stage "evaluate $name"
        evaluate student "$runs/$name/student" "$runs/$name"
    done
fi

stage "speed: batch 1 and batch 32 on the sentiment test sentences"
if [ ! -f "$main/eval/bench.json" ]; then
    "$distil" bench --model "$teacher" --model "$main/student" --task rt-sentiment --repeats "$bench_repeats" \
        "${limit[@]}" --out "$main/eval/bench.json"
fi

stage "report"
"$distil" report "$main" "${compare[@]}"
echo
echo "main job done in $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s"
echo "report: $main/report/report.md"

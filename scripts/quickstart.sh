#!/usr/bin/env bash
# The main job, end to end (run scripts/setup.sh first):
#   1. what can run on this machine;
#   2. Qwen3-4B's English vocabulary, from the tokenizer alone (works offline);
#   3. one answer from the configured backend (QWEN_BACKEND, default hf with Qwen/Qwen3-4B).
# When the configured model cannot be reached (no network, no GPU, no server), step 3 falls back
# to a tiny random-weight Qwen3 checkpoint built here: the code path is the real one, the answer
# is gibberish by construction.
set -uo pipefail
cd "$(dirname "$0")/.."
cli=.venv/bin/qwen-backends
prompt=${1:-"Name three primary colours."}

"$cli" info || exit $?
"$cli" vocab english --tokenizer offline --output runs/english-vocab || exit $?

echo
echo "== generate with the configured backend"
# Without a route to the model hub, say so up front instead of letting downloads retry for a minute.
if ! .venv/bin/python -c "import urllib.request; urllib.request.urlopen('https://huggingface.co', timeout=5)" 2>/dev/null; then
  echo "(the model hub is not reachable from here: loading from the local cache only)"
  export HF_HUB_OFFLINE=1
fi
if ! "$cli" generate "$prompt" --max-new-tokens 128; then
  echo
  echo "== the configured model is not available here; using a tiny random-weight Qwen3 checkpoint"
  tiny=$("$cli" make-test-model runs/tiny-qwen3) || exit $?
  "$cli" generate "$prompt" --backend hf --model "$tiny" --max-new-tokens 24 --seed 0 || exit $?
  echo
fi

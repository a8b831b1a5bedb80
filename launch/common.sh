# shellcheck shell=bash
# Sourced by the cluster launch scripts: --dry-run support and errors.
DRY_RUN=0

# Shell-quotes its arguments into one line that a shell reads back as the same words:
# single quotes around a word with special characters, double quotes when the word has
# single quotes but nothing a double-quoted string would expand.
quote() {
  local out="" word q="'" escaped="'\\''"
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      :
    elif [[ "$word" != *"'"* ]]; then
      word="'$word'"
    elif [[ ! "$word" =~ [\"\$\`\\!] ]]; then
      word="\"$word\""
    else
      word="'${word//$q/$escaped}'"
    fi
    out+="${out:+ }$word"
  done
  printf '%s' "$out"
}

# Takes --dry-run out of the script's arguments, wherever it stands (scripts that pass
# the rest on): DRY_RUN=1 if it was there, the other arguments in ARGS.
take_dry_run() {
  local arg
  ARGS=()
  for arg in "$@"; do
    if [[ "$arg" == --dry-run ]]; then DRY_RUN=1; else ARGS+=("$arg"); fi
  done
}

# Runs a command, or with --dry-run prints it (quoted, after '+ ') instead.
run() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote "$@")"
  else
    "$@"
  fi
}

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

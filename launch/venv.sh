# Sourced by launch/local.sh and tests/run.sh: creates .venv, or refreshes it when
# requirements*.txt changed since the last install (a stamp holds its hash).
ensure_venv() {
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "sweet_jax needs Python >= 3.11 (jax 0.10 and grain require it); set PYTHON=..." >&2
    return 1
  fi
  local stamp=.venv/.requirements.sha256
  local want
  want=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
  if [[ -x .venv/bin/python && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  echo "Setting up .venv from requirements.txt (first time: a few minutes)..." >&2
  [[ -x .venv/bin/python ]] || "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    -r requirements-nodeps.txt
  echo "$want" > "$stamp"
}

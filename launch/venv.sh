# shellcheck shell=bash
# Sourced by the launch scripts and tests/run.sh: creates .venv, or refreshes it when
# requirements*.txt (or the accelerator) changed since the last install (a stamp holds
# their hash). SWEET_JAX_ACCELERATOR=tpu|cuda12 adds jax's accelerator plugin at the
# pinned jax version (cpu, the default, needs none).
ensure_venv() {
  local python="${PYTHON:-python3}"
  local accelerator="${SWEET_JAX_ACCELERATOR:-cpu}"
  case "$accelerator" in
    cpu|tpu|cuda12) ;;
    *) echo "SWEET_JAX_ACCELERATOR=$accelerator: choose cpu, tpu or cuda12" >&2; return 1 ;;
  esac
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "sweet_jax needs Python >= 3.11 (jax 0.10 and grain require it); set PYTHON=..." >&2
    return 1
  fi
  local stamp=.venv/.requirements.sha256
  local want
  want=$( (cat requirements.txt requirements-nodeps.txt
           [[ "$accelerator" == cpu ]] || echo "$accelerator") | sha256sum | cut -d' ' -f1)
  if [[ -x .venv/bin/python && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  echo "Setting up .venv from requirements.txt (first time: a few minutes)..." >&2
  [[ -x .venv/bin/python ]] || "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    -r requirements-nodeps.txt
  if [[ "$accelerator" != cpu ]]; then
    local jax_version
    jax_version=$(sed -n 's/^jax==//p' requirements.txt)
    .venv/bin/python -m pip install --quiet --disable-pip-version-check \
      "jax[$accelerator]==$jax_version"
  fi
  echo "$want" > "$stamp"
}

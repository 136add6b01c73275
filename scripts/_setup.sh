# Sourced by scripts/up and scripts/test: find a Python >= 3.12, create .venv, install the project.
# Usage: aigw_setup [extra]   (extra: "" or "test")
set -euo pipefail

AIGW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

aigw_find_python() {
  local c v
  local candidates=()
  [ -n "${AIGW_PYTHON:-}" ] && candidates+=("$AIGW_PYTHON")
  candidates+=(python3.13 python3.12 python3 python)
  # pyenv keeps versions in a folder; its shims on PATH fail unless a version is selected.
  local pyroot="${PYENV_ROOT:-$HOME/.pyenv}"
  if [ -d "$pyroot/versions" ]; then
    for v in $(ls -1 "$pyroot/versions" 2>/dev/null | sort -rV); do
      candidates+=("$pyroot/versions/$v/bin/python3")
    done
  fi
  for c in "${candidates[@]}"; do
    # Run the candidate: a shim that is on PATH but not usable exits non-zero here.
    if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then
      command -v "$c" 2>/dev/null || echo "$c"
      return 0
    fi
  done
  return 1
}

aigw_setup() {
  local extra="${1:-}"
  local venv="$AIGW_ROOT/.venv"
  local py
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then
    if ! py="$(aigw_find_python)"; then
      echo "aigw needs Python >= 3.12 (mitmproxy 12 does not run on older versions)." >&2
      echo "Tried: \$AIGW_PYTHON, python3.13, python3.12, python3, python and ~/.pyenv/versions/*." >&2
      echo "Install Python 3.12 or newer, or point AIGW_PYTHON at one." >&2
      exit 1
    fi
    echo "aigw: creating .venv with $py ($("$py" --version 2>&1))" >&2
    rm -rf "$venv"
    "$py" -m venv "$venv"
  fi
  local spec="$AIGW_ROOT"
  [ -n "$extra" ] && spec="$AIGW_ROOT[$extra]"
  # Re-install only when the project description changed since the last install.
  local stamp="$venv/.aigw-installed${extra:+-$extra}"
  local want
  want="$(cat "$AIGW_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "aigw: installing ${extra:+with [$extra] }into .venv (log: .venv/install.log)" >&2
    if ! { "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip \
           && "$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$spec"; } \
         > "$venv/install.log" 2>&1; then
      echo "aigw: installation failed; the end of .venv/install.log:" >&2
      tail -n 40 "$venv/install.log" >&2
      exit 1
    fi
    echo "$want" > "$stamp"
  fi
  export PATH="$venv/bin:$PATH"
}

# Install a Debian package for the tests when its binary is missing and we are root (log: .venv/apt.log).
# Usage: aigw_ensure_binary BINARY PACKAGE WHAT   (WHAT: which tests need it, for the message)
aigw_ensure_binary() {
  local binary="$1" package="$2" what="$3"
  command -v "$binary" >/dev/null 2>&1 && return 0
  local log="$AIGW_ROOT/.venv/apt.log"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "aigw: installing $package (Debian package) for the tests (log: .venv/apt.log)" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "$package" >"$log" 2>&1; then
      # A fresh machine has no package lists yet.
      if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "$package"; } >>"$log" 2>&1; then
        echo "aigw: could not install $package; the end of .venv/apt.log:" >&2
        tail -n 20 "$log" >&2
        return 1
      fi
    fi
    command -v "$binary" >/dev/null 2>&1 && return 0
  fi
  echo "aigw: $binary is not installed (Debian: apt-get install $package); $what need it" >&2
  return 1
}

# The tests start a real redis-server (shared limits across proxy processes). Debian's package when it is missing
# and we are root; otherwise say what to install (the Redis tests fail under CI=true, and are skipped elsewhere).
aigw_ensure_redis() {
  aigw_ensure_binary redis-server redis-server "the Redis tests"
}

# `aigw up --workers N` runs a real HAProxy in front of the workers (tests/scale); same policy as Redis.
aigw_ensure_haproxy() {
  aigw_ensure_binary haproxy haproxy "the aigw up --workers tests (tests/scale)"
}

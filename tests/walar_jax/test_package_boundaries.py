"""walar_jax (the trainer env's package) never imports torch or vLLM."""

import subprocess
import sys


def test_walar_jax_imports_neither_torch_nor_vllm():
    code = (
        "import sys, walar_jax.models, walar_jax.rl.trainer, walar_jax.clients, "
        "walar_jax.weight_sync, walar_jax.prompts, walar_jax.data, walar_jax.launch\n"
        "from walar_jax.tokenizer import Tokenizer\n"
        "from walar_jax.models.tiny import make_tiny_checkpoint\n"
        "import tempfile, os\n"
        "d = make_tiny_checkpoint(os.path.join(tempfile.mkdtemp(), 'm'))\n"
        "t = Tokenizer(d); t.encode(t.apply_chat_template([{'role': 'user', 'content': 'x'}]))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

"""Starting and stopping the sidecar services from the trainer environment.

Each service runs in its own Python environment (see scripts/setup.sh); this module
finds their interpreters, starts them on a free loopback port, waits for their
health check and stops them again (also on errors and Ctrl-C).
"""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from protos.service import TOKEN_ENV


REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def resolve_model_path(path: str) -> str:
    """An HF checkpoint directory for `model.path`: "tiny" builds the embedded tiny Qwen3
    under .cache/ on first use; a hub id is downloaded; a directory is used as is."""
    if path == "tiny":
        from walar_jax.models.tiny import make_tiny_checkpoint

        return make_tiny_checkpoint(str(REPO_ROOT / ".cache" / "tiny_qwen3"))
    from walar_jax import models

    return models.resolve_checkpoint(path)


def new_token() -> str:
    """A fresh random token for one service of one run."""
    return secrets.token_urlsafe(32)


def venvs_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("WALAR_VENVS", REPO_ROOT / ".venv"))


def env_python(role: str) -> str:
    """The interpreter of the `trainer`, `rollout` or `reward` environment."""
    exe = venvs_dir() / role / "bin" / "python"
    if not exe.exists():
        raise FileNotFoundError(
            f"no {role} environment at {exe.parent.parent}: run scripts/setup.sh {role}"
        )
    return str(exe)


class Service:
    """A child process serving gRPC; `address` is valid once `start()` returns."""

    def __init__(self, name: str, argv: list[str], *, log_path: str | None = None,
                 env: dict[str, str] | None = None, token: str | None = None):
        """`token` (see `new_token`) is handed to the service in a 0600 file, never on
        its command line; without one the service requires none."""
        self.name = name
        self.token = token
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.address: str | None = None
        self._dir = ""  # private directory of the port file

    def start(self, timeout_s: float = 600.0) -> "Service":
        """Starts the process with `--port 0 --port_file F` appended and waits for F.

        F lies in a fresh 0700 directory, so no other user can plant a port there; the
        service is told to stop when this process dies (`--exit_with_parent`), so a
        killed trainer leaves no service behind."""
        self._dir = tempfile.mkdtemp(prefix=f"walar-{self.name}-")  # mode 0700
        port_file = os.path.join(self._dir, "port")
        extra = ["--port", "0", "--port_file", port_file, "--exit_with_parent"]
        if self.token:  # a file only we can read: never on the command line (ps)
            token_file = os.path.join(self._dir, "token")
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token)
            extra += ["--token_file", token_file]
        log = open(self.log_path, "ab") if self.log_path else None
        env = {**os.environ, **(self.env or {})}
        env.pop(TOKEN_ENV, None)  # the service takes this launch's token, nobody else's
        self.proc = subprocess.Popen(
            [*self.argv, *extra],
            stdout=log or sys.stderr, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
            start_new_session=True,  # no preexec_fn: forking a threaded JAX process
        )                            # must not run Python in the child
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.proc.returncode} during start-up"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if os.path.exists(port_file) and open(port_file).read().strip():
                self.address = f"127.0.0.1:{open(port_file).read().strip()}"
                os.unlink(port_file)
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} did not start serving within {timeout_s:.0f}s")

    def stop(self, grace_s: float = 10.0) -> None:
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

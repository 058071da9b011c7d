"""Local attack paths around the services the trainer starts: a port file planted by
another process, an impostor on the port, tokens on command lines, and children left
behind by a killed trainer. The services here are small gRPC servers built on the same
plumbing as the real ones (protos/service.py), so each test takes seconds."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from protos import service
from walar_jax import launch
from walar_jax.clients.common import AuthenticationError
from walar_jax.clients.rollout import RolloutClient

# A rollout-shaped service: Info answers the nonce with whatever proof it can make.
SERVER = textwrap.dedent("""
    import argparse, sys
    from protos import rollout_pb2 as pb, rollout_pb2_grpc as pb_grpc, service

    p = argparse.ArgumentParser()
    service.add_server_flags(p)
    p.add_argument("--impostor_port_for", default=None)  # plant this port instead
    args = p.parse_args()
    token = service.resolve_token(args)

    class Info(pb_grpc.RolloutServicer):
        def Info(self, request, context):
            return pb.InfoResponse(model="m", proof=service.identity_proof(
                token if not args.impostor_port_for else "guess", request.nonce))

    server, port = service.make_server(args.host, args.port, token=token)
    pb_grpc.add_RolloutServicer_to_server(Info(), server)
    server.start()
    service.serve_until_signalled(server, port, args.port_file, args.exit_with_parent)
""")


def small_service(tmp_path, *extra, token=None, name="svc"):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    return launch.Service(name, [sys.executable, str(script), *extra],
                          log_path=str(tmp_path / f"{name}.log"), token=token)


def test_token_travels_in_a_private_file_and_the_service_proves_it_holds_it(tmp_path):
    token = launch.new_token()
    with small_service(tmp_path, token=token) as svc:
        assert token not in " ".join(map(str, svc.proc.args))  # not visible in ps
        mode = stat.S_IMODE(os.stat(svc._dir).st_mode)
        assert mode == 0o700  # no other user can plant a port file here
        assert stat.S_IMODE(os.stat(os.path.join(svc._dir, "token")).st_mode) == 0o600
        RolloutClient(svc.address, token=token).verify_identity(timeout=10)
        with pytest.raises(AuthenticationError):  # every call needs the token
            RolloutClient(svc.address, max_attempts=1).info(timeout=10)


def test_an_impostor_behind_the_port_file_is_refused(tmp_path):
    """Whatever answers on the port a launch read must prove it holds the token this
    launch wrote: one that does not (a fake reward or sidecar) is refused by name."""
    impostor = small_service(tmp_path, "--impostor_port_for", "rollout", name="impostor")
    with impostor:  # serves without the token, answering nonces with a guess
        client = RolloutClient(impostor.address, token=launch.new_token(), max_attempts=1)
        with pytest.raises(AuthenticationError, match="is not the rollout sidecar"):
            client.verify_identity(timeout=10)


def test_a_killed_trainer_leaves_no_service_behind(tmp_path):
    """A parent process starts a service as train.py does, then dies by SIGKILL (no
    cleanup runs): the service stops by itself."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    parent = textwrap.dedent(f"""
        import sys, time
        from walar_jax import launch
        svc = launch.Service("svc", [sys.executable, {str(script)!r}],
                             token=launch.new_token()).start(timeout_s=60)
        print(svc.proc.pid, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                            cwd=launch.REPO_ROOT)
    child = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child), "the service outlived the trainer that started it"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_half_a_tls_configuration_is_refused():
    with pytest.raises(ValueError, match="go together"):
        service.make_server("127.0.0.1", 0, tls_cert="cert.pem")


def test_a_token_in_the_environment_is_not_handed_to_other_services(tmp_path, monkeypatch):
    monkeypatch.setenv(service.TOKEN_ENV, "inherited")
    with small_service(tmp_path, token=None) as svc:  # started without a token
        RolloutClient(svc.address, max_attempts=1).info(timeout=10)  # needs none

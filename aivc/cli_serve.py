"""CLI: ``aivc serve``, the portal and its HTTP API over one lake (uvicorn).

Binds 127.0.0.1 unless ``--host`` says otherwise; ``--port 0`` picks a free port (``--json``
prints ``{"url", "pid", "lake", "workers"}`` once the socket listens). ``--workers N`` runs N
uvicorn worker processes on the one socket; each has its own submission worker, and the
lake's write lock serializes their submissions.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Annotated

import typer

from aivc.cli_common import DebugOpt, JsonOpt, LakeOpt, console, run_command


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""

    @app.command()
    def serve(
        host: Annotated[str, typer.Option("--host", help="Address to bind (default: this machine only).")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="TCP port (0: a free one).")] = 8000,
        workers: Annotated[int, typer.Option("--workers", help="uvicorn worker processes.")] = 1,
        max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest submission upload accepted (MiB).")] = 2048.0,
        lake: LakeOpt = None,
        json_: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Serve the portal (datasets, submissions, SQL, embeddings) and its HTTP API."""

        def body() -> int:
            import uvicorn
            from uvicorn.supervisors import Multiprocess

            from aivc.errors import UsageError
            from aivc.portal.app import ENV_LAKE, ENV_MAX_UPLOAD
            from aivc.store.lake import Lake

            if workers < 1:
                raise UsageError("--workers must be at least 1", where="--workers")
            if not 0 <= port <= 65535:
                raise UsageError(f"--port {port} is not a TCP port (0-65535)", where="--port")
            if max_upload_mb <= 0:
                raise UsageError("--max-upload-mb must be positive", where="--max-upload-mb")
            lk = Lake.open(lake)  # a missing lake is a one-line error before anything listens
            os.environ[ENV_LAKE] = lk.uri
            os.environ[ENV_MAX_UPLOAD] = str(int(max_upload_mb * 1024 * 1024))
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror})", where="--port") from None
            sock.listen(2048)
            sock.set_inheritable(True)
            bound = sock.getsockname()[1]
            url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
            config = uvicorn.Config(
                "aivc.portal.app:app_from_env", factory=True, workers=workers, log_level="info" if debug else "warning", access_log=debug, timeout_graceful_shutdown=10
            )
            if json_:
                # one line, flushed now: scripts read it and then talk to the server
                sys.stdout.write(json.dumps({"status": "listening", "url": url, "pid": os.getpid(), "lake": lk.uri, "workers": workers}) + "\n")
                sys.stdout.flush()
            else:
                console().print(f"aivc portal on {url} (lake {lk.uri}, {workers} worker{'s' if workers > 1 else ''}); Ctrl-C stops it")
            try:
                if workers > 1:
                    Multiprocess(config, sockets=[sock]).run()
                else:
                    uvicorn.Server(config).run(sockets=[sock])
            finally:
                sock.close()
            return 0

        run_command(json_, debug, body)

"""The README's commands run as written from a fresh clone.

Every shell block preceded by ``<!-- runnable -->`` is run line by line, in-process, in a
folder holding a copy of the checkout's ``fleets/``: ``export`` sets the environment, a
``.venv/bin/edis-fleet simulator ... &`` line starts that simulator (its own options, parsed
by the command's parser) in a background thread, ``.venv/bin/edis-fleet ARGS`` runs
``orchestrator.cli.main(ARGS)`` and must exit 0, ``kill %1`` stops the simulator. Anything
else in a runnable block fails the test: a reader could not paste it either. The port 8765
(the simulator's default) is replaced by a free one, as the suite runs in parallel.

Every other shell block must name the tool and Python the way a fresh clone has them
(``.venv/bin/edis-fleet``, ``.venv/bin/python``), never a bare ``edis-fleet`` or ``python``.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import socket
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal

from orchestrator.cli import build_parser
from orchestrator.cli.simulator_cmd import sim_config
from orchestrator.simulator import Simulator
from tests.cli_support import run_cli

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
RUNNABLE = re.compile(r"<!-- runnable -->\n```sh\n(.*?)```", re.S)
SHELL = re.compile(r"```(?:sh|bash|shell)\n(.*?)```", re.S)
TOOL = ".venv/bin/edis-fleet"
DEFAULT_PORT = "8765"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _blocks() -> list[str]:
    return RUNNABLE.findall(README)


def test_the_readme_marks_its_runnable_blocks() -> None:
    blocks = _blocks()
    assert len(blocks) >= 2
    assert any(" apply " in b for b in blocks), "a runnable block reinstalls on the simulator"


@pytest.mark.parametrize("block", _blocks(), ids=lambda b: b.splitlines()[1][:40])
def test_a_runnable_block_runs_as_written(block: str, tmp_path: Path) -> None:
    shutil.copytree(REPO / "fleets", tmp_path / "fleets")
    port = str(_free_port())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    with contextlib.ExitStack() as running:
        for line in block.splitlines():
            words = shlex.split(line.replace(DEFAULT_PORT, port), comments=True)
            if not words:
                continue
            if words[0] == "export":
                for word in words[1:]:
                    name, _, value = word.partition("=")
                    env[name] = value
            elif words[:2] == [TOOL, "simulator"] and words[-1] == "&":
                args = build_parser().parse_args(_command(words[1:-1]))
                if "--port" not in words:
                    args.port = int(port)  # its default port, made a free one
                cfg, _, _ = sim_config(args)
                portal = running.enter_context(start_blocking_portal())
                running.enter_context(portal.wrap_async_context_manager(Simulator(cfg)))
            elif words == ["kill", "%1"]:
                running.close()
            elif words[0] == TOOL:
                done = run_cli(words[1:], cwd=tmp_path, env=env)
                assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            else:
                pytest.fail(f"a runnable block has a line the test cannot run: {line}")


def _command(words: list[str]) -> list[str]:
    """The command's own words, without shell redirections (``> file``, ``2>&1``)."""
    out: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in (">", ">>", "2>"):
            skip = True
        elif not re.fullmatch(r"\d?>&\d", word):
            out.append(word)
    return out


def test_shell_blocks_name_the_tool_as_a_fresh_clone_has_it() -> None:
    bare = [
        line.strip()
        for block in SHELL.findall(README)
        for line in block.splitlines()
        if re.match(r"\s*(\$ )?(edis-fleet|python3?) ", line)
    ]
    assert bare == [], "use .venv/bin/edis-fleet and .venv/bin/python (or say to activate)"

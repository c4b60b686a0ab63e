"""The shared reliability mechanisms: SIGTERM as Ctrl-C, Interrupted, the output-path guard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from retrievalkit import cli as cli_module
from retrievalkit.errors import Interrupted, OutputPathError, RkitError
from retrievalkit.interrupt import install_sigterm_handler, uninstall_sigterm_handler
from retrievalkit.outputs import (MARKER_NAME, check_output_path, check_replaceable, output_marker,
                                  write_output_marker)

REPO = Path(__file__).resolve().parents[1]

# A stand-in long command: prints "ready", waits, and on interruption says what it kept.
SLOW_COMMAND = '''
import time
import click
from retrievalkit.errors import Interrupted

@click.command("slow")
@click.option("--plain", is_flag=True)
def command(plain):
    try:
        print("ready", flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        if plain:
            raise
        raise Interrupted(kept="3 of 10 items in out.partial", resume="rkit slow") from None
'''


@pytest.fixture
def restore_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def test_sigterm_raises_keyboard_interrupt_and_install_is_idempotent(restore_sigterm):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert install_sigterm_handler() and install_sigterm_handler()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs between bytecodes of the main thread
            pass
    uninstall_sigterm_handler()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_install_outside_main_thread_does_nothing(restore_sigterm):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    results = []
    thread = threading.Thread(target=lambda: results.append(install_sigterm_handler()))
    thread.start()
    thread.join()
    assert results == [False] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_install_keeps_an_application_handler(restore_sigterm):
    def mine(signum, frame):
        pass

    signal.signal(signal.SIGTERM, mine)
    assert not install_sigterm_handler()
    assert signal.getsignal(signal.SIGTERM) is mine


def test_interrupted_message_and_pickling():
    import pickle

    exc = Interrupted(kept="412 of 1000 descriptors in d.partial.npz", resume="rkit extract imgs --out d.npz")
    assert isinstance(exc, RkitError)
    assert str(exc) == ("Interrupted: kept 412 of 1000 descriptors in d.partial.npz.\n"
                        "Resume with: rkit extract imgs --out d.npz")
    again = pickle.loads(pickle.dumps(exc))
    assert (again.kept, again.resume) == (exc.kept, exc.resume)
    assert str(Interrupted()) == "Interrupted."


@pytest.fixture
def slow_command(tmp_path, monkeypatch):
    (tmp_path / "rkit_slow_cmd.py").write_text(textwrap.dedent(SLOW_COMMAND))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli_module.COMMANDS, "slow", ("rkit_slow_cmd", "command", "test"))
    return tmp_path


@pytest.mark.parametrize("raised, expected", [
    (Interrupted(kept="5 files", resume="rkit x --resume"), "Interrupted: kept 5 files.\nResume with: rkit x --resume"),
    (KeyboardInterrupt(), cli_module.INTERRUPTED_MESSAGE),
])
def test_cli_main_reports_interruptions_with_status_130(raised, expected, tmp_path, monkeypatch, capsys,
                                                        restore_sigterm):
    (tmp_path / "rkit_raise_cmd.py").write_text(textwrap.dedent('''
        import click
        RAISE = None
        @click.command("boom")
        def command():
            raise RAISE
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli_module.COMMANDS, "boom", ("rkit_raise_cmd", "command", "test"))
    import importlib

    module = importlib.import_module("rkit_raise_cmd")
    monkeypatch.setattr(module, "RAISE", raised)
    with pytest.raises(SystemExit) as info:
        cli_module.main(["boom"])
    assert info.value.code == 130
    assert capsys.readouterr().err.strip() == expected


def _run_and_terminate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "rkit_slow_cmd.py").write_text(textwrap.dedent(SLOW_COMMAND))
    code = ("import retrievalkit.cli as c; c.COMMANDS['slow'] = ('rkit_slow_cmd', 'command', 'test'); "
            f"c.main(['slow', *{list(args)!r}])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigterm_to_rkit_says_what_was_kept_and_how_to_resume(tmp_path):
    done = _run_and_terminate(tmp_path)
    assert done.returncode == 130, done.stderr
    assert "Interrupted: kept 3 of 10 items in out.partial." in done.stderr
    assert "Resume with: rkit slow" in done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_without_interrupted_gives_the_generic_message(tmp_path):
    done = _run_and_terminate(tmp_path, "--plain")
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == cli_module.INTERRUPTED_MESSAGE


# -- output-path guard -------------------------------------------------------------------------

def test_output_equal_to_an_input_is_refused(tmp_path):
    desc = tmp_path / "desc.npz"
    desc.write_bytes(b"x")
    with pytest.raises(OutputPathError, match="is also an input"):
        check_output_path(desc, [desc])
    with pytest.raises(OutputPathError, match="is also an input"):  # same file, other spelling
        check_output_path(tmp_path / "sub" / ".." / "desc.npz", [desc])


def test_output_inside_an_input_folder_is_refused(tmp_path):
    imgs = tmp_path / "imgs"
    (imgs / "a").mkdir(parents=True)
    with pytest.raises(OutputPathError, match="inside the input folder"):
        check_output_path(imgs / "a" / "0000.jpg", [imgs])
    link = tmp_path / "link"
    link.symlink_to(imgs)
    with pytest.raises(OutputPathError, match="inside the input folder"):
        check_output_path(link / "d.npz", [imgs])
    assert check_output_path(tmp_path / "d.npz", [imgs, None]) == tmp_path / "d.npz"


def test_output_folder_containing_an_input_is_refused(tmp_path):
    db = tmp_path / "run" / "db.pkl"
    db.parent.mkdir()
    db.write_bytes(b"x")
    with pytest.raises(OutputPathError, match="contains the input"):
        check_output_path(tmp_path / "run", [db], folder=True)
    check_output_path(tmp_path / "run", [db])  # a file output beside it is fine


def test_replace_only_previous_outputs_of_the_same_command(tmp_path):
    out = tmp_path / "out"
    assert check_replaceable(out, "data synth", overwrite=False) is False  # missing
    out.mkdir()
    assert check_replaceable(out, "data synth", overwrite=False) is False  # empty
    (out / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(OutputPathError, match="pass --overwrite"):
        check_replaceable(out, "data synth", overwrite=False)
    with pytest.raises(OutputPathError, match="not made by rkit"):
        check_replaceable(out, "data synth", overwrite=True)
    write_output_marker(out, "ablate")
    assert output_marker(out) == "ablate"
    with pytest.raises(OutputPathError, match="made by `rkit ablate`"):
        check_replaceable(out, "data synth", overwrite=True)
    write_output_marker(out, "data synth")
    assert (out / MARKER_NAME).is_file()
    assert check_replaceable(out, "data synth", overwrite=True) is True


def test_current_folder_and_its_parents_are_never_replaced(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    write_output_marker(work, "data synth")  # even a marked folder
    monkeypatch.chdir(work)
    for target in (".", "..", str(work)):
        with pytest.raises(OutputPathError, match="current folder"):
            check_replaceable(target, "data synth", overwrite=True)
    assert (work / "notes.txt").read_text() == "mine"

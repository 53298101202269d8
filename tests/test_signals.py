"""SIGTERM and SIGHUP (batch schedulers, ``docker stop``, a closed terminal) behave like Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.conftest import make_spec, tiny_conv_onnx, write_scene

SEGBENCH = Path(sys.executable).with_name("segbench")
#: the child's first act: Ctrl-C, SIGTERM and SIGHUP back to their default disposition (a job started
#: with '&' by a non-interactive shell, pytest's included, inherits SIGINT ignored), then segbench
DEFAULT_SIGNALS = ("import os, signal, sys\n"
                   "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n"
                   "    signal.signal(s, signal.SIG_DFL)\n"
                   "os.execv(sys.argv[1], sys.argv[1:])\n")


def stop_limit(started_s: float) -> float:
    """A generous bound on the seconds a signalled command may take to exit, from how long it took
    to start (imports, engine load, first output) in this test, on this machine, now: stopping
    (end the batch in flight, remove temporaries, exit) is less work than starting, and a busy
    machine slows both alike. Finishing the rest of the work instead takes far longer."""
    return 2.0 * started_s + 2.0


def _wait_for(predicate, timeout=120.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def _start(args):
    """The ``segbench`` console script with ``args``, in a child process whose signals have their
    default disposition whatever this process inherited; its start time in ``started``."""
    proc = subprocess.Popen([sys.executable, "-c", DEFAULT_SIGNALS, str(SEGBENCH), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.started = time.perf_counter()
    return proc


def _started_s(proc) -> float:
    """Seconds since ``proc`` was started."""
    return time.perf_counter() - proc.started


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for PID 1, which may never reap it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop(proc, signum) -> float:
    """Send ``signum``; the seconds until the process exited."""
    start = time.perf_counter()
    proc.send_signal(signum)
    try:
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return time.perf_counter() - start


def _in_fresh_interpreter(code: str) -> None:
    """Run ``code`` in a new Python process: these tests signal their own process, which must not
    be pytest's (after hundreds of tests it carries the thread pools of every runtime)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_terminate_becomes_an_interrupt_and_the_old_handlers_come_back():
    _in_fresh_interpreter("""
        import os, signal, time
        from segbench.signals import Terminated, terminate_as_interrupt

        before = signal.getsignal(signal.SIGTERM)
        try:
            with terminate_as_interrupt():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            raise SystemExit("SIGTERM did not interrupt")
        except Terminated as caught:
            assert isinstance(caught, KeyboardInterrupt) and caught.exit_code == 143
        assert signal.getsignal(signal.SIGTERM) is before
    """)


def test_a_signal_whose_exception_was_swallowed_is_raised_again():
    _in_fresh_interpreter("""
        import os, signal, time
        from segbench.signals import Terminated, raise_if_pending, terminate_as_interrupt

        class SignalledWhileDeleted:  # Python prints "Exception ignored" for a raise in __del__
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)

        for check_between_units in (True, False):
            lost = None
            try:
                with terminate_as_interrupt():
                    SignalledWhileDeleted()
                    lost = True  # the handler's exception was swallowed: work went on
                    if check_between_units:
                        raise_if_pending()
                        raise SystemExit("raise_if_pending did not raise")
                raise SystemExit("the block ended normally")
            except Terminated as caught:
                assert lost and caught.exit_code == 143, lost
            raise_if_pending()  # outside the block nothing is pending any more
    """)


def test_a_signal_a_library_turned_into_its_own_error_is_still_the_signal():
    _in_fresh_interpreter('''
        import os, signal, time
        from segbench.signals import Terminated, terminate_as_interrupt

        def format_config():  # as mmengine's Config.pretty_text does around yapf
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except:  # noqa: E722
                raise SyntaxError("Failed to format the config file")

        try:
            with terminate_as_interrupt():
                format_config()
            raise SystemExit("the block ended normally")
        except Terminated as caught:
            assert caught.exit_code == 143 and isinstance(caught.__cause__, SyntaxError)
        try:
            with terminate_as_interrupt():
                raise SyntaxError("a real one")  # with no signal, errors stay what they are
        except SyntaxError:
            pass
    ''')


def test_ignored_signals_stay_ignored_and_other_threads_install_nothing():
    _in_fresh_interpreter("""
        import os, signal, threading, time
        from segbench.signals import terminate_as_interrupt

        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.2)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        seen = []

        def in_thread():
            with terminate_as_interrupt():
                seen.append(signal.getsignal(signal.SIGTERM))

        t = threading.Thread(target=in_thread)
        t.start()
        t.join()
        assert seen == [signal.getsignal(signal.SIGTERM)]
    """)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A scene that takes the tiny ONNX engine several seconds, and that engine."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    scene = write_scene(root / "big.tif", rng.integers(1, 255, (3, 3000, 3000), dtype=np.uint8))
    from segbench.engines.registry import build

    spec = make_spec(tile=64)
    artifact = build(tiny_conv_onnx(root / "m.onnx", spec), "ort-fp32", root)
    return scene, artifact, root / "m.onnx"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["TERM", "HUP", "INT"])
def test_segment_stops_on_signal_and_leaves_nothing(tmp_path, big, signum):
    scene, artifact, _ = big
    out = tmp_path / "out"
    out.mkdir()
    proc = _start(["segment", scene, "--engine", artifact, "-o", out / "labels.tif", "--confidence"])
    _wait_for(lambda: any(out.glob(".labels.tif.stage-*")), proc=proc)
    started = _started_s(proc)
    time.sleep(0.5)  # well into the scene
    seconds = _stop(proc, signum)
    assert proc.returncode == 128 + signum, proc.stderr.read()
    assert seconds < stop_limit(started), (seconds, started)
    assert list(out.iterdir()) == []


def test_bench_on_sigterm_ends_its_child_and_leaves_no_temporaries(tmp_path, big):
    scene, _, onnx_path = big
    out = tmp_path / "bench"
    proc = _start(["bench", "--model", onnx_path, "--engines", "ort-fp32", "--reference", "ort-fp32",
                   "--scenes", scene, "-o", out])
    parent = psutil.Process(proc.pid)
    _wait_for(lambda: any(out.glob("ort-fp32/.*.stage-*")), proc=proc)
    started = _started_s(proc)
    children = parent.children(recursive=True)
    assert children
    seconds = _stop(proc, signal.SIGTERM)
    assert proc.returncode == 143, proc.stderr.read()
    # the child cleans up too; the bench then waits at most 5 s for it
    assert seconds < stop_limit(started) + 5, (seconds, started)
    _wait_for(lambda: all(not _running(c) for c in children), timeout=2)
    assert not [p.name for p in out.rglob("*") if ".stage-" in p.name or ".part-" in p.name]
    assert not list(out.glob("ort-fp32/*.labels.tif"))


def test_train_on_sigterm_exits_promptly_without_a_checkpoint(tmp_path):
    pytest.importorskip("mmseg")
    from segbench.train.synth import SynthOptions, synthesize_dataset

    data = synthesize_dataset(tmp_path / "data", SynthOptions(train=2, val=1, test=0, size=64, test_size=64))
    out = tmp_path / "run"
    proc = _start(["train", "fcn-hrnet18s", "--data", data, "-o", out, "--iters", "100000",
                   "--batch", "2", "--crop", "64"])
    _wait_for(lambda: any((out / "mmseg").rglob("*.log")), proc=proc)
    started = _started_s(proc)
    time.sleep(2)  # training iterations are running
    seconds = _stop(proc, signal.SIGTERM)
    assert proc.returncode == 143, proc.stderr.read()
    assert seconds < stop_limit(started), (seconds, started)  # 100,000 iterations would take hours
    assert not (out / "model.pth").exists()
    assert not [p.name for p in out.iterdir() if ".part-" in p.name]


def test_ctrl_c_after_openvino_engines_came_and_went_is_an_interrupt_not_a_crash(tmp_path, tiny_onnx):
    """OpenVINO's CPU plugin gives the thread that makes an ov.Core a signal stack and unmaps it when
    the Core goes; Cores dropped out of order left a freed signal stack, and the next Ctrl-C (whose
    Python handler runs on it) was a SIGSEGV: the random crash of whole test runs. segbench keeps one
    Core for the process. Here engines are loaded and closed out of order, then SIGINT arrives."""
    pytest.importorskip("openvino")
    from segbench.engines.registry import build

    artifact = build(tiny_onnx, "openvino-fp32", tmp_path / "engines")
    code = textwrap.dedent(f"""
        import gc, os, signal, time
        import numpy as np
        from segbench.engines.registry import load
        a = load({str(artifact)!r})
        b = load({str(artifact)!r}, mode="throughput", batch=2)
        a.infer(np.zeros((1, 3, 32, 32), np.float32))
        a.close(); del a; gc.collect()  # the first made goes first
        b.close(); del b; gc.collect()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            print("interrupted")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "interrupted", (done.returncode, done.stderr)

"""Crash-consistent run folders: each fault a user's cluster causes, reproduced (kills by SIGKILL at
chosen points through ADVPRUNE_FAULT, a full disk on a small tmpfs or injected, two runs in one
folder, damaged files), then either an exact resume (the final weights bit-identical to an
uninterrupted run on the CPU) or a one-line refusal that says what to do; no stray process or file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advprune.checkpoint import load_checkpoint
from advprune.data.readers import FASHION_MNIST_DIR

pytestmark = pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is missing")

ARGV = [
    "train",
    "--limit",
    "320",
    "--val-n",
    "64",
    "--val-steps",
    "2",
    "--epochs",
    "3",
    "--steps",
    "1",
    "--batch-size",
    "64",
    "--eval-n",
    "16",
    "--quiet",
]


def advprune(out: Path, *extra: str, fault: str | None = None, wait: bool = True):
    """`python -m advprune train ... --out OUT`, with a fault point armed when asked."""
    env = {k: v for k, v in os.environ.items() if k != "ADVPRUNE_FAULT"}
    if fault:
        env["ADVPRUNE_FAULT"] = fault
    command = [sys.executable, "-m", "advprune", *ARGV, "--out", str(out), *extra]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def epochs_logged(out: Path) -> list[int]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in records if "epoch" in r and "event" not in r]


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if ".tmp-" in p.name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = advprune(out)
    assert result.returncode == 0, result.stderr
    return out


def test_a_kill_between_the_two_checkpoint_writes_is_repaired_on_resume(tmp_path, reference):
    """last.pt recorded the new best before best.pt was written: best.pt stayed an older epoch for good."""
    out = tmp_path / "run"
    killed = advprune(out, fault="between-checkpoints@1")
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "last.pt")["best_epoch"] == 1 and not (out / "best.pt").exists()
    resumed = advprune(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{out / 'best.pt'} did not hold epoch 1" in resumed.stderr and "rebuilt from it" in resumed.stderr
    assert_same_weights(weights(out / "last.pt"), weights(reference / "last.pt"))
    best, expected = load_checkpoint(out / "best.pt"), load_checkpoint(reference / "best.pt")
    assert best["epoch"] == expected["epoch"] == load_checkpoint(out / "last.pt")["best_epoch"]
    assert_same_weights(best["model"], expected["model"])
    assert epochs_logged(out) == [0, 1, 2] and not leftovers(out)


def test_two_runs_started_together_into_one_folder(tmp_path):
    """Both exited 0, their epochs interleaved in one log."""
    out = tmp_path / "run"
    first, second = advprune(out, wait=False), advprune(out, wait=False)
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in (first, second)]
    codes = sorted(code for code, _ in outcomes)
    assert codes[0] == 0 and codes[1] != 0, outcomes
    refusal = next(err for code, err in outcomes if code != 0).strip()
    assert len(refusal.splitlines()) == 1 and "Traceback" not in refusal
    assert "is in use by another run (process" in refusal or "holds a run already" in refusal
    assert epochs_logged(out) == [0, 1, 2]


def test_a_torn_last_metrics_line_is_dropped_with_a_warning_and_the_resume_is_exact(tmp_path, reference):
    out = tmp_path / "run"
    killed = advprune(out, fault="torn-metrics-line@1")  # half of epoch 1's line written, then killed
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "metrics.jsonl").read_text().endswith("\n")
    resumed = advprune(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    warning = [line for line in resumed.stderr.splitlines() if "dropped an unreadable line" in line]
    assert len(warning) == 1 and warning[0].startswith(f"advprune: warning: {out / 'metrics.jsonl'}:3:")
    assert epochs_logged(out) == [0, 1, 2]
    assert_same_weights(weights(out / "last.pt"), weights(reference / "last.pt"))


@pytest.mark.parametrize("bad", [b"this is not json\n", b"\xff\xfe\x00\x9c binary\n", b'{"epoch": 0, "samp\n'])
def test_a_bad_metrics_line_does_not_block_the_resume(tmp_path, reference, bad):
    """One bad line blocked --resume with a bare JSON or UTF-8 error that named no file."""
    out = tmp_path / "run"
    assert advprune(out, fault="between-checkpoints@2").returncode == -signal.SIGKILL
    log = out / "metrics.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join([*lines[:2], bad, *lines[2:]]))  # a bad line among good ones
    resumed = advprune(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{log}:3: dropped an unreadable line" in resumed.stderr
    assert epochs_logged(out) == [0, 1, 2]
    assert_same_weights(weights(out / "last.pt"), weights(reference / "last.pt"))


def test_a_fresh_run_never_appends_to_an_old_log(tmp_path):
    """With no last.pt (deleted, or a run killed before its first checkpoint), the log was continued."""
    out = tmp_path / "run"
    assert advprune(out, fault="between-checkpoints@1").returncode == -signal.SIGKILL
    (out / "last.pt").unlink()
    old = (out / "metrics.jsonl").read_text()
    fresh = advprune(out)
    assert fresh.returncode == 0, fresh.stderr
    assert "held the log of an earlier run without a checkpoint" in fresh.stderr
    assert epochs_logged(out) == [0, 1, 2]
    (kept,) = out.glob("metrics.before-*.jsonl")
    assert kept.read_text() == old


def test_temporary_files_of_killed_writes_are_removed(tmp_path, reference):
    out = tmp_path / "run"
    assert advprune(out, fault="between-checkpoints@1").returncode == -signal.SIGKILL
    stale = [out / ".last.tmp-2147483.pt", out / ".best.tmp-2147484.pt", out / ".kept.tmp-2147485.npy"]
    for path in stale:
        path.write_bytes(os.urandom(4096))
    assert advprune(out, "--resume").returncode == 0
    assert not leftovers(out)
    assert_same_weights(weights(out / "last.pt"), weights(reference / "last.pt"))


def test_an_unreadable_last_pt_says_what_to_do(tmp_path, reference):
    """The message was cut off mid-sentence at 200 characters, with no way forward."""
    out = tmp_path / "run"
    assert advprune(out, fault="between-checkpoints@2").returncode == -signal.SIGKILL
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 3])
    refused = advprune(out, "--resume")
    message = refused.stderr.strip()
    assert refused.returncode == 2 and len(message.splitlines()) == 1 and "Traceback" not in message
    assert f"{out / 'last.pt'} is not a readable checkpoint, damaged or truncated" in message
    assert f"resume from {out / 'best.pt'} instead (--resume-from {out / 'best.pt'})" in message
    assert message.endswith("or start over with another --out")
    again = advprune(out, "--resume-from", str(out / "best.pt"))
    assert again.returncode == 0, again.stderr
    assert epochs_logged(out) == [0, 1, 2] and load_checkpoint(out / "last.pt")["epoch"] == 3


def test_a_busy_folder_and_a_full_disk_through_the_api(tmp_path, monkeypatch):
    """The one-line refusals, in process: a folder held by another process, a checkpoint that cannot fit."""
    from advprune import _files
    from advprune.checkpoint import save_checkpoint
    from advprune.train.folder_lock import RunFolderBusy, acquire, release

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from advprune.train.folder_lock import "
            f"acquire; acquire({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"is in use by another run \\(process {holder.pid}, since"):
            acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    acquire(tmp_path)  # the kernel released the dead process's lock: nothing stale
    release(tmp_path)
    path = save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(1000)}})
    monkeypatch.setattr(_files.shutil, "disk_usage", lambda _p: type("Usage", (), {"free": 1000})())
    with pytest.raises(_files.DiskFull, match=r"no space left on the device holding .*last.pt: it needs 0.0 MB and"):
        save_checkpoint(path, {"model": {"w": torch.zeros(1000)}})
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(1000)) and not leftovers(tmp_path)


@pytest.fixture
def small_disk(tmp_path):
    """A 9 MB tmpfs (the tests run as root in CI); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9M", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_a_checkpoint_write(small_disk, reference):
    """A 34-line double traceback ("basic_ios::clear: iostream error") that never said the disk was full."""
    out = small_disk / "run"
    full = advprune(out)  # last.pt and best.pt of epoch 1 fit; epoch 2's last.pt does not
    message = full.stderr.strip()
    assert full.returncode == 1 and len(message.splitlines()) == 1, full.stderr
    assert f"no space left on the device holding {out / 'last.pt'}: it needs" in message and "MB are free" in message
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and not leftovers(out)  # the earlier checkpoint is intact
    subprocess.run(["mount", "-o", "remount,size=64M", str(small_disk)], check=True)  # space freed
    resumed = advprune(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(weights(out / "last.pt"), weights(reference / "last.pt"))


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.alone  # another test's FFCV writer would add shared memory and trackers of its own
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_prepare_interrupted_leaves_no_process_shared_memory_or_partial_file(tmp_path, how):
    """Killed with -9, prepare left a 0.5 GB writer worker, a resource tracker holding /dev/shm segments,
    and a partial temporary .beton of up to 58 MB."""
    out = tmp_path / "fashion.beton"
    shm_before = set(os.listdir("/dev/shm"))
    trackers_before = set(processes_with("resource_tracker import main"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "advprune", "prepare", "--dataset", "fashion-mnist", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not any(tmp_path.glob(".fashion.tmp-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "prepare ended before it could be interrupted"
    time.sleep(0.3)  # into the writing
    proc.send_signal(how)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and (
        processes_with(str(out))
        or set(os.listdir("/dev/shm")) - shm_before
        or set(processes_with("resource_tracker import main")) - trackers_before
    ):
        time.sleep(0.1)
    assert processes_with(str(out)) == []  # the writer and its workers (forks share the command line)
    assert set(os.listdir("/dev/shm")) - shm_before == set()
    assert set(processes_with("resource_tracker import main")) <= trackers_before  # its tracker ended too
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary


def test_the_beton_writers_caller_never_imports_ffcv(tmp_path):
    """The writer runs in a child process group; were ffcv imported in the caller too, numba's TBB layer
    would come with it, and its teardown at exit hung the caller forever after a signal (seen on one core:
    SIGTERM or SIGINT while writing, the process left waiting on a futex in unload_tbb)."""
    pytest.importorskip("ffcv")
    script = (
        "import sys, numpy as np\n"
        "from advprune.data import write_beton\n"
        "images = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 1), dtype=np.uint8)\n"
        f"write_beton({str(tmp_path / 'small.beton')!r}, images, np.arange(20) % 3)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ffcv', 'numba')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]" and (tmp_path / "small.beton").stat().st_size > 20 * 16

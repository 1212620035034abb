"""The GPU check (`make gpu-check`): on a machine with a CUDA GPU, in one command of about ten minutes, it
builds advprune against the PyTorch it finds, runs the CUDA tests, the op benchmark (percent of the
measured copy bandwidth), an attack benchmark in bfloat16, and a short CIFAR-10 run (PreActResNet-18,
FGSM-RS at 8/255, full data and random 0.2; its epochs are the training benchmark), and writes
gpu_check.json and gpu_check.md to --out ($OUT on a device machine).

A GPU machine may have another PyTorch and Python than this one, no ffcv, no torchattacks and no
internet: the build uses the PyTorch it finds, the loaders are the in-memory ones, and data and wheels
come from gpu-carry/ (`make gpu-carry`). `--dry-run` runs every step on the CPU with tiny sizes and
synthetic data where the carried data are missing (CI runs it), so that the script cannot rot before a
GPU is there. A step that fails is recorded with the end of its output; the others still run.

    python3 scripts/gpu_check.py --out "$OUT" [--dry-run] [--carry gpu-carry]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CUDA_TESTS = [
    "test_dispatch",
    "test_errors",
    "test_kl",
    "test_pgd",
    "test_scores",
    "test_train",
    "test_trainer_options",
]


class Check:
    """The steps' results, in order, and the machine they ran on."""

    def __init__(self, out: Path, dry_run: bool, carry: Path) -> None:
        self.out, self.dry_run, self.carry = out, dry_run, carry
        self.device = "cpu" if dry_run else "cuda"
        self.steps: list[dict] = []

    def run(self, name: str, fn) -> None:
        start = time.perf_counter()
        try:
            result = {"name": name, "ok": True, **fn(self)}
        except Exception as error:
            result = {"name": name, "ok": False, "error": f"{type(error).__name__}: {error}"[-4000:]}
        result["seconds"] = round(time.perf_counter() - start, 1)
        self.steps.append(result)
        print(f"== {name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s", flush=True)


def shell(command: list[str], timeout: float, **kwargs) -> str:
    """Runs a command from the repository root; its output, or an error with the end of it."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{output[-3000:]}")
    return output


# ---------------------------------------------------------------- steps


def environment(check: Check) -> dict:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "dry_run": check.dry_run}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30)
    elif not check.dry_run:
        raise RuntimeError("no CUDA device: run with --dry-run on a machine without a GPU")
    return info


def build(check: Check) -> dict:
    wheels = check.carry / "wheels"
    if not check.dry_run:
        if wheels.is_dir() and any(wheels.glob("*.whl")):
            shell(
                [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", *map(str, wheels.glob("*.whl"))],
                600,
            )
        shell([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."], 900)
    sys.path.insert(0, str(ROOT))
    import advprune

    info = {**advprune.build_info(), **link_facts()}
    if not info["extension_loaded"] or (not check.dry_run and not info["cuda_compiled"]):
        raise RuntimeError(f"the build did not load its kernels: {info}")
    return {"build": info}


def link_facts() -> dict:
    """How the extension was linked: the compiler, the link command's flags, and whether C++ standard
    library code sits inside the module (a static copy beside the shared one breaks stream formatting)."""
    import sysconfig

    import advprune._C as module

    facts = {"ldshared": sysconfig.get_config_var("LDSHARED"), "LDFLAGS": os.environ.get("LDFLAGS", "")}
    try:
        facts["cxx"] = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        symbols = subprocess.run(["nm", "-C", module.__file__], capture_output=True, text=True).stdout
        facts["std_locale_symbols_inside"] = sum(" std::locale::" in line for line in symbols.splitlines())
    except OSError as error:
        facts["link_facts_error"] = str(error)
    return facts


def fashion_mnist(check: Check) -> dict:
    """The Trainer's CUDA tests read Fashion-MNIST from its Debian path: install the carried subset there."""
    target, carried = Path("/usr/share/datasets/fashion-mnist"), check.carry / "fashion-mnist"
    if target.is_dir():
        return {"fashion_mnist": f"{target} (already there)"}
    if check.dry_run or not carried.is_dir():
        return {"fashion_mnist": "absent: the Trainer's CUDA tests will skip"}
    shutil.copytree(carried, target)
    return {"fashion_mnist": f"{carried} copied to {target}"}


def cuda_tests(check: Check) -> dict:
    """The CUDA tests, a file at a time (a crash ends one file, not the step): each file's summary, and for
    a crash the test it hit and the innermost frames (faulthandler prints them first). Full log in --out."""
    files, summaries, failed = [f"tests/{name}.py" for name in CUDA_TESTS], {}, []
    # a dry run collects the selection only, one "file::test" a line (counted below), in one pytest call
    groups = [files] if check.dry_run else [[file] for file in files]
    log = check.out / "cuda_tests.log"
    log.write_text("")
    for group in groups:
        name = " ".join(group)
        mode = ["-q", "--collect-only"] if check.dry_run else ["-v"]
        command = [sys.executable, "-X", "faulthandler", "-m", "pytest", *group, *mode, "-k", "cuda or gpu",
                   "-p", "no:cacheprovider"]  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
        output = done.stdout + done.stderr
        with log.open("a") as f:
            f.write(f"=== {name} (exit {done.returncode})\n{output}\n")
        summaries[name] = crash_summary(output) if done.returncode < 0 or done.returncode > 128 else (
            output.strip().splitlines() or ["(no output)"])[-1]  # fmt: skip
        if done.returncode != 0:
            failed.append(name)
    if check.dry_run and not any("::" in line for line in log.read_text().splitlines()):
        raise RuntimeError("the CUDA test selection collected nothing")
    if failed:
        raise RuntimeError(f"CUDA tests failed in {failed}: {json.dumps(summaries, indent=1)}")
    return {"summaries": summaries}


def crash_summary(output: str) -> str:
    """The test a crashed pytest was running and the innermost frames of the faulthandler's report."""
    lines = output.splitlines()
    fatal = next((i for i, line in enumerate(lines) if "Fatal Python error" in line), None)
    if fatal is None:
        return "crashed: " + " | ".join(lines[-5:])
    return "crashed: " + " | ".join(line.strip() for line in lines[fatal : fatal + 6] if line.strip())


def error_paths(check: Check) -> dict:
    """A refused call must raise, not crash, on the CPU and on the GPU (on the first GPU machine, formatting
    a check's message with a number crashed the process: see docs/gpu-check.md)."""
    code = (
        "import sys, torch, advprune.ops as ops\n"
        "logits = torch.randn(4, 3, device=sys.argv[1]); labels = torch.tensor([0, 1, 5, 2], device=sys.argv[1])\n"
        "try:\n    ops.sample_scores(logits, labels)\nexcept ValueError as e:\n    print('raised:', e)\n"
    )
    results = {}
    for device in ("cpu", check.device):
        done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code, device], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        results[device] = (done.stdout + done.stderr).strip()[-300:] or f"exit {done.returncode}"
        if done.returncode != 0 or "raised:" not in done.stdout:
            raise RuntimeError(f"a refused call on {device} did not raise cleanly (exit {done.returncode}): {results}")
    return {"error_paths": results}


def op_benchmark(check: Check) -> dict:
    out = check.out / "ops.json"
    quick = ["--quick", "--reps", "3"] if check.dry_run else []
    shell([sys.executable, "bench/ops.py", "--device", check.device, "--out", str(out), *quick], 900)
    rows = json.loads(out.read_text())["rows"]
    keep = ("op", "shape", "dtype", "advprune_ms", "speedup_vs_eager", "speedup_vs_compile")
    return {"ops": [{**{k: r[k] for k in keep}, **percents_of_copy(r)} for r in rows]}


def percents_of_copy(row: dict) -> dict:
    """An op's bandwidth as a percentage of the copy's: timed call by call, and from a CUDA graph's replays
    (the kernel alone) where the op could be captured."""
    percents = {"percent_of_copy": 100 * row["fraction_of_copy_bandwidth"]}
    if "graph_fraction_of_copy_bandwidth" in row:
        percents["percent_of_copy_graph"] = 100 * row["graph_fraction_of_copy_bandwidth"]
    return percents


def attack_benchmark(check: Check) -> dict:
    """PGD-10 on PreActResNet-18, a batch of 512 CIFAR-sized images, bfloat16 autocast, channels_last:
    advprune.attacks.pgd against the same attack written plainly (as torchattacks writes it), in one run."""
    import torch
    import torch.nn.functional as F

    from advprune import attacks, models

    n, steps, repeats = (2, 1, 1) if check.dry_run else (512, 10, 10)
    torch.manual_seed(0)
    model = models.create("preact-resnet18", 10).to(check.device, memory_format=torch.channels_last).eval()
    x = torch.rand(n, 3, 32, 32, device=check.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (n,), device=check.device)
    eps, alpha = 8 / 255, 2 / 255

    def plain():
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv).float(), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
        return x_adv

    def ours():
        return attacks.pgd(model, x, y, eps=eps, step_size=alpha, steps=steps)

    timings = {}
    with torch.autocast(check.device, dtype=torch.bfloat16):
        for name, fn in (("plain", plain), ("advprune", ours)):
            fn()
            seconds = []
            for _ in range(repeats):
                if check.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if check.device == "cuda":
                    torch.cuda.synchronize()
                seconds.append(time.perf_counter() - start)
            timings[name] = statistics.median(seconds)
    return {
        "attack": {
            "batch": n,
            "steps": steps,
            "plain_s": timings["plain"],
            "advprune_s": timings["advprune"],
            "ratio": timings["advprune"] / timings["plain"],
            "advprune_images_per_s": n / timings["advprune"],
        }
    }


def cifar10_data(check: Check) -> Path:
    """The official python-version folder, outside --out (it does not come back from a device machine):
    decoded from the carried JPEG copy, or (dry run without it) a tiny synthetic set in the same format."""
    root = Path(tempfile.gettempdir()) / ("advprune-gpu-check-cifar10" + ("-dry" if check.dry_run else ""))
    if (root / "cifar-10-batches-py").is_dir():
        return root
    carried = check.carry / "to_python_version.py"
    if carried.exists():
        shell([sys.executable, str(carried), str(root)], 600)
        return root
    if not check.dry_run:
        raise RuntimeError(f"{carried} is missing: run `make gpu-carry` and carry gpu-carry/")
    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {b"data": rng.integers(0, 256, (64, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, 64).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    labels = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(labels, protocol=2))
    return root


def cifar10_runs(check: Check) -> dict:
    data = cifar10_data(check)
    size = ["--limit", "96", "--epochs", "1", "--val-n", "32", "--eval-n", "16"] if check.dry_run else [
        "--epochs", "3", "--val-n", "1000", "--eval-n", "1000", "--val-every", "3"]  # fmt: skip
    runs = {}
    for name, prune in (("full", []), ("random-0.2", ["--prune", "random:0.2"])):
        out = check.out / "runs" / name
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "advprune", "train", "--dataset", "cifar10", "--data-dir", str(data),
                   "--model", "preact-resnet18", "--attack", "fgsm_rs", "--eps", "8/255", "--batch-size", "512",
                   "--lr", "0.2", "--lr-schedule", "onecycle", "--device", check.device, "--out", str(out),
                   "--quiet", *size, *prune]  # fmt: skip
        start = time.perf_counter()
        shell(command, 900)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        epochs = [r for r in records if "epoch" in r and "event" not in r]
        steady = epochs[1:] or epochs
        result = json.loads((out / "eval.json").read_text())
        runs[name] = {
            "wall_s": wall,
            "epoch_s": [r["seconds"] for r in epochs],
            "images_per_s": statistics.median(r["samples"] / r["seconds"] for r in steady),
            "clean_acc": result["clean_acc"],
            "robust_acc": result.get("robust_acc"),
            "eval": {k: result[k] for k in ("n", "attack", "steps") if k in result},
        }
    runs["random_0.2_over_full_wall"] = runs["random-0.2"]["wall_s"] / runs["full"]["wall_s"]
    return {"cifar10": runs}


# ---------------------------------------------------------------- report


def markdown(check: Check) -> str:
    lines = ["# advprune GPU check", ""]
    env = next((s for s in check.steps if s["name"] == "environment"), {})
    lines.append(f"{env.get('gpu', 'no GPU (dry run)')}, torch {env.get('torch')}, Python {env.get('python')}")
    lines += ["", "| step | result | seconds |", "| --- | --- | ---: |"]
    for step in check.steps:
        lines.append(
            f"| {step['name']} | {'ok' if step['ok'] else 'FAILED: ' + step['error'][:200]} | {step['seconds']} |"
        )
    for step in check.steps:
        if step.get("ops"):
            lines += ["", "| op | shape | dtype | ms | vs eager | vs compile | % of copy bandwidth | same, graph |"]
            lines.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
            for r in step["ops"]:
                shape = "x".join(map(str, r["shape"]))
                graph = f"{r['percent_of_copy_graph']:.0f}%" if "percent_of_copy_graph" in r else "-"
                lines.append(
                    f"| {r['op']} | {shape} | {r['dtype']} | {r['advprune_ms']:.3f} | {r['speedup_vs_eager']:.1f}x "
                    f"| {r['speedup_vs_compile']:.2f}x | {r['percent_of_copy']:.0f}% | {graph} |"
                )
        if step.get("attack"):
            a = step["attack"]
            lines += ["", f"PGD-{a['steps']} on PreActResNet-18, batch {a['batch']}, bfloat16: plain "
                      f"{a['plain_s'] * 1e3:.1f} ms, advprune {a['advprune_s'] * 1e3:.1f} ms ({a['ratio']:.2f}x, "
                      f"{a['advprune_images_per_s']:.0f} images/s)"]  # fmt: skip
        if step.get("cifar10"):
            lines += ["", "| CIFAR-10 run | images/s | epoch seconds | wall s | clean | robust |"]
            lines.append("| --- | ---: | --- | ---: | ---: | ---: |")
            for name, r in step["cifar10"].items():
                if isinstance(r, dict):
                    robust = "-" if r["robust_acc"] is None else f"{100 * r['robust_acc']:.1f}%"
                    epochs = ", ".join(f"{s:.1f}" for s in r["epoch_s"])
                    lines.append(
                        f"| {name} | {r['images_per_s']:.0f} | {epochs} | {r['wall_s']:.0f} "
                        f"| {100 * r['clean_acc']:.1f}% | {robust} |"
                    )
    return "\n".join(lines) + "\n"


STEPS = {
    "environment": environment,
    "build": build,
    "fashion-mnist": fashion_mnist,
    "cuda tests": cuda_tests,
    "error paths": error_paths,
    "op benchmark": op_benchmark,
    "attack benchmark": attack_benchmark,
    "cifar-10 runs": cifar10_runs,
}
ALWAYS = ["environment", "build"]
OPTIONAL = {name.split()[0]: name for name in STEPS if name not in ALWAYS}  # "op": "op benchmark", ...


def steps_list(text: str) -> list[str]:
    """The steps --only names (their first words: fashion-mnist, cuda, error, op, attack, cifar-10), in order."""
    names = [word.strip() for word in text.split(",") if word.strip()]
    unknown = [name for name in names if name not in OPTIONAL]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown step {', '.join(unknown) or '(none)'}: choose from {', '.join(OPTIONAL)}"
        )
    return [OPTIONAL[name] for name in OPTIONAL if name in names]


def chosen_steps(only: list[str] | None) -> list[str]:
    """The environment and the build, then the steps --only names (all of them without it), in order."""
    return ALWAYS + (only or list(OPTIONAL.values()))


def write_report(check: Check) -> None:
    """gpu_check.json and gpu_check.md in --out, each replaced whole (a temporary file renamed; not
    advprune._files, which a machine cannot import before the build step has run)."""
    for name, text in (
        ("gpu_check.json", json.dumps(check.steps, indent=1, default=str)),
        ("gpu_check.md", markdown(check)),
    ):
        partial = check.out / f".{name}.partial"
        partial.write_text(text)
        partial.replace(check.out / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"))
    parser.add_argument("--carry", default=str(ROOT / "gpu-carry"))
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny sizes (CI)")
    parser.add_argument("--only", type=steps_list, help=f"some of {', '.join(OPTIONAL)} (comma-separated; "
                        "the environment and the build always run): a short lease re-measures one thing")  # fmt: skip
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.dry_run, Path(args.carry).resolve())
    for name in chosen_steps(args.only):
        check.run(name, STEPS[name])
        write_report(check)  # after every step: a check cut short by a time limit still leaves its report
    print(markdown(check))
    sys.exit(0 if all(step["ok"] for step in check.steps) else 1)


if __name__ == "__main__":
    main()

"""The ops as the dispatcher sees them: opcheck, torch.compile(fullgraph=True),
fake tensors, autocast, and the build information."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import advprune
from advprune import ops
from tests.helpers import assert_close_rel, logits_and_labels, pgd_inputs


def op_samples(device):
    gen = torch.Generator().manual_seed(0)
    x_adv, grad, x_nat = pgd_inputs((3, 2, 5, 5), torch.float32, device, generator=gen)
    logits, labels = logits_and_labels(6, 10, torch.float32, device, generator=gen)
    p, q = logits_and_labels(6, 10, torch.float32, device, generator=gen)[0], logits
    return [
        (
            torch.ops.advprune.pgd_step_.default,
            (x_adv, grad, x_nat),
            dict(eps=0.1, step_size=0.02, norm="linf"),
        ),
        (
            torch.ops.advprune.pgd_step_.default,
            (x_adv.clone(), grad, x_nat),
            dict(eps=0.3, step_size=0.1, norm="l2"),
        ),
        (torch.ops.advprune.project_.default, (x_adv.clone(), x_nat), dict(eps=0.1, norm="l2")),
        (torch.ops.advprune.sample_scores.default, (logits, labels), {}),
        (torch.ops.advprune.kl_rows.default, (p.requires_grad_(True), q.clone().requires_grad_(True)), {}),
        (torch.ops.advprune.kl_rows_backward.default, (torch.rand(6, device=device), p.detach(), q), {}),
    ]


@pytest.mark.parametrize("index", range(6))
def test_opcheck(device, index):
    op, args, kwargs = op_samples(device)[index]
    torch.library.opcheck(op, args, kwargs)


def test_torch_compile_fullgraph(device):
    @torch.compile(fullgraph=True)
    def step(x_adv, grad, x_nat, logits, labels, p):
        ops.pgd_step_(x_adv, grad, x_nat, eps=0.1, step_size=0.02)
        ops.project_(x_adv, x_nat, eps=0.05, norm="l2")
        scores = ops.sample_scores(logits, labels)
        return x_adv * 1.0, scores.loss + scores.margin, ops.kl_rows(p, logits).sum()

    gen = torch.Generator().manual_seed(1)
    x_adv, grad, x_nat = pgd_inputs((4, 3, 6, 6), torch.float32, device, generator=gen)
    logits, labels = logits_and_labels(8, 10, torch.float32, device, generator=gen)
    p = logits_and_labels(8, 10, torch.float32, device, generator=gen)[0]
    eager_x = x_adv.clone()
    ops.pgd_step_(eager_x, grad, x_nat, eps=0.1, step_size=0.02)
    ops.project_(eager_x, x_nat, eps=0.05, norm="l2")
    scores = ops.sample_scores(logits, labels)
    x_out, combined, kl = step(x_adv, grad, x_nat, logits, labels, p)
    assert_close_rel(x_out, eager_x, 1e-6)
    assert_close_rel(x_adv, eager_x, 1e-6)  # the mutation reaches the caller's tensor
    assert_close_rel(combined, scores.loss + scores.margin, 1e-6)
    assert_close_rel(kl, ops.kl_rows(p, logits).sum(), 1e-6)


def test_fake_tensors_give_shapes_and_check_arguments():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        labels = mode.from_tensor(torch.empty(7, dtype=torch.long))
        scores = torch.ops.advprune.sample_scores(mode.from_tensor(torch.empty(7, 10)), labels)
        assert [t.shape for t in scores] == [(7,)] * 6
        assert scores[5].dtype == torch.bool
        with pytest.raises(ValueError, match="logits need at least 2 classes"):
            torch.ops.advprune.sample_scores(mode.from_tensor(torch.empty(7, 1)), labels)
        kl = torch.ops.advprune.kl_rows(mode.from_tensor(torch.empty(3, 4)), mode.from_tensor(torch.empty(3, 4)))
        assert kl.shape == (3,)


def test_autocast_logits_are_scored_in_float32(device):
    gen = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(16, 10).to(device)
    x = torch.randn(32, 16, generator=gen).to(device)
    labels = torch.randint(0, 10, (32,), generator=gen).to(device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        logits = layer(x)
        scores = ops.sample_scores(logits, labels)
    assert logits.dtype == torch.bfloat16
    assert scores.loss.dtype == torch.float32
    want = torch.nn.functional.cross_entropy(logits.double(), labels, reduction="none")
    assert_close_rel(scores.loss, want, 1e-6)


def test_build_info_reports_the_extension():
    info = advprune.build_info()
    assert info["extension_loaded"] is True and info["extension_error"] is None
    assert info["version"] == advprune.__version__
    assert info["torch_built_against"] == torch.__version__
    if info["cuda_compiled"]:
        assert info["cuda_archs"], "CUDA kernels were compiled for no architecture"
        assert torch._C._dispatch_has_kernel_for_dispatch_key("advprune::sample_scores", "CUDA")


def test_import_without_the_extension_falls_back_with_one_warning(tmp_path):
    """A build without the compiled library still imports; the reference serves."""
    script = textwrap.dedent(
        """
        import sys, warnings
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "advprune._C":
                    raise ImportError("blocked for the test")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch, advprune
            from advprune import ops
        ours = [w for w in caught if "advprune" in str(w.message)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        assert not advprune.build_info()["extension_loaded"]
        x = torch.rand(2, 3); n = torch.rand(2, 3)
        ops.pgd_step_(x, torch.randn(2, 3), n, eps=0.1, step_size=0.05)
        assert ((x - n).abs() <= 0.1 + 1e-6).all()
        print("fallback ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout


def test_a_library_built_from_older_sources_is_named_not_half_used(monkeypatch):
    """A compiled library that lacks an op the Python side calls (built before the op was added) is reported as not
    loaded, naming the op and the rebuild, instead of failing at import or at the op's first call."""
    assert ops._load_extension() is None
    assert all(hasattr(torch.ops.advprune, name) for name in ops._OPS)
    monkeypatch.setattr(ops, "_OPS", (*ops._OPS, "an_op_of_newer_sources"))
    why = ops._load_extension()
    assert "lacks the ops an_op_of_newer_sources" in why and "pip install --no-build-isolation -e ." in why

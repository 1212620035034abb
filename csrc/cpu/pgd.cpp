// CPU kernels of advprune::pgd_step_ and advprune::project_ (the same kernel
// without the gradient step): vectorised with at::vec, parallel with
// at::parallel_for, one pass for linf, two for l2 (the second from cache).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "vec_math.h"

namespace advprune::cpu {
namespace {

constexpr int64_t kElementGrain = 32768;

template <typename scalar_t, bool kStep>
void linf_kernel(const PgdOperands& ops, double step, double eps, double lo, double hi) {
  using A = at::opmath_type<scalar_t>;
  scalar_t* x = ops.x.data_ptr<scalar_t>();
  const scalar_t* g = kStep ? ops.grad.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* n = ops.x_nat.const_data_ptr<scalar_t>();
  const Vec<A> step_v(static_cast<A>(step)), eps_v(static_cast<A>(eps));
  const Vec<A> lo_v(static_cast<A>(lo)), hi_v(static_cast<A>(hi));
  at::parallel_for(0, ops.x.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
    if constexpr (kStep) {
      at::vec::map3(
          [&](Vec<A> xv, Vec<A> gv, Vec<A> nv) {
            return math::pgd_step_linf(xv, gv, nv, step_v, eps_v, lo_v, hi_v);
          },
          x + begin, x + begin, g + begin, n + begin, end - begin);
    } else {
      at::vec::map2(
          [&](Vec<A> xv, Vec<A> nv) { return math::project_linf(xv, nv, eps_v, lo_v, hi_v); },
          x + begin, x + begin, n + begin, end - begin);
    }
  });
}

// One sample: gather the three sums, then rewrite it with the coefficients.
template <typename A, bool kStep>
void l2_row(A* x, const A* g, const A* n, int64_t d, A step, A eps, A lo, A hi) {
  const Vec<A> zero(A(0));
  Vec<A> gg = zero, dd = zero, dg = zero;
  if constexpr (kStep) {
    for_each_chunk3(x, g, n, d, [&](Vec<A> xv, Vec<A> gv, Vec<A> nv, int64_t, int64_t) {
      math::l2_accumulate(gg, dd, dg, xv, gv, nv);  // zero-filled tail lanes add 0
    });
  } else {
    for_each_chunk2(x, n, d, [&](Vec<A> xv, Vec<A> nv, int64_t, int64_t) {
      math::l2_accumulate(gg, dd, dg, xv, zero, nv);
    });
  }
  const math::L2Sums<A> sums{lane_sum(gg), lane_sum(dd), lane_sum(dg)};
  const auto k = math::l2_coefficients(sums, kStep ? step : A(0), eps);
  const Vec<A> c(k.grad_scale), s(k.delta_scale), lo_v(lo), hi_v(hi);
  if constexpr (kStep) {
    at::vec::map3(
        [&](Vec<A> xv, Vec<A> gv, Vec<A> nv) { return math::l2_apply(xv, gv, nv, c, s, lo_v, hi_v); },
        x, x, g, n, d);
  } else {
    at::vec::map2(
        [&](Vec<A> xv, Vec<A> nv) { return math::l2_apply(xv, zero, nv, c, s, lo_v, hi_v); }, x, x,
        n, d);
  }
}

template <typename scalar_t, bool kStep>
void l2_kernel(const PgdOperands& ops, double step, double eps, double lo, double hi) {
  using A = at::opmath_type<scalar_t>;
  scalar_t* x = ops.x.data_ptr<scalar_t>();
  const scalar_t* g = kStep ? ops.grad.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* n = ops.x_nat.const_data_ptr<scalar_t>();
  const int64_t d = ops.row_size;
  const int64_t grain = std::max<int64_t>(1, kElementGrain / std::max<int64_t>(d, 1));
  at::parallel_for(0, ops.rows, grain, [&](int64_t begin, int64_t end) {
    // Reduced precision rows are worked on in float buffers and stored back once.
    std::vector<A> bx, bg, bn;
    if constexpr (!std::is_same_v<scalar_t, A>) {
      bx.resize(d);
      bg.resize(kStep ? d : 0);
      bn.resize(d);
    }
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* xr = x + r * d;
      if constexpr (std::is_same_v<scalar_t, A>) {
        l2_row<A, kStep>(xr, kStep ? g + r * d : nullptr, n + r * d, d, step, eps, lo, hi);
      } else {
        at::vec::convert(xr, bx.data(), d);
        if constexpr (kStep) at::vec::convert(g + r * d, bg.data(), d);
        at::vec::convert(n + r * d, bn.data(), d);
        l2_row<A, kStep>(bx.data(), bg.data(), bn.data(), d, A(step), A(eps), A(lo), A(hi));
        at::vec::convert(bx.data(), xr, d);
      }
    }
  });
}

template <bool kStep>
void run(const char* op, const at::Tensor& x_adv, const std::optional<at::Tensor>& grad,
         const at::Tensor& x_nat, double eps, double step, c10::string_view norm, double lo,
         double hi) {
  const Norm which = check_pgd_call(op, c10::kCPU, x_adv, grad, x_nat, eps,
                                    kStep ? std::optional<double>(step) : std::nullopt, norm, lo, hi);
  if (x_adv.numel() == 0) return;
  const PgdOperands ops = prepare_pgd(x_adv, grad, x_nat);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ops.x.scalar_type(), "pgd", [&] {
    if (which == Norm::Linf) {
      linf_kernel<scalar_t, kStep>(ops, step, eps, lo, hi);
    } else {
      l2_kernel<scalar_t, kStep>(ops, step, eps, lo, hi);
    }
  });
  finish_pgd(x_adv, ops);
}

void pgd_step_cpu(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat,
                  double eps, double step_size, c10::string_view norm, double clip_min,
                  double clip_max) {
  run<true>("advprune.pgd_step_", x_adv, grad, x_nat, eps, step_size, norm, clip_min, clip_max);
}

void project_cpu(const at::Tensor& x_adv, const at::Tensor& x_nat, double eps,
                 c10::string_view norm, double clip_min, double clip_max) {
  run<false>("advprune.project_", x_adv, std::nullopt, x_nat, eps, 0.0, norm, clip_min, clip_max);
}

}  // namespace

TORCH_LIBRARY_IMPL(advprune, CPU, m) {
  m.impl("pgd_step_", &pgd_step_cpu);
  m.impl("project_", &project_cpu);
}

}  // namespace advprune::cpu

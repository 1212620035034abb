// CPU kernels of advprune::kl_rows and its fused backward: per-row
// KL(softmax(p) || softmax(q)) from the row maxima and one vectorised sweep of
// exponentials; the backward recomputes those row statistics (the row is in
// cache) and writes both input gradients in one more sweep.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "vec_math.h"

namespace advprune::cpu {
namespace {

constexpr int64_t kRowGrainElements = 16384;

template <typename A>
struct RowKl {
  A mp, mq;
  math::KlSums<A> sums;
};

template <typename A>
RowKl<A> row_kl(const A* p, const A* q, int64_t c) {
  constexpr int64_t W = Vec<A>::size();
  RowKl<A> r{range_max(p, c), range_max(q, c), {A(0), A(0), A(0)}};
  const Vec<A> zero(A(0)), mp(r.mp), mq(r.mq);
  Vec<A> sp = zero, sq = zero, a = zero;  // two exps per step already overlap: one chain
  int64_t j = 0;
  for (; j + W <= c; j += W) math::kl_add(sp, sq, a, Vec<A>::loadu(p + j), Vec<A>::loadu(q + j), mp, mq);
  if (j < c) {
    const int64_t count = c - j;
    Vec<A> dsp = zero, dsq = zero, da = zero;
    math::kl_add(dsp, dsq, da, Vec<A>::loadu(p + j, count), Vec<A>::loadu(q + j, count), mp, mq);
    sp = add_first(sp, dsp, count);  // tail lanes hold p = q = 0 and must not count
    sq = add_first(sq, dsq, count);
    a = add_first(a, da, count);
  }
  r.sums = {lane_sum(sp), lane_sum(sq), lane_sum(a)};
  return r;
}

// Runs f(row, p_row, q_row) over all rows with opmath views of both inputs.
template <typename scalar_t, typename F>
void for_each_row(const at::Tensor& p, const at::Tensor& q, const F& f) {
  using A = at::opmath_type<scalar_t>;
  const int64_t n = p.size(0), c = p.size(1);
  const scalar_t* p_all = p.const_data_ptr<scalar_t>();
  const scalar_t* q_all = q.const_data_ptr<scalar_t>();
  at::parallel_for(0, n, std::max<int64_t>(1, kRowGrainElements / c), [&](int64_t begin, int64_t end) {
    const bool convert = !std::is_same_v<scalar_t, A>;
    std::vector<A> pb(convert ? c : 0), qb(convert ? c : 0);
    for (int64_t r = begin; r < end; ++r) {
      f(r, as_opmath(p_all + r * c, c, pb.data()), as_opmath(q_all + r * c, c, qb.data()));
    }
  });
}

at::Tensor kl_rows_cpu(const at::Tensor& p_in, const at::Tensor& q_in) {
  check_kl_args("advprune.kl_rows", p_in, q_in);
  TORCH_CHECK_VALUE(p_in.device().is_cpu(), "advprune.kl_rows: the CPU kernel got logits on ",
                    text(p_in.device()));
  const at::Tensor p = p_in.contiguous(), q = q_in.contiguous();
  at::Tensor out = at::empty({p.size(0)}, p.options());
  if (p.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "kl_rows", [&] {
    using A = at::opmath_type<scalar_t>;
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t c = p.size(1);
    for_each_row<scalar_t>(p, q, [&](int64_t r, const A* pr, const A* qr) {
      const RowKl<A> k = row_kl(pr, qr, c);
      o[r] = static_cast<scalar_t>(math::kl_value(k.sums, k.mp, k.mq));
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> kl_rows_backward_cpu(const at::Tensor& grad_in,
                                                        const at::Tensor& p_in,
                                                        const at::Tensor& q_in) {
  constexpr const char* op = "advprune.kl_rows_backward";
  check_kl_args(op, p_in, q_in);
  TORCH_CHECK_VALUE(grad_in.dim() == 1 && grad_in.size(0) == p_in.size(0), op,
                    ": grad must have shape [", text(p_in.size(0)), "], got ", text(grad_in.sizes()));
  TORCH_CHECK_VALUE(p_in.device().is_cpu() && grad_in.device().is_cpu(), op,
                    ": the CPU kernel got tensors on ", text(p_in.device()), " and ", text(grad_in.device()));
  const at::Tensor p = p_in.contiguous(), q = q_in.contiguous();
  at::Tensor dp = at::empty_like(p), dq = at::empty_like(q);
  if (p.numel() == 0) return {dp, dq};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "kl_rows_backward", [&] {
    using A = at::opmath_type<scalar_t>;
    const at::Tensor g = grad_in.to(p.options().dtype(c10::CppTypeToScalarType<A>::value)).contiguous();
    const A* g_all = g.const_data_ptr<A>();
    scalar_t* dp_all = dp.data_ptr<scalar_t>();
    scalar_t* dq_all = dq.data_ptr<scalar_t>();
    const int64_t c = p.size(1);
    for_each_row<scalar_t>(p, q, [&](int64_t r, const A* pr, const A* qr) {
      const RowKl<A> k = row_kl(pr, qr, c);
      const A gap = math::kl_lse_gap(k.sums, k.mp, k.mq);
      const A kl = math::kl_value(k.sums, k.mp, k.mq);
      const Vec<A> gv(g_all[r]), mp(k.mp), mq(k.mq), sp(k.sums.sp), sq(k.sums.sq), gapv(gap), klv(kl);
      thread_local std::vector<A> dpb, dqb;
      dpb.resize(c);
      dqb.resize(c);
      for_each_chunk2(pr, qr, c, [&](Vec<A> pv, Vec<A> qv, int64_t count, int64_t offset) {
        Vec<A> dpv, dqv;
        math::kl_grad(gv, pv, qv, mp, mq, sp, sq, gapv, klv, dpv, dqv);
        dpv.store(dpb.data() + offset, count);
        dqv.store(dqb.data() + offset, count);
      });
      store_from_opmath<scalar_t>(dpb.data(), dp_all + r * c, c);
      store_from_opmath<scalar_t>(dqb.data(), dq_all + r * c, c);
    });
  });
  return {dp, dq};
}

}  // namespace

TORCH_LIBRARY_IMPL(advprune, CPU, m) {
  m.impl("kl_rows", &kl_rows_cpu);
  m.impl("kl_rows_backward", &kl_rows_backward_cpu);
}

}  // namespace advprune::cpu

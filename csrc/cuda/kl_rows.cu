// CUDA kernels of advprune::kl_rows and its fused backward: a group of lanes per row (lanes_for(C): one
// lane at C <= 16, a warp from C = 257 on), the row maxima, then the sums of the header's KL formula; the backward
// recomputes both and writes the two gradients in a third pass.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <advprune/math.h>

#include <tuple>

#include "../common/checks.h"
#include "cuda_utils.cuh"

namespace advprune::cuda {
namespace {

constexpr int kThreads = 256;

template <typename A>
struct RowKl {
  A mp, mq;
  math::KlSums<A> s;
};

// The row statistics, identical in every lane of the row's group of LANES lanes.
template <int LANES, typename scalar_t>
__device__ inline RowKl<at::opmath_type<scalar_t>> row_kl(const scalar_t* p, const scalar_t* q, int64_t c,
                                                          int lane) {
  using A = at::opmath_type<scalar_t>;
  A mp = -INFINITY, mq = -INFINITY;
  for (int64_t j = lane; j < c; j += LANES) {
    mp = math::maximum(mp, static_cast<A>(p[j]));
    mq = math::maximum(mq, static_cast<A>(q[j]));
  }
  mp = __shfl_sync(0xffffffffu, group_max<LANES>(mp), 0, LANES);
  mq = __shfl_sync(0xffffffffu, group_max<LANES>(mq), 0, LANES);
  math::KlSums<A> s{A(0), A(0), A(0)};
  for (int64_t j = lane; j < c; j += LANES) math::kl_update(s, static_cast<A>(p[j]), static_cast<A>(q[j]), mp, mq);
  s.sp = __shfl_sync(0xffffffffu, group_sum<LANES>(s.sp), 0, LANES);
  s.sq = __shfl_sync(0xffffffffu, group_sum<LANES>(s.sq), 0, LANES);
  s.a = __shfl_sync(0xffffffffu, group_sum<LANES>(s.a), 0, LANES);
  return {mp, mq, s};
}

// LANES lanes a row (lanes_for(C)); lanes of a row past the end read row n - 1 and write nothing, so that
// every lane of a warp takes part in the shuffles.
template <typename scalar_t, int LANES>
__global__ void kl_kernel(const scalar_t* __restrict__ p, const scalar_t* __restrict__ q, int64_t n,
                          int64_t c, scalar_t* __restrict__ out) {
  const int lane = threadIdx.x % LANES;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / LANES) + threadIdx.x / LANES;
  const int64_t read_row = row < n ? row : n - 1;
  const auto k = row_kl<LANES>(p + read_row * c, q + read_row * c, c, lane);
  if (lane == 0 && row < n) out[row] = static_cast<scalar_t>(math::kl_value(k.s, k.mp, k.mq));
}

template <typename scalar_t, int LANES>
__global__ void kl_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ p,
                                   const scalar_t* __restrict__ q, int64_t n, int64_t c,
                                   scalar_t* __restrict__ dp, scalar_t* __restrict__ dq) {
  using A = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % LANES;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / LANES) + threadIdx.x / LANES;
  const int64_t read_row = row < n ? row : n - 1;
  const int64_t base = read_row * c;
  const auto k = row_kl<LANES>(p + base, q + base, c, lane);
  if (row >= n) return;  // after the last shuffle
  const A gap = math::kl_lse_gap(k.s, k.mp, k.mq);
  const A kl = math::kl_value(k.s, k.mp, k.mq);
  const A g = static_cast<A>(grad[row]);
  for (int64_t j = lane; j < c; j += LANES) {
    A dpj, dqj;
    math::kl_grad(g, static_cast<A>(p[base + j]), static_cast<A>(q[base + j]), k.mp, k.mq, k.s.sp, k.s.sq, gap,
                  kl, dpj, dqj);
    dp[base + j] = static_cast<scalar_t>(dpj);
    dq[base + j] = static_cast<scalar_t>(dqj);
  }
}

// Launches kernel<scalar_t, LANES> with the lanes C asks for, rows_per_block = kThreads / LANES.
template <typename scalar_t, template <typename, int> class Launch, typename... Args>
void with_lanes(int64_t n, int64_t c, Args&&... args) {
  switch (lanes_for(c)) {
    case 1: Launch<scalar_t, 1>::run(n, args...); break;
    case 2: Launch<scalar_t, 2>::run(n, args...); break;
    case 4: Launch<scalar_t, 4>::run(n, args...); break;
    case 8: Launch<scalar_t, 8>::run(n, args...); break;
    case 16: Launch<scalar_t, 16>::run(n, args...); break;
    default: Launch<scalar_t, kWarp>::run(n, args...);
  }
}

template <typename scalar_t, int LANES>
struct Forward {
  static void run(int64_t n, const at::Tensor& p, const at::Tensor& q, at::Tensor& out) {
    const int64_t rows_per_block = kThreads / LANES;
    kl_kernel<scalar_t, LANES><<<(n + rows_per_block - 1) / rows_per_block, kThreads, 0, current_stream()>>>(
        p.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), n, p.size(1), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

template <typename scalar_t, int LANES>
struct Backward {
  static void run(int64_t n, const at::Tensor& g, const at::Tensor& p, const at::Tensor& q, at::Tensor& dp,
                  at::Tensor& dq) {
    const int64_t rows_per_block = kThreads / LANES;
    kl_backward_kernel<scalar_t, LANES><<<(n + rows_per_block - 1) / rows_per_block, kThreads, 0,
                                          current_stream()>>>(
        g.const_data_ptr<scalar_t>(), p.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), n, p.size(1),
        dp.data_ptr<scalar_t>(), dq.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

at::Tensor kl_rows_cuda(const at::Tensor& p_in, const at::Tensor& q_in) {
  check_kl_args("advprune.kl_rows", p_in, q_in);
  TORCH_CHECK_VALUE(p_in.is_cuda(), "advprune.kl_rows: the CUDA kernel got logits on ", text(p_in.device()));
  const c10::cuda::CUDAGuard guard(p_in.device());
  const at::Tensor p = p_in.contiguous(), q = q_in.contiguous();
  at::Tensor out = at::empty({p.size(0)}, p.options());
  if (p.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "kl_rows_cuda", [&] {
    with_lanes<scalar_t, Forward>(p.size(0), p.size(1), p, q, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> kl_rows_backward_cuda(const at::Tensor& grad_in, const at::Tensor& p_in,
                                                         const at::Tensor& q_in) {
  constexpr const char* op = "advprune.kl_rows_backward";
  check_kl_args(op, p_in, q_in);
  TORCH_CHECK_VALUE(grad_in.dim() == 1 && grad_in.size(0) == p_in.size(0), op, ": grad must have shape [",
                    text(p_in.size(0)), "], got ", text(grad_in.sizes()));
  TORCH_CHECK_VALUE(p_in.is_cuda() && grad_in.device() == p_in.device(), op,
                    ": the CUDA kernel got tensors on ", text(p_in.device()), " and ", text(grad_in.device()));
  const c10::cuda::CUDAGuard guard(p_in.device());
  const at::Tensor p = p_in.contiguous(), q = q_in.contiguous();
  const at::Tensor g = grad_in.to(p.scalar_type()).contiguous();
  at::Tensor dp = at::empty_like(p), dq = at::empty_like(q);
  if (p.numel() == 0) return {dp, dq};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "kl_rows_backward_cuda", [&] {
    with_lanes<scalar_t, Backward>(p.size(0), p.size(1), g, p, q, dp, dq);
  });
  return {dp, dq};
}

}  // namespace

TORCH_LIBRARY_IMPL(advprune, CUDA, m) {
  m.impl("kl_rows", &kl_rows_cuda);
  m.impl("kl_rows_backward", &kl_rows_backward_cuda);
}

}  // namespace advprune::cuda

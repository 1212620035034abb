// CUDA kernel of advprune::sample_scores: one warp per row, two passes over the
// row (the second from L1/L2), warp-shuffle merges of the header's row state.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <advprune/math.h>

#include <tuple>

#include "../common/checks.h"
#include "cuda_utils.cuh"

namespace advprune::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / kWarp;

template <typename A>
__device__ inline math::RowMax<A> warp_row_max(math::RowMax<A> m) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    math::RowMax<A> o;
    o.max = __shfl_down_sync(0xffffffffu, m.max, offset);
    o.argmax = __shfl_down_sync(0xffffffffu, m.argmax, offset);
    o.other_max = __shfl_down_sync(0xffffffffu, m.other_max, offset);
    o.z_y = __shfl_down_sync(0xffffffffu, m.z_y, offset);
    m = math::row_max_merge(m, o);
  }
  return m;
}

template <typename scalar_t>
__global__ void scores_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ labels,
                              int64_t n, int64_t c, float* __restrict__ loss, float* __restrict__ margin,
                              float* __restrict__ el2n, float* __restrict__ entropy,
                              float* __restrict__ confidence, bool* __restrict__ correct) {
  using A = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= n) return;  // whole warps leave together: row is uniform in a warp
  const scalar_t* z = logits + row * c;
  const int64_t y = labels[row];

  math::RowMax<A> m = math::row_max_init<A>();
  for (int64_t j = lane; j < c; j += kWarp) math::row_max_update(m, static_cast<A>(z[j]), j, y);
  m = warp_row_max(m);
  // every lane needs the row's max for the second pass
  m.max = __shfl_sync(0xffffffffu, m.max, 0);

  math::RowSums<A> s{A(0), A(0), A(0)};
  for (int64_t j = lane; j < c; j += kWarp) {
    if (j != y) math::row_sums_update(s, static_cast<A>(z[j]), m.max);
  }
  s.sum_exp = warp_sum(s.sum_exp);
  s.sum_exp_sq = warp_sum(s.sum_exp_sq);
  s.sum_exp_shift = warp_sum(s.sum_exp_shift);
  if (lane == 0) {
    const auto out = math::row_scores(m, s, y);
    loss[row] = static_cast<float>(out.loss);
    margin[row] = static_cast<float>(out.margin);
    el2n[row] = static_cast<float>(out.el2n);
    entropy[row] = static_cast<float>(out.entropy);
    confidence[row] = static_cast<float>(out.confidence);
    correct[row] = out.correct;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
sample_scores_cuda(const at::Tensor& logits_in, const at::Tensor& labels_in, bool check_labels) {
  check_scores_args(logits_in, labels_in, check_labels);
  TORCH_CHECK_VALUE(logits_in.is_cuda(), "advprune.sample_scores: the CUDA kernel got logits on ",
                    logits_in.device());
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const int64_t n = logits.size(0), c = logits.size(1);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({n}, f32), margin = at::empty({n}, f32), el2n = at::empty({n}, f32),
             entropy = at::empty({n}, f32), confidence = at::empty({n}, f32),
             correct = at::empty({n}, logits.options().dtype(at::kBool));
  if (n > 0) {
    const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
    const cudaStream_t stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sample_scores_cuda", [&] {
      scores_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          logits.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(), n, c,
          loss.data_ptr<float>(), margin.data_ptr<float>(), el2n.data_ptr<float>(),
          entropy.data_ptr<float>(), confidence.data_ptr<float>(), correct.data_ptr<bool>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {loss, margin, el2n, entropy, confidence, correct};
}

}  // namespace

TORCH_LIBRARY_IMPL(advprune, CUDA, m) { m.impl("sample_scores", &sample_scores_cuda); }

}  // namespace advprune::cuda

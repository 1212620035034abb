// CUDA kernel of advprune::sample_scores: a group of lanes per row (lanes_for(C): one lane at C <= 16, a
// warp from C = 257 on), two passes over the row (the second from L1/L2), shuffle merges of the header's
// row state.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <advprune/math.h>

#include <array>
#include <tuple>

#include "../common/checks.h"
#include "cuda_utils.cuh"

namespace advprune::cuda {
namespace {

constexpr int kThreads = 256;

// The row state merged over a group of LANES lanes (a power of two, at most a warp): valid in its lane 0.
template <int LANES, typename A>
__device__ inline math::RowMax<A> group_row_max(math::RowMax<A> m) {
#pragma unroll
  for (int offset = LANES / 2; offset > 0; offset /= 2) {
    math::RowMax<A> o;
    o.max = __shfl_down_sync(0xffffffffu, m.max, offset, LANES);
    o.argmax = __shfl_down_sync(0xffffffffu, m.argmax, offset, LANES);
    o.other_max = __shfl_down_sync(0xffffffffu, m.other_max, offset, LANES);
    o.z_y = __shfl_down_sync(0xffffffffu, m.z_y, offset, LANES);
    m = math::row_max_merge(m, o);
  }
  return m;
}

// LANES lanes a row (lanes_for(C)), so that a warp serves 32 / LANES rows when C is small (C = 10: 32 rows
// a warp, each lane walking its own row). Every lane of a warp takes part in the shuffles, also those of a
// row past the end (they read row n - 1 and write nothing).
template <typename scalar_t, int LANES>
__global__ void scores_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ labels,
                              int64_t n, int64_t c, float* __restrict__ loss, float* __restrict__ margin,
                              float* __restrict__ el2n, float* __restrict__ entropy,
                              float* __restrict__ confidence, bool* __restrict__ correct) {
  using A = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % LANES;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / LANES) + threadIdx.x / LANES;
  const int64_t read_row = row < n ? row : n - 1;
  const scalar_t* z = logits + read_row * c;
  const int64_t y = labels[read_row];

  math::RowMax<A> m = math::row_max_init<A>();
  for (int64_t j = lane; j < c; j += LANES) math::row_max_update(m, static_cast<A>(z[j]), j, y);
  m = group_row_max<LANES>(m);
  // every lane of the group needs the row's max for the second pass
  m.max = __shfl_sync(0xffffffffu, m.max, 0, LANES);

  math::RowSums<A> s{A(0), A(0), A(0)};
  for (int64_t j = lane; j < c; j += LANES) {
    if (j != y) math::row_sums_update(s, static_cast<A>(z[j]), m.max);
  }
  s.sum_exp = group_sum<LANES>(s.sum_exp);
  s.sum_exp_sq = group_sum<LANES>(s.sum_exp_sq);
  s.sum_exp_shift = group_sum<LANES>(s.sum_exp_shift);
  if (lane == 0 && row < n) {
    const auto out = math::row_scores(m, s, y);
    loss[row] = static_cast<float>(out.loss);
    margin[row] = static_cast<float>(out.margin);
    el2n[row] = static_cast<float>(out.el2n);
    entropy[row] = static_cast<float>(out.entropy);
    confidence[row] = static_cast<float>(out.confidence);
    correct[row] = out.correct;
  }
}

template <typename scalar_t, int LANES>
void launch_scores(const at::Tensor& logits, const at::Tensor& labels, const std::array<at::Tensor, 6>& out) {
  const int64_t n = logits.size(0), rows_per_block = kThreads / LANES;
  scores_kernel<scalar_t, LANES><<<(n + rows_per_block - 1) / rows_per_block, kThreads, 0, current_stream()>>>(
      logits.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(), n, logits.size(1),
      out[0].data_ptr<float>(), out[1].data_ptr<float>(), out[2].data_ptr<float>(), out[3].data_ptr<float>(),
      out[4].data_ptr<float>(), out[5].data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
sample_scores_cuda(const at::Tensor& logits_in, const at::Tensor& labels_in, bool check_labels) {
  check_scores_args(logits_in, labels_in, check_labels);
  TORCH_CHECK_VALUE(logits_in.is_cuda(), "advprune.sample_scores: the CUDA kernel got logits on ",
                    text(logits_in.device()));
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const int64_t n = logits.size(0), c = logits.size(1);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({n}, f32), margin = at::empty({n}, f32), el2n = at::empty({n}, f32),
             entropy = at::empty({n}, f32), confidence = at::empty({n}, f32),
             correct = at::empty({n}, logits.options().dtype(at::kBool));
  if (n > 0) {
    const std::array<at::Tensor, 6> out{loss, margin, el2n, entropy, confidence, correct};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sample_scores_cuda", [&] {
      switch (lanes_for(c)) {
        case 1: launch_scores<scalar_t, 1>(logits, labels, out); break;
        case 2: launch_scores<scalar_t, 2>(logits, labels, out); break;
        case 4: launch_scores<scalar_t, 4>(logits, labels, out); break;
        case 8: launch_scores<scalar_t, 8>(logits, labels, out); break;
        case 16: launch_scores<scalar_t, 16>(logits, labels, out); break;
        default: launch_scores<scalar_t, kWarp>(logits, labels, out);
      }
    });
  }
  return {loss, margin, el2n, entropy, confidence, correct};
}

}  // namespace

TORCH_LIBRARY_IMPL(advprune, CUDA, m) { m.impl("sample_scores", &sample_scores_cuda); }

}  // namespace advprune::cuda

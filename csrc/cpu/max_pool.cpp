// CPU kernels of advprune::max_pool2x2 and its backward: 2x2 max pooling with stride 2 over a
// channels_last batch, with max_pool2d's values, window positions and NaN rule (a NaN wins; among
// equal values the first in row-major order). The argmax is one byte per output (0..3, dy * 2 + dx)
// instead of PyTorch's int64 index, and the backward writes every input gradient exactly once (no
// zero fill, no scatter): in bfloat16 a fifth to a quarter of max_pool2d's time on the small CNN's layers
// (bench/ops.py), in float32 about the same time.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "pool_rows.h"
#include "vec_math.h"

#include <algorithm>
#include <tuple>
#include <vector>

namespace advprune::cpu {
namespace {

constexpr int64_t kElementGrain = 32768;

// One row's values as opmath (float for 16-bit types): vectorised compares and selects, in row buffers
// for the reduced types and on the data itself for float and double.
template <typename scalar_t>
struct RowBuffers {
  using A = at::opmath_type<scalar_t>;
  static constexpr bool kConvert = !std::is_same_v<scalar_t, A>;
  std::vector<A> first, second, out;
  std::vector<A> codes;  // the window positions as opmath values, for one conversion to uint8

  RowBuffers(int64_t input_row, int64_t output_row)
      : first(kConvert ? input_row : 0), second(kConvert ? input_row : 0),
        out(kConvert ? output_row : 0), codes(output_row) {}
};

// The pooling's geometry (channels_last: each pixel's c channels are contiguous). Both directions split
// the work by output row, the pair of input rows it pools, and walk its pixels in vector chunks.
struct PoolGeometry {
  int64_t n, c, h, w, oh, ow;

  // From a tensor of the input's shape [N, C, H, W] (the input, or its gradient).
  explicit PoolGeometry(const at::Tensor& t)
      : n(t.size(0)), c(t.size(1)), h(t.size(2)), w(t.size(3)), oh(t.size(2) / 2), ow(t.size(3) / 2) {}

  // The first of the two input rows that output row `row` (image row / oh, pooled row row % oh) pools.
  int64_t input_offset(int64_t row) const { return ((row / oh) * h + 2 * (row % oh)) * w * c; }

  // f(row, buffers) for every output row, rows split among threads.
  template <typename scalar_t, typename F>
  void for_each_output_row(const F& f) const {
    const int64_t grain = std::max<int64_t>(1, kElementGrain / std::max<int64_t>(w * c * 2, 1));
    at::parallel_for(0, n * oh, grain, [&](int64_t begin, int64_t end) {
      RowBuffers<scalar_t> buf(w * c, ow * c);
      for (int64_t row = begin; row < end; ++row) f(row, buf);
    });
  }
};

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& out, const at::Tensor& argmax) {
  using A = at::opmath_type<scalar_t>;
  const PoolGeometry p(x);
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  uint8_t* k = argmax.data_ptr<uint8_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  const int64_t wc = p.w * p.c, row_out = p.ow * p.c;
  p.for_each_output_row<scalar_t>([&](int64_t row, RowBuffers<scalar_t>& buf) {
    const scalar_t* top_in = in + p.input_offset(row);
    const A* top = as_opmath(top_in, wc, buf.first.data());
    const A* bottom = as_opmath(top_in + wc, wc, buf.second.data());
    A* out_row = buf.kConvert ? buf.out.data() : reinterpret_cast<A*>(o + row * row_out);
    pool_row(top, bottom, p.ow, p.c, out_row, buf.codes.data());
    if constexpr (RowBuffers<scalar_t>::kConvert) {
      at::vec::convert(out_row, o + row * row_out, row_out);  // exact: every value is an input's
    }
    cast_codes(buf.codes.data(), k + row * row_out, row_out);
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad, const at::Tensor& argmax, const at::Tensor& grad_in) {
  using A = at::opmath_type<scalar_t>;
  const PoolGeometry p(grad_in);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const uint8_t* k = argmax.const_data_ptr<uint8_t>();
  scalar_t* gi = grad_in.data_ptr<scalar_t>();
  const int64_t wc = p.w * p.c, row_out = p.ow * p.c;
  p.for_each_output_row<scalar_t>([&](int64_t row, RowBuffers<scalar_t>& buf) {
    // buf.first and buf.second: the two input rows' gradients, when they are not written in place
    const A* src = as_opmath(g + row * row_out, row_out, buf.out.data());
    cast_codes(k + row * row_out, buf.codes.data(), row_out);
    scalar_t* top_out = gi + p.input_offset(row);
    A* rows[2] = {buf.kConvert ? buf.first.data() : reinterpret_cast<A*>(top_out),
                  buf.kConvert ? buf.second.data() : reinterpret_cast<A*>(top_out + wc)};
    unpool_row(src, buf.codes.data(), p.ow, p.c, p.w, rows[0], rows[1]);
    if constexpr (RowBuffers<scalar_t>::kConvert) {
      at::vec::convert(rows[0], top_out, wc);
      at::vec::convert(rows[1], top_out + wc, wc);
    }
  });
  if (p.h % 2) {  // the last row of an odd height is in no window
    for (int64_t image = 0; image < p.n; ++image) {
      scalar_t* last = gi + (image * p.h + p.h - 1) * wc;
      std::fill(last, last + wc, scalar_t(0));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool2x2_cpu(const at::Tensor& input) {
  check_max_pool2x2_input(input, c10::kCPU);
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const auto options = x.options().memory_format(at::MemoryFormat::ChannelsLast);
  const std::vector<int64_t> shape{x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2};
  at::Tensor out = at::empty(shape, options);
  at::Tensor argmax = at::empty(shape, options.dtype(at::kByte));
  if (out.numel() == 0) return {out, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2x2",
                                  [&] { forward_kernel<scalar_t>(x, out, argmax); });
  return {out, argmax};
}

at::Tensor max_pool2x2_backward_cpu(const at::Tensor& grad_output, const at::Tensor& argmax,
                                    int64_t height, int64_t width) {
  check_max_pool2x2_backward(grad_output, argmax, height, width, c10::kCPU);
  const at::Tensor g = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor k = argmax.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor grad_in = at::empty({g.size(0), g.size(1), height, width},
                                 g.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (grad_in.numel() == 0) return grad_in;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "max_pool2x2_backward",
                                  [&] { backward_kernel<scalar_t>(g, k, grad_in); });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(advprune, CPU, m) {
  m.impl("max_pool2x2", &max_pool2x2_cpu);
  m.impl("max_pool2x2_backward", &max_pool2x2_backward_cpu);
}

}  // namespace advprune::cpu

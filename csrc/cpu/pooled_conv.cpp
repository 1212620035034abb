// advprune::conv3x3_max_pool2x2_input_grad: the input gradient of max_pool2x2(conv2d(x, weight, padding)) (a 3x3
// kernel, stride 1, ReLU optional) from the pooled gradient and the window positions, without the
// convolution's gradient. That gradient is nonzero at one position of each 2x2 window only (and nowhere a
// ReLU zeroed), yet oneDNN's backward-data kernel spends a dense product on it (the small CNN's second
// convolution's input gradient: 31% of an early-exit PGD evaluation's time). Here each pooled pixel's output channels
// are put in four lists by their winner's position, and each listed channel adds its gradient times its 3x3
// weights onto a 3x3 patch of input pixels held in registers: a quarter of the dense product's work at most.
// The input channels are taken a vector at a time (outermost, so that their weights stay in L1), each image's
// sums in a zero-padded scratch of opmath values.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "vec_math.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace advprune::cpu {
namespace {

constexpr int64_t kTaps = 9;  // 3x3
constexpr int kPositions = 4;  // a 2x2 window's; code 4 (the ReLU zeroed the window) passes nothing

struct PooledGeometry {
  int64_t n, oc, ic, ph, pw, pad_h, pad_w, h, w;
  int64_t rows() const { return 2 * ph + 2; }  // the scratch: conv output row r's taps reach rows r .. r + 2
  int64_t cols() const { return 2 * pw + 2; }
};

// The weight [OC, IC, 3, 3] as opmath values in [IC / L chunks][OC][9 taps][L lanes], the lanes past IC zero, so
// that each (chunk, channel, tap) is one whole vector load.
template <typename A>
std::vector<A> chunked_taps(const at::Tensor& weight, int64_t lanes) {
  const int64_t oc = weight.size(0), ic = weight.size(1), chunks = (ic + lanes - 1) / lanes;
  const at::Tensor w = weight.to(c10::CppTypeToScalarType<A>::value).permute({0, 2, 3, 1}).contiguous();
  const A* src = w.const_data_ptr<A>();  // [OC][3][3][IC]
  std::vector<A> taps(chunks * oc * kTaps * lanes, A(0));
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t first = chunk * lanes, count = std::min(lanes, ic - first);
    for (int64_t o = 0; o < oc; ++o) {
      for (int64_t t = 0; t < kTaps; ++t) {
        std::copy_n(src + (o * kTaps + t) * ic + first, count, taps.data() + ((chunk * oc + o) * kTaps + t) * lanes);
      }
    }
  }
  return taps;
}

// Each pooled pixel's output channels ordered by their window position: channels[pixel * OC + i] for i in
// [start[pixel * 5 + pos], start[pixel * 5 + pos + 1]); codes of 4 or more are in no list.
struct WinnerLists {
  std::vector<int32_t> channels, start;

  WinnerLists(int64_t pixels, int64_t oc) : channels(pixels * oc), start(pixels * (kPositions + 1)) {}

  // (Without branches: the positions are random, and a mispredicted branch a channel cost more than the sort.)
  void fill(const uint8_t* codes, int64_t pixels, int64_t oc) {
    for (int64_t p = 0; p < pixels; ++p) {
      const uint8_t* k = codes + p * oc;
      std::array<int32_t, kPositions + 2> begin{};  // a fifth list, last, for the codes of no position
      for (int64_t o = 0; o < oc; ++o) ++begin[std::min<int>(k[o], kPositions) + 1];
      for (int pos = 0; pos < kPositions; ++pos) begin[pos + 1] += begin[pos];
      std::copy_n(begin.begin(), kPositions + 1, start.begin() + p * (kPositions + 1));
      int32_t* out = channels.data() + p * oc;
      for (int64_t o = 0; o < oc; ++o) out[begin[std::min<int>(k[o], kPositions)]++] = static_cast<int32_t>(o);
    }
  }
};

// One pooled pixel's channels that won at one window position, one chunk of input channels: the sum over them of
// grad x weights in nine registers, then added onto the winner's 3x3 taps in the scratch (`patch`: its top left).
template <typename scalar_t>
inline void add_position(const scalar_t* grad, const int32_t* channels, int32_t count,
                         const at::opmath_type<scalar_t>* chunk_taps, at::opmath_type<scalar_t>* patch,
                         int64_t row_stride) {
  using A = at::opmath_type<scalar_t>;
  using V = Vec<A>;
  constexpr int64_t L = V::size();
  V acc[kTaps];
  for (auto& a : acc) a = V(A(0));
  for (int32_t i = 0; i < count; ++i) {
    const int32_t o = channels[i];
    const V g(static_cast<A>(grad[o]));
    const A* w = chunk_taps + o * kTaps * L;
#pragma GCC unroll 9  // the nine sums stay in registers
    for (int64_t t = 0; t < kTaps; ++t) acc[t] = at::vec::fmadd(g, V::loadu(w + t * L), acc[t]);
  }
  for (int64_t kh = 0; kh < 3; ++kh) {
    for (int64_t kw = 0; kw < 3; ++kw) {
      A* p = patch + (kh * row_stride + kw) * L;
      (V::loadu(p) + acc[kh * 3 + kw]).store(p);
    }
  }
}

// count <= L opmath values into scalar_t: one vector store where the types agree (std::copy's call cost more).
template <typename scalar_t>
inline void store_pixel(const at::opmath_type<scalar_t>* values, scalar_t* out, int64_t count) {
  using A = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, A>) {
    Vec<A>::loadu(values).store(out, count);
  } else {
    store_from_opmath(values, out, count);
  }
}

template <typename scalar_t>
void pooled_conv_input_grad_kernel(const at::Tensor& grad, const at::Tensor& argmax, const at::Tensor& weight,
                                   const PooledGeometry& p, const at::Tensor& grad_in) {
  using A = at::opmath_type<scalar_t>;
  constexpr int64_t L = Vec<A>::size();
  const int64_t chunks = (p.ic + L - 1) / L, pixels = p.ph * p.pw, cols = p.cols();
  const std::vector<A> taps = chunked_taps<A>(weight, L);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const uint8_t* k = argmax.const_data_ptr<uint8_t>();
  scalar_t* gi = grad_in.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(pixels * p.oc * kTaps, 1));
  at::parallel_for(0, p.n, grain, [&](int64_t begin, int64_t end) {
    WinnerLists lists(pixels, p.oc);
    std::vector<A> scratch(p.rows() * cols * L);
    for (int64_t image = begin; image < end; ++image) {
      const scalar_t* image_grad = g + image * pixels * p.oc;
      lists.fill(k + image * pixels * p.oc, pixels, p.oc);
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        std::fill(scratch.begin(), scratch.end(), A(0));
        const A* chunk_taps = taps.data() + chunk * p.oc * kTaps * L;
        for (int64_t pixel = 0; pixel < pixels; ++pixel) {
          const int64_t py = pixel / p.pw, px = pixel % p.pw;
          const int32_t* start = lists.start.data() + pixel * (kPositions + 1);
          for (int pos = 0; pos < kPositions; ++pos) {
            if (start[pos + 1] == start[pos]) continue;
            // the winner, conv output pixel (oy, ox): its taps are scratch pixels (oy + kh, ox + kw)
            const int64_t oy = 2 * py + pos / 2, ox = 2 * px + pos % 2;
            add_position<scalar_t>(image_grad + pixel * p.oc, lists.channels.data() + pixel * p.oc + start[pos],
                                   start[pos + 1] - start[pos], chunk_taps, scratch.data() + (oy * cols + ox) * L,
                                   cols);
          }
        }
        // input pixel (iy, ix) is scratch pixel (iy + pad_h, ix + pad_w); beyond the scratch no tap reached it
        const int64_t first = chunk * L, count = std::min(L, p.ic - first);
        for (int64_t iy = 0; iy < p.h; ++iy) {
          for (int64_t ix = 0; ix < p.w; ++ix) {
            scalar_t* out = gi + ((image * p.h + iy) * p.w + ix) * p.ic + first;
            const int64_t sy = iy + p.pad_h, sx = ix + p.pad_w;
            if (sy < p.rows() && sx < cols) {
              store_pixel<scalar_t>(scratch.data() + (sy * cols + sx) * L, out, count);
            } else {
              std::fill_n(out, count, scalar_t(0));
            }
          }
        }
      }
    }
  });
}

at::Tensor conv3x3_max_pool2x2_input_grad_cpu(const at::Tensor& grad, const at::Tensor& argmax,
                                              const at::Tensor& weight, int64_t pad_h, int64_t pad_w, int64_t height,
                                              int64_t width) {
  check_conv3x3_max_pool2x2_input_grad(grad, argmax, weight, pad_h, pad_w, height, width, c10::kCPU);
  const at::Tensor g = grad.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor k = argmax.contiguous(at::MemoryFormat::ChannelsLast);
  const PooledGeometry p{g.size(0), g.size(1), weight.size(1), g.size(2), g.size(3), pad_h, pad_w, height, width};
  at::Tensor grad_in = at::empty({p.n, p.ic, height, width}, g.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (grad_in.numel() == 0) return grad_in;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "conv3x3_max_pool2x2_input_grad",
                                  [&] { pooled_conv_input_grad_kernel<scalar_t>(g, k, weight, p, grad_in); });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(advprune, CPU, m) { m.impl("conv3x3_max_pool2x2_input_grad", &conv3x3_max_pool2x2_input_grad_cpu); }

}  // namespace advprune::cpu

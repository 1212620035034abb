// The row loops of 2x2 max pooling with stride 2 over channels_last rows in opmath, shared by the pooling
// kernels (max_pool.cpp) and the small CNN's fused first block (one_channel_conv.cpp): max_pool2d's values,
// window positions and NaN rule (a NaN wins; among equal values the first in row-major order).
#pragma once

#include "vec_math.h"

#include <algorithm>

namespace advprune::cpu {

// The window positions between uint8 and opmath values: a plain cast the compiler vectorises
// (at::vec::convert's generic path, which these types take, runs several times slower).
template <typename From, typename To>
inline void cast_codes(const From* from, To* to, int64_t n) {
  for (int64_t i = 0; i < n; ++i) to[i] = static_cast<To>(from[i]);
}

// f(j, ch, count) for each pooled pixel j < ow of a row and each chunk of at most `lanes` of its c channels.
template <typename F>
inline void for_each_pixel_chunk(int64_t ow, int64_t c, int64_t lanes, const F& f) {
  for (int64_t j = 0; j < ow; ++j) {
    for (int64_t ch = 0; ch < c; ch += lanes) f(j, ch, std::min<int64_t>(lanes, c - ch));
  }
}

// The maximum of a 2x2 window's four candidates (in window order: top left, top right, bottom left, bottom
// right) under max_pool2d's rule, in its order (take v when v > max or v is NaN), and its position as a value.
template <typename A>
inline void window_max(const Vec<A> (&candidates)[4], Vec<A>& max, Vec<A>& code) {
  using V = Vec<A>;
  max = candidates[0];
  code = V(A(0));
  for (int i = 1; i < 4; ++i) {
    const V take = (candidates[i] > max) | candidates[i].isnan();
    max = V::blendv(max, candidates[i], take);
    code = V::blendv(code, V(A(i)), take);
  }
}

// Pools two input rows (top, bottom: [2 * ow or more pixels, c]) into ow pixels: the maxima into out, each
// one's window position (dy * 2 + dx) as an opmath value into codes.
template <typename A>
void pool_row(const A* top, const A* bottom, int64_t ow, int64_t c, A* out, A* codes) {
  using V = Vec<A>;
  for_each_pixel_chunk(ow, c, V::size(), [&](int64_t j, int64_t ch, int64_t count) {
    const int64_t at = 2 * j * c + ch;
    const V candidates[4] = {V::loadu(top + at, count), V::loadu(top + at + c, count), V::loadu(bottom + at, count),
                             V::loadu(bottom + at + c, count)};
    V m, code;
    window_max(candidates, m, code);
    m.store(out + j * c + ch, count);
    code.store(codes + j * c + ch, count);
  });
}

// The backward of pool_row: each pooled gradient to its window's winner in the two input rows, +0.0 at the
// other positions (as max_pool2d's 0 + g); a code of no position (4: the fused first block's ReLU zeroed the
// window) passes nothing. The columns past 2 * ow up to `width` are set to 0.
template <typename A>
void unpool_row(const A* grad, const A* codes, int64_t ow, int64_t c, int64_t width, A* top, A* bottom) {
  using V = Vec<A>;
  A* rows[2] = {top, bottom};
  for_each_pixel_chunk(ow, c, V::size(), [&](int64_t j, int64_t ch, int64_t count) {
    const V value = V::loadu(grad + j * c + ch, count), code = V::loadu(codes + j * c + ch, count);
    for (int dy = 0; dy < 2; ++dy) {
      for (int dx = 0; dx < 2; ++dx) {
        V::blendv(V(A(0)), value, code == V(A(dy * 2 + dx))).store(rows[dy] + (2 * j + dx) * c + ch, count);
      }
    }
  });
  for (A* r : rows) std::fill(r + 2 * ow * c, r + width * c, A(0));  // the odd last column
}

}  // namespace advprune::cpu

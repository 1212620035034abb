// at::vec::Vectorized versions of the math primitives, declared before the
// shared math header so that its generic formulas run on whole vectors, plus
// the loops the CPU kernels share (row buffers, masked tails, conversions).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <c10/macros/Macros.h>

#include <type_traits>

namespace advprune::math {

template <typename T>
using Vec = at::vec::Vectorized<T>;

#if defined(CPU_CAPABILITY_AVX2)
// exp of 8 floats with the Cephes expf polynomial (relative error about 2e-7,
// 2 ulp): half the cost of Sleef's call, which dominates the scoring kernels.
// Inputs are clamped to [-87.3, 88.4]: below, the result is 1e-38 instead of a
// denormal or 0 (the kernels only take exp of x - max <= 0, where that is
// noise); NaN stays NaN.
C10_ALWAYS_INLINE Vec<float> exp_avx2(const Vec<float>& v) {
  const __m256 x_in = v;
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365478515625f);
  __m256 x = _mm256_min_ps(x_in, hi);
  x = _mm256_max_ps(x, lo);
  // n = round(x / ln 2); r = x - n ln 2, in two parts for precision
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 r = _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n));
  return _mm256_blendv_ps(r, x_in, _mm256_cmp_ps(x_in, x_in, _CMP_UNORD_Q));  // NaN in, NaN out
}
C10_ALWAYS_INLINE Vec<float> exponential(const Vec<float>& x) { return exp_avx2(x); }
#else
inline Vec<float> exponential(const Vec<float>& x) { return x.exp(); }
#endif
inline Vec<double> exponential(const Vec<double>& x) { return x.exp(); }

#define ADVPRUNE_VEC_PRIMITIVES(T)                                                  \
  inline Vec<T> maximum(const Vec<T>& a, const Vec<T>& b) {                         \
    return at::vec::maximum(a, b);                                                  \
  }                                                                                 \
  inline Vec<T> minimum(const Vec<T>& a, const Vec<T>& b) {                         \
    return at::vec::minimum(a, b);                                                  \
  }                                                                                 \
  inline Vec<T> sign_or_zero(const Vec<T>& g) {                                     \
    const Vec<T> zero(T(0));                                                        \
    const Vec<T> one(T(1));                                                         \
    return ((g > zero) & one) - ((g < zero) & one);                                 \
  }                                                                                 \
  inline Vec<T> zero_if_nan(const Vec<T>& g) { return g & (g == g); }               \
  inline Vec<T> expm1_(const Vec<T>& x) { return x.expm1(); }                       \
  inline Vec<T> log1p_(const Vec<T>& x) { return x.log1p(); }                       \
  inline Vec<T> sqrt_(const Vec<T>& x) { return x.sqrt(); }

ADVPRUNE_VEC_PRIMITIVES(float)
ADVPRUNE_VEC_PRIMITIVES(double)
#undef ADVPRUNE_VEC_PRIMITIVES

}  // namespace advprune::math

#include <advprune/math.h>

namespace advprune::cpu {

using math::Vec;

// Lanes [0, count) of b added onto a; the others keep a (for masked tails).
template <typename A>
inline Vec<A> add_first(const Vec<A>& a, const Vec<A>& b, int64_t count) {
  return count == Vec<A>::size() ? a + b : Vec<A>::set(a, a + b, count);
}

template <typename A>
inline A lane_sum(const Vec<A>& v) {
  return at::vec::vec_reduce_all<A>([](Vec<A>& x, Vec<A>& y) { return x + y; }, v);
}

// max over data[0, n); -inf for an empty range.
template <typename A>
inline A range_max(const A* data, int64_t n) {
  if (n <= 0) return -std::numeric_limits<A>::infinity();
  return at::vec::reduce_all<A>([](Vec<A>& x, Vec<A>& y) { return at::vec::maximum(x, y); }, data,
                                n);
}

// Calls f(v0, v1, v2, count) over [0, n) for three arrays of A in vector chunks;
// on the tail chunk count < Vec<A>::size() and the lanes from count on are 0.
template <typename A, typename F>
inline void for_each_chunk3(const A* a, const A* b, const A* c, int64_t n, const F& f) {
  constexpr int64_t W = Vec<A>::size();
  int64_t i = 0;
  for (; i + W <= n; i += W) f(Vec<A>::loadu(a + i), Vec<A>::loadu(b + i), Vec<A>::loadu(c + i), W, i);
  if (i < n) {
    const int64_t r = n - i;
    f(Vec<A>::loadu(a + i, r), Vec<A>::loadu(b + i, r), Vec<A>::loadu(c + i, r), r, i);
  }
}

template <typename A, typename F>
inline void for_each_chunk2(const A* a, const A* b, int64_t n, const F& f) {
  constexpr int64_t W = Vec<A>::size();
  int64_t i = 0;
  for (; i + W <= n; i += W) f(Vec<A>::loadu(a + i), Vec<A>::loadu(b + i), W, i);
  if (i < n) {
    const int64_t r = n - i;
    f(Vec<A>::loadu(a + i, r), Vec<A>::loadu(b + i, r), r, i);
  }
}

// A view of n elements of scalar_t as opmath values: the data itself when the
// types agree, otherwise a converted copy in the caller's buffer.
template <typename scalar_t>
inline const at::opmath_type<scalar_t>* as_opmath(const scalar_t* data, int64_t n,
                                                  at::opmath_type<scalar_t>* buffer) {
  if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
    return data;
  } else {
    at::vec::convert(data, buffer, n);
    return buffer;
  }
}

// Stores n opmath values into scalar_t output.
template <typename scalar_t>
inline void store_from_opmath(const at::opmath_type<scalar_t>* values, scalar_t* out, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
    std::copy(values, values + n, out);
  } else {
    at::vec::convert(values, out, n);
  }
}

}  // namespace advprune::cpu

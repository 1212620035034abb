// Shared math of every advprune kernel.
//
// Each function here is C10_HOST_DEVICE and generic in its value type T, so the
// CPU kernels (scalar and at::vec::Vectorized, see cpu/vec_math.h), the CUDA
// kernels and the C++ unit tests all run the same formulas. The
// primitives differ per type: maximum, minimum and sign_or_zero; their scalar
// primitives (maximum, minimum, sign_or_zero, zero_if_nan, exponential, expm1_,
// log1p_, sqrt_) have
// scalar versions below and vector ones in cpu/vec_math.h (included first).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace advprune::math {

// ---------------------------------------------------------------- primitives

// NaN-propagating max/min, the same semantics as at::vec::maximum/minimum.
template <typename T>
C10_HOST_DEVICE inline T maximum(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
}

template <typename T>
C10_HOST_DEVICE inline T minimum(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (a < b ? a : b));
}

// sign(g) with NaN counted as 0: a NaN gradient entry takes no step.
template <typename T>
C10_HOST_DEVICE inline T sign_or_zero(T g) {
  return g > T(0) ? T(1) : (g < T(0) ? T(-1) : T(0));
}

// g with NaN replaced by 0 (for the l2 step and its norm).
template <typename T>
C10_HOST_DEVICE inline T zero_if_nan(T g) {
  return (g != g) ? T(0) : g;
}

template <typename T>
C10_HOST_DEVICE inline T exponential(T x) {
  return std::exp(x);
}

template <typename T>
C10_HOST_DEVICE inline T expm1_(T x) {
  return std::expm1(x);
}

template <typename T>
C10_HOST_DEVICE inline T log1p_(T x) {
  return std::log1p(x);
}

template <typename T>
C10_HOST_DEVICE inline T sqrt_(T x) {
  return std::sqrt(x);
}

template <typename T>
C10_HOST_DEVICE inline T clamp(T v, T lo, T hi) {
  return minimum(maximum(v, lo), hi);
}

// ------------------------------------------------------------- linf PGD step

// Projection onto the linf ball of radius eps around x_nat, then the clip range.
template <typename T>
C10_HOST_DEVICE inline T project_linf(T x, T x_nat, T eps, T lo, T hi) {
  return clamp(clamp(x, x_nat - eps, x_nat + eps), lo, hi);
}

// One signed-gradient ascent step followed by the projection.
template <typename T>
C10_HOST_DEVICE inline T pgd_step_linf(T x, T g, T x_nat, T step, T eps, T lo, T hi) {
  return project_linf(x + step * sign_or_zero(g), x_nat, eps, lo, hi);
}

// --------------------------------------------------------------- l2 PGD step
//
// For sample i the step is x + c * g with c = step / max(||g||, 1e-12), the new
// delta is d = x - x_nat + c * g, rescaled by min(1, eps / ||d||). Both norms come
// from three sums gathered in a single pass over the sample:
//   gg = sum g^2, dd = sum (x - x_nat)^2, dg = sum (x - x_nat) * g
// since ||d||^2 = dd + 2 c dg + c^2 gg. NaN gradient entries count as 0.

template <typename T>
struct L2Sums {
  T gg;
  T dd;
  T dg;
};

template <typename T>
C10_HOST_DEVICE inline void l2_accumulate(T& gg, T& dd, T& dg, T x, T g, T x_nat) {
  const T gz = zero_if_nan(g);
  const T d = x - x_nat;
  gg = gg + gz * gz;
  dd = dd + d * d;
  dg = dg + d * gz;
}

template <typename A>
C10_HOST_DEVICE inline L2Sums<A> l2_merge(L2Sums<A> a, L2Sums<A> b) {
  return {a.gg + b.gg, a.dd + b.dd, a.dg + b.dg};
}

// Per-sample coefficients: x_new = clamp(x_nat + delta_scale * (x - x_nat + grad_scale * g)).
template <typename A>
struct L2Coefficients {
  A grad_scale;
  A delta_scale;
};

template <typename A>
C10_HOST_DEVICE inline L2Coefficients<A> l2_coefficients(L2Sums<A> s, A step, A eps) {
  const A grad_norm = std::sqrt(s.gg);
  const A c = step / (grad_norm > A(1e-12) ? grad_norm : A(1e-12));
  A d2 = s.dd + A(2) * c * s.dg + c * c * s.gg;
  d2 = d2 > A(0) ? d2 : A(0);
  const A delta_norm = std::sqrt(d2);
  const A scale = delta_norm > eps ? eps / delta_norm : A(1);
  return {c, scale};
}

template <typename T>
C10_HOST_DEVICE inline T l2_apply(T x, T g, T x_nat, T grad_scale, T delta_scale, T lo, T hi) {
  const T delta = (x - x_nat + grad_scale * zero_if_nan(g)) * delta_scale;
  return clamp(x_nat + delta, lo, hi);
}

// ------------------------------------------------------------ per-row scores
//
// Scores of one row of logits z with label y, in two passes over the row:
// RowMax (the max, its first index, the max over j != y, z_y), then RowSums of
// e_j = exp(z_j - max) kept apart for j == y, so that small quantities (the
// loss and EL2N of a confidently right sample) never come from a difference.

template <typename A>
struct RowMax {
  A max;
  int64_t argmax;
  A other_max;  // max over j != y
  A z_y;
};

template <typename A>
C10_HOST_DEVICE inline RowMax<A> row_max_init() {
  return {-INFINITY, INT64_MAX, -INFINITY, -INFINITY};
}

template <typename A>
C10_HOST_DEVICE inline void row_max_update(RowMax<A>& r, A z, int64_t j, int64_t y) {
  // Strictly greater keeps the first index of the maximum, as torch.argmax does.
  // NaN logits are not ordered: they give NaN scores, which is the signal to see.
  if (r.argmax == INT64_MAX || z > r.max) {
    r.max = z;
    r.argmax = j;
  }
  if (j == y) {
    r.z_y = z;
  } else {
    r.other_max = z > r.other_max ? z : r.other_max;
  }
}

// Merges partial results over disjoint index sets, in any order.
template <typename A>
C10_HOST_DEVICE inline RowMax<A> row_max_merge(RowMax<A> a, RowMax<A> b) {
  const bool take_b = b.argmax != INT64_MAX &&
      (a.argmax == INT64_MAX || b.max > a.max || (b.max == a.max && b.argmax < a.argmax));
  RowMax<A> r;
  r.max = take_b ? b.max : a.max;
  r.argmax = take_b ? b.argmax : a.argmax;
  r.other_max = b.other_max > a.other_max ? b.other_max : a.other_max;
  r.z_y = b.z_y > a.z_y ? b.z_y : a.z_y;  // only one side has seen y, the other holds -inf
  return r;
}

template <typename A>
struct RowSums {
  A sum_exp;        // sum over j != y of e_j
  A sum_exp_sq;     // sum over j != y of e_j^2
  A sum_exp_shift;  // sum over j != y of e_j * (z_j - max)
};

// Adds e = exp(t) with t = z - max (T may be a vector of lanes).
template <typename T>
C10_HOST_DEVICE inline void row_sums_add(T& sum_exp, T& sum_exp_sq, T& sum_exp_shift, T e, T t) {
  sum_exp = sum_exp + e;
  sum_exp_sq = sum_exp_sq + e * e;
  sum_exp_shift = sum_exp_shift + e * t;
}

template <typename A>
C10_HOST_DEVICE inline void row_sums_update(RowSums<A>& s, A z, A max) {
  const A t = z - max;
  row_sums_add(s.sum_exp, s.sum_exp_sq, s.sum_exp_shift, exponential(t), t);
}

template <typename A>
C10_HOST_DEVICE inline RowSums<A> row_sums_merge(RowSums<A> a, RowSums<A> b) {
  return {a.sum_exp + b.sum_exp, a.sum_exp_sq + b.sum_exp_sq, a.sum_exp_shift + b.sum_exp_shift};
}

// The scores from the row statistics (T may be a vector of rows, one per lane):
// t_y = z_y - max, e_y = exp(t_y), total = e_y + sum_exp, and
// log(total) = log1p(expm1(t_y) + sum_exp), which keeps the tiny loss of a
// confidently right row (t_y = 0) exact.
template <typename T>
C10_HOST_DEVICE inline void scores_from_sums(T z_y, T max, T other_max, T sum_exp, T sum_exp_sq,
                                             T sum_exp_shift, T& loss, T& margin, T& el2n,
                                             T& entropy, T& confidence) {
  const T t_y = z_y - max;
  const T e_y = exponential(t_y);  // not expm1 + 1: that loses a small e_y
  const T total = e_y + sum_exp;
  const T log_total = log1p_(expm1_(t_y) + sum_exp);
  loss = log_total - t_y;
  margin = z_y - other_max;
  el2n = sqrt_(sum_exp * sum_exp + sum_exp_sq) / total;
  entropy = log_total - (sum_exp_shift + e_y * t_y) / total;
  confidence = e_y / total;
}

template <typename A>
struct Scores {
  A loss;
  A margin;
  A el2n;
  A entropy;
  A confidence;
  bool correct;
};

template <typename A>
C10_HOST_DEVICE inline Scores<A> row_scores(RowMax<A> m, RowSums<A> s, int64_t y) {
  Scores<A> r;
  scores_from_sums(m.z_y, m.max, m.other_max, s.sum_exp, s.sum_exp_sq, s.sum_exp_shift, r.loss,
                   r.margin, r.el2n, r.entropy, r.confidence);
  r.correct = (m.argmax == y);
  return r;
}

// ---------------------------------------------------------------- KL of rows
//
// KL(softmax(p) || softmax(q)) of one row from two passes: the maxima, then
//   sp = sum exp(p - mp), sq = sum exp(q - mq), a = sum exp(p - mp) * (p - q)
// KL = a / sp - (mp + log sp) + (mq + log sq).

template <typename A>
struct KlSums {
  A sp;
  A sq;
  A a;
};

// T may be a vector of lanes.
template <typename T>
C10_HOST_DEVICE inline void kl_add(T& sp, T& sq, T& a, T p, T q, T mp, T mq) {
  const T ep = exponential(p - mp);
  sp = sp + ep;
  sq = sq + exponential(q - mq);
  a = a + ep * (p - q);
}

template <typename A>
C10_HOST_DEVICE inline void kl_update(KlSums<A>& s, A p, A q, A mp, A mq) {
  kl_add(s.sp, s.sq, s.a, p, q, mp, mq);
}

template <typename A>
C10_HOST_DEVICE inline KlSums<A> kl_merge(KlSums<A> x, KlSums<A> y) {
  return {x.sp + y.sp, x.sq + y.sq, x.a + y.a};
}

// lse_p - lse_q, the shift between the two log-softmaxes.
template <typename A>
C10_HOST_DEVICE inline A kl_lse_gap(KlSums<A> s, A mp, A mq) {
  return (mp - mq) + std::log(s.sp / s.sq);
}

template <typename A>
C10_HOST_DEVICE inline A kl_value(KlSums<A> s, A mp, A mq) {
  return s.a / s.sp - kl_lse_gap(s, mp, mq);
}

// Gradients of g * KL with respect to p_k and q_k:
//   dp_k = g * P_k * (p_k - q_k - (lse_p - lse_q) - KL),  dq_k = g * (Q_k - P_k).
// T may be a vector of lanes (all arguments then broadcast vectors).
template <typename T>
C10_HOST_DEVICE inline void kl_grad(T g, T p, T q, T mp, T mq, T sp, T sq, T lse_gap, T kl,
                                    T& dp, T& dq) {
  const T P = exponential(p - mp) / sp;
  const T Q = exponential(q - mq) / sq;
  dp = g * P * ((p - q) - lse_gap - kl);
  dq = g * (Q - P);
}

}  // namespace advprune::math

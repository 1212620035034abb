// Small CUDA helpers of the advprune kernels: launch sizes, aligned vector
// packs, warp and block reductions. The math itself is in advprune/math.h.
#pragma once

// c10's CUDA headers only: ATen/cuda/CUDAContext.h would pull in cuBLAS and
// cuSPARSE headers, which a minimal toolkit does not have.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <atomic>
#include <cstdint>

namespace advprune::cuda {

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

constexpr int kWarp = 32;

// VEC elements moved by one 16-byte (or smaller) load or store.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Elements per 16-byte pack when every pointer is 16-byte aligned, else 1.
template <typename T>
inline int pack_width(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return 1;
  }
  return static_cast<int>(16 / sizeof(T));
}

// The current device's multiprocessor count, queried once per device (a driver call per launch otherwise).
inline int multiprocessor_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> counts[kMaxDevices] = {};  // 0: not queried yet
  const int device = c10::cuda::current_device();
  int sms = device < kMaxDevices ? counts[device].load(std::memory_order_relaxed) : 0;
  if (sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (device < kMaxDevices) counts[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

// Enough blocks to fill the device a few times over; kernels grid-stride past that.
inline int64_t grid_for(int64_t work_items, int threads) {
  const int sms = multiprocessor_count();
  const int64_t wanted = (work_items + threads - 1) / threads;
  return std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t{sms} * 16));
}

template <typename T>
__device__ inline T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum and max over each group of LANES lanes (a power of two, at most a warp), valid in the group's
// first lane; the whole warp must call them. The max propagates NaN, as the CPU kernels' maxima do.
template <int LANES, typename T>
__device__ inline T group_sum(T v) {
#pragma unroll
  for (int offset = LANES / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset, LANES);
  return v;
}

template <int LANES, typename T>
__device__ inline T group_max(T v) {
#pragma unroll
  for (int offset = LANES / 2; offset > 0; offset /= 2) {
    const T o = __shfl_down_sync(0xffffffffu, v, offset, LANES);
    v = (o > v || o != o) ? o : v;  // a NaN on either side stays
  }
  return v;
}

// The lanes a row takes: the power of two at or above C / 16, between 1 and a warp, so that each lane
// takes up to 16 of the row's elements and a warp serves 32 / LANES rows (C = 10: a lane a row; C = 100:
// 8 lanes; a whole warp from C = 257 on). Row kernels are limited by the instructions each row costs, not
// by bytes: the group's shuffle merges and the row's epilogue are paid once per group, so fewer lanes a
// row spend fewer instructions on the same bytes (the third H200 check: 16 lanes a row of 10 took 13.5 us
// for 50,000 rows, a copy of the same bytes 1.9 us).
inline int lanes_for(int64_t c) {
  int lanes = 1;
  while (lanes < kWarp && int64_t{lanes} * 16 < c) lanes *= 2;
  return lanes;
}

// Sum over the block, valid in thread 0. blockDim.x must be a multiple of 32, at most 1024.
template <typename T>
__device__ inline T block_sum(T v) {
  __shared__ T partial[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  v = (threadIdx.x < warps) ? partial[threadIdx.x] : T(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

}  // namespace advprune::cuda

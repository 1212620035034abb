// Numbers, shapes and devices as text for error messages, made without std::ostream.
//
// Why: in the extension built on a GPU machine (g++ 13.3, PyTorch 2.11) a refused call crashed while
// TORCH_CHECK streamed a number into its message (std::ostream::_M_insert<long>, inside this module),
// although the strings before it went through. Messages therefore pass TORCH_CHECK strings only; the
// numbers are printed here with snprintf and std::to_string, which need no stream or locale facet,
// exactly as the stream would print them (%g for doubles, "[2, 3]" for shapes).
#pragma once

#include <c10/core/Device.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace advprune {

inline std::string text(int64_t value) { return std::to_string(value); }

inline std::string text(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", value);
  return buffer;
}

inline std::string text(c10::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

inline std::string text(const c10::Device& device) { return device.str(); }

}  // namespace advprune

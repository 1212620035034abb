// Argument checks and operand layout shared by the CPU and CUDA kernels.
//
// Every op validates all of its inputs here before it writes anything, and
// raises ValueError / TypeError (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE) with the
// received shapes, dtypes and values in the message.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "text.h"

#include <optional>

namespace advprune {

enum class Norm { Linf, L2 };

// "linf" or "l2"; anything else is a ValueError naming what was received.
Norm parse_norm(c10::string_view norm, const char* op);

// Checks a pgd_step_ / project_ call (grad and step_size are absent for
// project_) for the kernel of the given device type; returns the norm.
Norm check_pgd_call(const char* op, c10::DeviceType kernel_device, const at::Tensor& x_adv,
                    const std::optional<at::Tensor>& grad, const at::Tensor& x_nat, double eps,
                    std::optional<double> step_size, c10::string_view norm, double clip_min,
                    double clip_max);

// The PGD operands in one dense layout in which each sample (slice along dim 0)
// is one contiguous block of row_size elements. When x_adv itself has such a
// layout, x aliases it and the kernel writes in place; otherwise x is a
// contiguous copy that finish() copies back.
struct PgdOperands {
  at::Tensor x;
  at::Tensor grad;  // undefined for project_
  at::Tensor x_nat;
  int64_t rows = 0;
  int64_t row_size = 0;
  bool write_back = false;
};

PgdOperands prepare_pgd(const at::Tensor& x_adv, const std::optional<at::Tensor>& grad,
                        const at::Tensor& x_nat);

void finish_pgd(const at::Tensor& x_adv, const PgdOperands& operands);

// logits [N, C] floating with C >= 2, labels int64 [N] in [0, C), same device.
void check_scores_args(const at::Tensor& logits, const at::Tensor& labels, bool check_labels);

// Two floating [N, C] logit tensors of the same shape, dtype and device, C >= 2.
void check_kl_args(const char* op, const at::Tensor& logits_p, const at::Tensor& logits_q);

// A floating [N, C, H, W] tensor with H, W >= 2 on the kernel's device.
void check_max_pool2x2_input(const at::Tensor& x, c10::DeviceType kernel_device);

// grad [N, C, H / 2, W / 2] floating and argmax uint8 of that shape, both on the kernel's device.
void check_max_pool2x2_backward(const at::Tensor& grad, const at::Tensor& argmax, int64_t height,
                                int64_t width, c10::DeviceType kernel_device);

// grad [N, C, OH, OW] and weight [C, 1, KH, KW], both floating of one dtype, on the kernel's device; padding
// >= 0 and an input of at least 1x1 (OH - 2 * pad_h + KH - 1 rows, likewise columns).
void check_one_channel_conv_input_grad(const at::Tensor& grad, const at::Tensor& weight, int64_t pad_h,
                                       int64_t pad_w, c10::DeviceType kernel_device);

// x [N, 1, H, W], weight [C, 1, KH, KW] and bias [C] (optional), floating of one dtype, on the kernel's device;
// padding >= 0 and a convolution output of at least 2x2 to pool.
void check_one_channel_conv_max_pool2x2(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, int64_t pad_h, int64_t pad_w,
                                        c10::DeviceType kernel_device);

// grad [N, C, PH, PW] floating, argmax uint8 of its shape, weight [C, 1, KH, KW] of its dtype, on the kernel's
// device; [PH, PW] the pooled convolution output of a height x width input with that kernel and padding.
void check_one_channel_conv_max_pool2x2_input_grad(const at::Tensor& grad, const at::Tensor& argmax,
                                                   const at::Tensor& weight, int64_t pad_h, int64_t pad_w,
                                                   int64_t height, int64_t width, c10::DeviceType kernel_device);

// grad [N, C_out, PH, PW] floating, argmax uint8 of its shape, weight [C_out, C_in, 3, 3] of its dtype, on the
// kernel's device; [PH, PW] the pooled output of a 3x3 convolution of a height x width input with that padding.
void check_conv3x3_max_pool2x2_input_grad(const at::Tensor& grad, const at::Tensor& argmax, const at::Tensor& weight,
                                          int64_t pad_h, int64_t pad_w, int64_t height, int64_t width,
                                          c10::DeviceType kernel_device);

}  // namespace advprune

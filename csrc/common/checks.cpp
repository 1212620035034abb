#include "checks.h"

#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

namespace advprune {
namespace {

// The dtype as Python spells it (torch.float32), so messages read the same from both sides.
std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_float_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.defined(), op, ": ", name, " is None; expected a tensor");
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, op, ": ", name,
                   " must be a dense (strided) tensor, got layout ", t.layout());
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": ", name,
                   " must be float32, float64, float16 or bfloat16, got ", dtype_name(t.scalar_type()));
}

void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x_adv) {
  check_float_tensor(op, name, t);
  TORCH_CHECK_VALUE(t.sizes() == x_adv.sizes(), op, ": ", name, " has shape ", text(t.sizes()),
                    " but x_adv has shape ", text(x_adv.sizes()), "; they must match");
  TORCH_CHECK_TYPE(t.scalar_type() == x_adv.scalar_type(), op, ": ", name, " has dtype ",
                   dtype_name(t.scalar_type()), " but x_adv has dtype ", dtype_name(x_adv.scalar_type()),
                   "; they must match");
  TORCH_CHECK_VALUE(t.device() == x_adv.device(), op, ": ", name, " is on ", text(t.device()),
                    " but x_adv is on ", text(x_adv.device()), "; they must be on the same device");
}

// Dense, with each slice along dim 0 one contiguous block.
bool is_sample_blocked(const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return false;
  if (t.dim() == 0 || t.size(0) <= 1) return true;
  return t.stride(0) == t.numel() / t.size(0);
}

at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) return t;
  return at::empty_strided(like.sizes(), like.strides(), t.options()).copy_(t);
}

}  // namespace

Norm parse_norm(c10::string_view norm, const char* op) {
  if (norm == "linf") return Norm::Linf;
  if (norm == "l2") return Norm::L2;
  TORCH_CHECK_VALUE(false, op, ": norm must be \"linf\" or \"l2\", got \"", std::string(norm), "\"");
}

Norm check_pgd_call(const char* op, c10::DeviceType kernel_device, const at::Tensor& x_adv,
                    const std::optional<at::Tensor>& grad, const at::Tensor& x_nat, double eps,
                    std::optional<double> step_size, c10::string_view norm, double clip_min,
                    double clip_max) {
  const Norm which = parse_norm(norm, op);
  check_float_tensor(op, "x_adv", x_adv);
  TORCH_CHECK_VALUE(x_adv.dim() >= 1, op,
                    ": x_adv must have a batch dimension (dim 0), got a 0-d tensor");
  if (grad.has_value()) check_like(op, "grad", *grad, x_adv);
  check_like(op, "x_nat", x_nat, x_adv);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", text(eps));
  if (step_size.has_value()) {
    TORCH_CHECK_VALUE(std::isfinite(*step_size) && *step_size >= 0, op,
                      ": step_size must be finite and >= 0, got ", text(*step_size));
  }
  TORCH_CHECK_VALUE(!std::isnan(clip_min) && !std::isnan(clip_max) && clip_min <= clip_max, op,
                    ": clip_min must be <= clip_max, got clip_min=", text(clip_min),
                    " and clip_max=", text(clip_max));
  TORCH_CHECK_VALUE(x_adv.device().type() == kernel_device, op, ": the ", text(c10::Device(kernel_device)),
                    " kernel got x_adv on ", text(x_adv.device()));
  return which;
}

PgdOperands prepare_pgd(const at::Tensor& x_adv, const std::optional<at::Tensor>& grad,
                        const at::Tensor& x_nat) {
  PgdOperands ops;
  ops.write_back = !is_sample_blocked(x_adv);
  ops.x = ops.write_back ? x_adv.contiguous() : x_adv;
  if (grad.has_value()) ops.grad = in_layout_of(*grad, ops.x);
  ops.x_nat = in_layout_of(x_nat, ops.x);
  ops.rows = ops.x.size(0);
  ops.row_size = ops.rows == 0 ? 0 : ops.x.numel() / ops.rows;
  return ops;
}

void finish_pgd(const at::Tensor& x_adv, const PgdOperands& operands) {
  if (operands.write_back) x_adv.copy_(operands.x);
}

void check_scores_args(const at::Tensor& logits, const at::Tensor& labels, bool check_labels) {
  constexpr const char* op = "advprune.sample_scores";
  check_float_tensor(op, "logits", logits);
  TORCH_CHECK_VALUE(logits.dim() == 2, op, ": logits must be 2-D [N, C], got shape ",
                    text(logits.sizes()));
  TORCH_CHECK_VALUE(logits.size(1) >= 2, op, ": logits need at least 2 classes, got shape ",
                    text(logits.sizes()));
  TORCH_CHECK_TYPE(labels.defined(), op, ": labels is None; expected an int64 tensor");
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, op, ": labels must be int64, got ",
                   dtype_name(labels.scalar_type()));
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == logits.size(0), op,
                    ": labels must have shape [", text(logits.size(0)), "] to match logits ",
                    text(logits.sizes()), ", got ", text(labels.sizes()));
  TORCH_CHECK_VALUE(labels.device() == logits.device(), op, ": labels are on ", text(labels.device()),
                    " but logits are on ", text(logits.device()));
  if (check_labels && labels.numel() > 0) {
    // One small reduction and one copy to the host (a device sync on CUDA) buy a clear error instead
    // of a device-side assert that would end the CUDA context.
    auto [lo, hi] = at::aminmax(labels);
    const at::Tensor range = at::stack({lo, hi}).cpu();
    const int64_t min_label = range.const_data_ptr<int64_t>()[0];
    const int64_t max_label = range.const_data_ptr<int64_t>()[1];
    TORCH_CHECK_VALUE(min_label >= 0 && max_label < logits.size(1), op,
                      ": labels must lie in [0, ", text(logits.size(1)), "), got values from ",
                      text(min_label), " to ", text(max_label));
  }
}

void check_kl_args(const char* op, const at::Tensor& logits_p, const at::Tensor& logits_q) {
  check_float_tensor(op, "logits_p", logits_p);
  check_float_tensor(op, "logits_q", logits_q);
  TORCH_CHECK_VALUE(logits_p.dim() == 2, op, ": logits_p must be 2-D [N, C], got shape ",
                    text(logits_p.sizes()));
  TORCH_CHECK_VALUE(logits_p.size(1) >= 2, op, ": logits need at least 2 classes, got shape ",
                    text(logits_p.sizes()));
  TORCH_CHECK_VALUE(logits_q.sizes() == logits_p.sizes(), op, ": logits_q has shape ",
                    text(logits_q.sizes()), " but logits_p has shape ", text(logits_p.sizes()));
  TORCH_CHECK_TYPE(logits_q.scalar_type() == logits_p.scalar_type(), op, ": logits_q has dtype ",
                   dtype_name(logits_q.scalar_type()), " but logits_p has dtype ",
                   dtype_name(logits_p.scalar_type()));
  TORCH_CHECK_VALUE(logits_q.device() == logits_p.device(), op, ": logits_q is on ",
                    text(logits_q.device()), " but logits_p is on ", text(logits_p.device()));
}

void check_max_pool2x2_input(const at::Tensor& x, c10::DeviceType kernel_device) {
  const char* op = "advprune.max_pool2x2";
  check_float_tensor(op, "x", x);
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got shape ", text(x.sizes()));
  TORCH_CHECK_VALUE(x.size(2) >= 2 && x.size(3) >= 2, op, ": x's images must be at least 2x2 to pool, got shape ",
                    text(x.sizes()));
  TORCH_CHECK_VALUE(x.device().type() == kernel_device, op, ": the ", text(c10::Device(kernel_device)),
                    " kernel got x on ", text(x.device()));
}

void check_max_pool2x2_backward(const at::Tensor& grad, const at::Tensor& argmax, int64_t height,
                                int64_t width, c10::DeviceType kernel_device) {
  const char* op = "advprune.max_pool2x2_backward";
  check_float_tensor(op, "grad", grad);
  TORCH_CHECK_VALUE(grad.dim() == 4, op, ": grad must be 4-D [N, C, H / 2, W / 2], got shape ",
                    text(grad.sizes()));
  TORCH_CHECK_VALUE(height >= 0 && width >= 0 && grad.size(2) == height / 2 && grad.size(3) == width / 2, op,
                    ": grad has shape ", text(grad.sizes()), ", which is not the pooled shape of an input of ",
                    text(height), "x", text(width));
  TORCH_CHECK_TYPE(argmax.defined() && argmax.scalar_type() == at::kByte, op, ": argmax must be uint8");
  TORCH_CHECK_VALUE(argmax.sizes() == grad.sizes(), op, ": argmax has shape ", text(argmax.sizes()),
                    " but grad has shape ", text(grad.sizes()));
  TORCH_CHECK_VALUE(grad.device().type() == kernel_device && argmax.device() == grad.device(), op, ": the ",
                    text(c10::Device(kernel_device)), " kernel got grad on ", text(grad.device()),
                    " and argmax on ", text(argmax.device()));
}

namespace {

// weight [C, 1, KH, KW] floating, of `like`'s dtype and device, with C = channels where channels >= 0; padding >= 0.
void check_one_channel_weight(const char* op, const at::Tensor& weight, int64_t channels, const char* like_name,
                              const at::Tensor& like, int64_t pad_h, int64_t pad_w) {
  check_float_tensor(op, "weight", weight);
  const std::string wanted_c = channels < 0 ? "" : " with " + std::string(like_name) + "'s C = " + text(channels);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == 1 && (channels < 0 || weight.size(0) == channels), op,
                    ": weight must be [C, 1, KH, KW]", wanted_c, ", got shape ", text(weight.sizes()));
  TORCH_CHECK_TYPE(weight.scalar_type() == like.scalar_type(), op, ": weight has dtype ",
                   dtype_name(weight.scalar_type()), " but ", like_name, " has dtype ", dtype_name(like.scalar_type()),
                   "; they must match");
  TORCH_CHECK_VALUE(weight.device() == like.device(), op, ": weight is on ", text(weight.device()), " but ",
                    like_name, " on ", text(like.device()));
  TORCH_CHECK_VALUE(pad_h >= 0 && pad_w >= 0, op, ": padding must be >= 0, got (", text(pad_h), ", ",
                    text(pad_w), ")");
}

void check_device(const char* op, const char* name, const at::Tensor& t, c10::DeviceType kernel_device) {
  TORCH_CHECK_VALUE(t.device().type() == kernel_device, op, ": the ", text(c10::Device(kernel_device)), " kernel got ",
                    name, " on ", text(t.device()));
}

}  // namespace

void check_one_channel_conv_input_grad(const at::Tensor& grad, const at::Tensor& weight, int64_t pad_h,
                                       int64_t pad_w, c10::DeviceType kernel_device) {
  const char* op = "advprune.one_channel_conv_input_grad";
  check_float_tensor(op, "grad", grad);
  TORCH_CHECK_VALUE(grad.dim() == 4, op, ": grad must be 4-D [N, C, OH, OW], got shape ", text(grad.sizes()));
  check_one_channel_weight(op, weight, grad.size(1), "grad", grad, pad_h, pad_w);
  const int64_t height = grad.size(2) - 2 * pad_h + weight.size(2) - 1;
  const int64_t width = grad.size(3) - 2 * pad_w + weight.size(3) - 1;
  TORCH_CHECK_VALUE(height >= 1 && width >= 1, op, ": grad of shape ", text(grad.sizes()), ", a ",
                    text(weight.size(2)), "x", text(weight.size(3)), " kernel and padding (", text(pad_h), ", ",
                    text(pad_w), ") imply an input of ", text(height), "x", text(width));
  check_device(op, "grad", grad, kernel_device);
}

void check_one_channel_conv_max_pool2x2(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, int64_t pad_h, int64_t pad_w,
                                        c10::DeviceType kernel_device) {
  const char* op = "advprune.one_channel_conv_max_pool2x2";
  check_float_tensor(op, "x", x);
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) == 1, op, ": x must be [N, 1, H, W] (one channel), got shape ",
                    text(x.sizes()));
  check_one_channel_weight(op, weight, -1, "x", x, pad_h, pad_w);
  if (bias.has_value() && bias->defined()) {
    check_float_tensor(op, "bias", *bias);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [C] with C = ",
                      text(weight.size(0)), ", got shape ", text(bias->sizes()));
    TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(), op,
                     ": bias must have x's dtype and device (", dtype_name(x.scalar_type()), ", ",
                     text(x.device()), "), got ", dtype_name(bias->scalar_type()), " on ", text(bias->device()));
  }
  const int64_t out_h = x.size(2) + 2 * pad_h - weight.size(2) + 1;
  const int64_t out_w = x.size(3) + 2 * pad_w - weight.size(3) + 1;
  TORCH_CHECK_VALUE(out_h >= 2 && out_w >= 2, op, ": x of shape ", text(x.sizes()), ", a ", text(weight.size(2)),
                    "x", text(weight.size(3)), " kernel and padding (", text(pad_h), ", ", text(pad_w),
                    ") give a convolution output of ", text(out_h), "x", text(out_w), "; pooling needs 2x2 or more");
  check_device(op, "x", x, kernel_device);
}

namespace {

// grad [N, C, PH, PW] the pooled output of a KH x KW convolution (stride 1, this padding) of a height x width input;
// argmax uint8 of grad's shape and device; grad on the kernel's device. (The pooled input gradients' shared checks.)
void check_pooled_grad(const char* op, const at::Tensor& grad, const at::Tensor& argmax, int64_t kh, int64_t kw,
                       int64_t pad_h, int64_t pad_w, int64_t height, int64_t width, c10::DeviceType kernel_device) {
  const int64_t out_h = height + 2 * pad_h - kh + 1, out_w = width + 2 * pad_w - kw + 1;
  TORCH_CHECK_VALUE(height >= 1 && width >= 1 && out_h >= 2 && out_w >= 2 && grad.size(2) == out_h / 2 &&
                        grad.size(3) == out_w / 2,
                    op, ": grad has shape ", text(grad.sizes()), ", which is not the pooled convolution output (",
                    text(out_h), "x", text(out_w), " pooled to ", text(out_h / 2), "x", text(out_w / 2),
                    ") of an input of ", text(height), "x", text(width), " with a ", text(kh), "x", text(kw),
                    " kernel and this padding");
  TORCH_CHECK_TYPE(argmax.defined() && argmax.scalar_type() == at::kByte, op, ": argmax must be uint8");
  TORCH_CHECK_VALUE(argmax.sizes() == grad.sizes() && argmax.device() == grad.device(), op, ": argmax has shape ",
                    text(argmax.sizes()), " on ", text(argmax.device()), " but grad has shape ", text(grad.sizes()),
                    " on ", text(grad.device()));
  check_device(op, "grad", grad, kernel_device);
}

}  // namespace

void check_one_channel_conv_max_pool2x2_input_grad(const at::Tensor& grad, const at::Tensor& argmax,
                                                   const at::Tensor& weight, int64_t pad_h, int64_t pad_w,
                                                   int64_t height, int64_t width, c10::DeviceType kernel_device) {
  const char* op = "advprune.one_channel_conv_max_pool2x2_input_grad";
  check_float_tensor(op, "grad", grad);
  TORCH_CHECK_VALUE(grad.dim() == 4, op, ": grad must be 4-D [N, C, PH, PW], got shape ", text(grad.sizes()));
  check_one_channel_weight(op, weight, grad.size(1), "grad", grad, pad_h, pad_w);
  check_pooled_grad(op, grad, argmax, weight.size(2), weight.size(3), pad_h, pad_w, height, width, kernel_device);
}

void check_conv3x3_max_pool2x2_input_grad(const at::Tensor& grad, const at::Tensor& argmax, const at::Tensor& weight,
                                          int64_t pad_h, int64_t pad_w, int64_t height, int64_t width,
                                          c10::DeviceType kernel_device) {
  const char* op = "advprune.conv3x3_max_pool2x2_input_grad";
  check_float_tensor(op, "grad", grad);
  TORCH_CHECK_VALUE(grad.dim() == 4, op, ": grad must be 4-D [N, C_out, PH, PW], got shape ", text(grad.sizes()));
  check_float_tensor(op, "weight", weight);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == grad.size(1) && weight.size(2) == 3 && weight.size(3) == 3,
                    op, ": weight must be [C_out, C_in, 3, 3] with grad's C_out = ", text(grad.size(1)),
                    ", got shape ", text(weight.sizes()));
  TORCH_CHECK_TYPE(weight.scalar_type() == grad.scalar_type(), op, ": weight has dtype ",
                   dtype_name(weight.scalar_type()), " but grad has dtype ", dtype_name(grad.scalar_type()),
                   "; they must match");
  TORCH_CHECK_VALUE(weight.device() == grad.device(), op, ": weight is on ", text(weight.device()), " but grad on ",
                    text(grad.device()));
  TORCH_CHECK_VALUE(pad_h >= 0 && pad_w >= 0, op, ": padding must be >= 0, got (", text(pad_h), ", ", text(pad_w),
                    ")");
  check_pooled_grad(op, grad, argmax, 3, 3, pad_h, pad_w, height, width, kernel_device);
}

}  // namespace advprune

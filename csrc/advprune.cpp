// Op schemas of the advprune library and the Python module stub that lets
// `import advprune._C` load them (the kernels register themselves per device).
#include <torch/library.h>

#ifndef ADVPRUNE_NO_PYTHON  // the CMake build links the same sources into plain libtorch programs
#include <Python.h>

// An empty module: importing it runs the static registrations below.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif

TORCH_LIBRARY(advprune, m) {
  // In-place PGD update of x_adv (ascent step, projection, clip); returns nothing
  // so that torch.compile can functionalise it. NaN gradient entries count as 0.
  m.def(
      "pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_nat, *, float eps, float step_size, "
      "str norm=\"linf\", float clip_min=0., float clip_max=1.) -> ()");
  // In-place projection of x_adv onto the eps-ball around x_nat and the clip range.
  m.def(
      "project_(Tensor(a!) x_adv, Tensor x_nat, *, float eps, str norm=\"linf\", "
      "float clip_min=0., float clip_max=1.) -> ()");
  // Per-sample cross-entropy, margin, EL2N, entropy, confidence (float32) and correct (bool).
  // check_labels=False skips the label range check (a device sync on CUDA) for callers whose labels
  // are known to be valid; an out-of-range label then scores as no class: loss inf, correct false.
  m.def(
      "sample_scores(Tensor logits, Tensor labels, *, bool check_labels=True) -> (Tensor loss, "
      "Tensor margin, Tensor el2n, "
      "Tensor entropy, Tensor confidence, Tensor correct)");
  // Per-row KL(softmax(p) || softmax(q)) and its gradients to p and q.
  m.def("kl_rows(Tensor logits_p, Tensor logits_q) -> Tensor");
  m.def("kl_rows_backward(Tensor grad, Tensor logits_p, Tensor logits_q) -> (Tensor, Tensor)");
  // 2x2 max pooling, stride 2, of a [N, C, H, W] batch: the pooled values (channels_last) and each
  // one's window position as uint8 (dy * 2 + dx), which is all the backward needs. CPU only.
  m.def("max_pool2x2(Tensor x) -> (Tensor out, Tensor argmax)");
  m.def("max_pool2x2_backward(Tensor grad, Tensor argmax, int height, int width) -> Tensor");
  // The input gradient of a stride-1 convolution of a one-channel batch (conv2d(x [N, 1, H, W], weight
  // [C, 1, KH, KW], padding)): grad [N, C, OH, OW] in, [N, 1, H, W] out. CPU only.
  m.def("one_channel_conv_input_grad(Tensor grad, Tensor weight, int pad_h, int pad_w) -> Tensor");
  // The small CNN's first convolution and pooling with frozen weights, in one pass: max_pool2x2(conv2d(x [N, 1,
  // H, W], weight [C, 1, KH, KW], bias, padding)), then ReLU where relu is set, and its window positions (4
  // where ReLU passes no gradient), and the input gradient of a pooled gradient through all. CPU only.
  m.def(
      "one_channel_conv_max_pool2x2(Tensor x, Tensor weight, Tensor? bias, int pad_h, int pad_w, bool relu=False) "
      "-> (Tensor out, Tensor argmax)");
  m.def(
      "one_channel_conv_max_pool2x2_input_grad(Tensor grad, Tensor argmax, Tensor weight, int pad_h, int pad_w, "
      "int height, int width) -> Tensor");
  // The input gradient of max_pool2x2(conv2d(x [N, C_in, H, W], weight [C_out, C_in, 3, 3], padding)) (stride 1)
  // from the pooled gradient and its window positions (4: none, where a ReLU zeroed the window), without the
  // convolution's gradient: [N, C_in, H, W] channels_last. CPU only.
  m.def(
      "conv3x3_max_pool2x2_input_grad(Tensor grad, Tensor argmax, Tensor weight, int pad_h, int pad_w, int height, "
      "int width) -> Tensor");
}

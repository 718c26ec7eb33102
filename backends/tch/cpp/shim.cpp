// ATen operations the plugin needs that tch's generated bindings leave out.
// Tensors cross as tch's handles (`at::Tensor*`); a C++ exception becomes
// a null result and a malloc'd message in `*err`.
#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/zeros.h>
#include <array>
#include <cstdint>
#include <cstring>
#include <exception>

extern "C" {

// The weight gradient of an untransposed 2-d convolution, summed over the
// batch: `grad_output [b, cout, oh, ow]`, `input [b, cin, h, w]`, the
// weight's shape `[cout, cin/groups, kh, kw]`; only that output of
// aten::convolution_backward is computed (its weight's values do not enter).
at::Tensor *nngeo_conv2d_weight_grad(const at::Tensor *grad_output, const at::Tensor *input,
                                     const int64_t *weight_shape, const int64_t *stride,
                                     const int64_t *padding, const int64_t *dilation,
                                     int64_t groups, char **err) {
    try {
        at::Tensor weight = at::zeros(at::IntArrayRef(weight_shape, 4), input->options());
        const int64_t no_padding[2] = {0, 0};
        auto grads = at::convolution_backward(
            *grad_output, *input, weight, ::std::nullopt, at::IntArrayRef(stride, 2),
            at::IntArrayRef(padding, 2), at::IntArrayRef(dilation, 2), false,
            at::IntArrayRef(no_padding, 2), groups, std::array<bool, 3>{false, true, false});
        return new at::Tensor(std::get<1>(grads));
    } catch (const std::exception &e) {
        *err = strdup(e.what());
        return nullptr;
    }
}
}

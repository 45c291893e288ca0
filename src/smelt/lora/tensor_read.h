// Whole tensors of a model read as f32, for the LoRA code (one matrix in memory at a time).
#pragma once

#include <vector>

#include "smelt/io/model_ref.h"

namespace smelt::lora {

// The elements of `t` converted to f32. Throws smelt::Error naming the tensor when its dtype is
// not a float type smelt converts (integers, quantized GGUF blocks).
std::vector<float> read_tensor_f32(const io::ModelTensor& t);

// out = a − b elementwise in f32 (resized to the element count), read in bounded chunks. The
// caller checked that the shapes match. Throws like read_tensor_f32.
void read_difference_f32(const io::ModelTensor& a, const io::ModelTensor& b,
                         std::vector<float>& out);

}  // namespace smelt::lora

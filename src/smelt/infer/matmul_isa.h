// Which instruction set the matrix-product kernels use (docs/inference.md, "Matrix products and
// threads"). Chosen once from the CPU; tests and benchmarks may lower it to run the AVX2 and
// portable kernels on a machine that has AVX-512.
#pragma once

namespace smelt::infer {

enum class MatmulIsa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

// The best the CPU supports (AVX-512F; AVX2 with FMA; portable C++).
MatmulIsa matmul_best_isa();
// The one in use: matmul_best_isa() unless lowered.
MatmulIsa matmul_isa();
// Uses `isa`, or the best the CPU has if that is lower. Not for use while a matmul runs.
void set_matmul_isa(MatmulIsa isa);

}  // namespace smelt::infer

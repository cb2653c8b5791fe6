/*
 * cuda_path_kernels.cu -- what the device path (cervrt.runtime.gpu) compiles: the fusion kernels of
 * fusion_kernels.cu plus the classification gate, so that a gated model's batch never waits on the
 * host (no class-probability copy down, no stream synchronisation per batch).
 *
 *   cervrt_gate_factors  float32 (n, C - 1) class probabilities -> float32 (n, C) factors: 1 for the
 *                        background, 0 for class k when class_probs[:, k - 1] <= epsilon, else 1
 *                        (SPEC "classification gate"; cervrt.runtime.pipeline.gate_factors on the host).
 *
 * Status: compiled (NVRTC, in the tests) and run on the host by the tests through the CUDA-less shim;
 * not yet executed on a GPU.
 */
#include "fusion_kernels.cu"

extern "C" __global__ void cervrt_gate_factors(const float *class_probs, float *gate, int n, int C, float epsilon)
{
    CERVRT_GRID_STRIDE(k, (cervrt_i64)n * C) {
        int c = (int)(k % C);
        cervrt_i64 i = k / C;
        gate[k] = (c == 0 || class_probs[i * (C - 1) + (c - 1)] > epsilon) ? 1.0f : 0.0f;
    }
}

/*
 * fusion_math.h -- the per-pixel math of cervrt's sliding-window fusion, in one place.
 *
 * Included by the C extension (fusion.c, compiled by the host C compiler) and by the CUDA kernels
 * (fusion_kernels.cu, compiled by NVRTC at run time or by nvcc ahead of time), so that the CPU and
 * GPU paths normalise, weight, gate and take the argmax the same way, in the same order of
 * floating-point operations.  The numpy reference (cervrt/runtime/reference.py) mirrors it.
 *
 * Under NVRTC no system header is available, hence the plain typedefs guarded by __CUDACC_RTC__.
 * In device code the multiply, add and divide go through the round-to-nearest intrinsics so that
 * the compiler cannot contract them into fused multiply-adds, which would change the rounding
 * relative to the host; the host C code is compiled in ISO C mode (-std=c11), where GCC does not
 * contract either.
 */
#ifndef CERVRT_FUSION_MATH_H
#define CERVRT_FUSION_MATH_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define CERVRT_HD __host__ __device__ __forceinline__
#else
#define CERVRT_HD static inline
#endif

#if defined(__CUDACC_RTC__)
typedef unsigned char cervrt_u8;
typedef long long cervrt_i64;
#else
#include <stdint.h>
typedef uint8_t cervrt_u8;
typedef int64_t cervrt_i64;
#endif

/* Largest class count whose labels fit in cervrt_u8. */
#define CERVRT_MAX_CLASSES 256

/* ---- rounding-exact scalar operations ------------------------------------------------------- */

CERVRT_HD float cervrt_mul(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

CERVRT_HD float cervrt_add(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

CERVRT_HD float cervrt_div(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}

/* ---- normalisation -------------------------------------------------------------------------- */

/*
 * (v / 255 - mean) / std == v * scale + bias with scale = 1 / (255 std), bias = -mean / std.
 * The coefficients are computed once per channel in double precision and rounded to float
 * (the Python side does the same with Python floats).
 */
CERVRT_HD void cervrt_norm_coeffs(double mean, double std, float *scale, float *bias)
{
    *scale = (float)(1.0 / (255.0 * std));
    *bias = (float)(-mean / std);
}

/* One uint8 channel value -> its normalised float. */
CERVRT_HD float cervrt_normalize(cervrt_u8 v, float scale, float bias)
{
    return cervrt_add(cervrt_mul((float)v, scale), bias);
}

/* ---- weighted accumulation ------------------------------------------------------------------ */

/* One class of one pixel: acc + (w * g) * p.  g is the classification gate factor (1 or 0 for the
 * WSSS gate); w * 1 == w exactly, so "no gate" is g = 1. */
CERVRT_HD float cervrt_blend_term(float acc, float w, float g, float p)
{
    return cervrt_add(acc, cervrt_mul(cervrt_mul(w, g), p));
}

/*
 * Accumulate one pixel's C probabilities with weight w:
 *   acc[c * plane] += (w * gate[c]) * p[c * pplane]  for c < C,   *wsum += w.
 * plane / pplane are the distances between class planes of the accumulator / of the patch.
 * gate may be NULL (every factor 1).
 */
CERVRT_HD void cervrt_accumulate_pixel(float *acc, cervrt_i64 plane, float *wsum, const float *p,
                                       cervrt_i64 pplane, const float *gate, int C, float w)
{
    for (int c = 0; c < C; ++c) {
        const float g = gate ? gate[c] : 1.0f;
        acc[c * plane] = cervrt_blend_term(acc[c * plane], w, g, p[c * pplane]);
    }
    *wsum = cervrt_add(*wsum, w);
}

/*
 * The same arithmetic over a run of len consecutive pixels of one row, class by class, so that a
 * host compiler can vectorise it.  Every pixel gets exactly cervrt_accumulate_pixel's operations.
 */
CERVRT_HD void cervrt_accumulate_span(float *acc, cervrt_i64 plane, float *wsum, const float *p,
                                      cervrt_i64 pplane, const float *w, const float *gate, int C,
                                      cervrt_i64 len)
{
    for (int c = 0; c < C; ++c) {
        const float g = gate ? gate[c] : 1.0f;
        float *a = acc + c * plane;
        const float *pc = p + c * pplane;
        for (cervrt_i64 x = 0; x < len; ++x)
            a[x] = cervrt_blend_term(a[x], w[x], g, pc[x]);
    }
    for (cervrt_i64 x = 0; x < len; ++x)
        wsum[x] = cervrt_add(wsum[x], w[x]);
}

/* ---- argmax --------------------------------------------------------------------------------- */

/*
 * Label of one pixel: argmax over c of the fused probability acc[c * plane] / wsum.  Ties go to
 * the lowest class index (a strict > comparison); a pixel no window covered (wsum == 0, or not
 * positive) is 0, background.  The division does not change the argmax of exact values but is
 * kept so that the definition is the fused probability itself.
 */
CERVRT_HD cervrt_u8 cervrt_argmax_pixel(const float *acc, cervrt_i64 plane, float wsum, int C)
{
    if (!(wsum > 0.0f))
        return 0;
    int best = 0;
    float best_value = cervrt_div(acc[0], wsum);
    for (int c = 1; c < C; ++c) {
        const float value = cervrt_div(acc[c * plane], wsum);
        if (value > best_value) {
            best = c;
            best_value = value;
        }
    }
    return (cervrt_u8)best;
}

#endif /* CERVRT_FUSION_MATH_H */

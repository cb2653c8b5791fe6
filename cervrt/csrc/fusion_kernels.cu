/*
 * fusion_kernels.cu -- the GPU side of cervrt's fusion: the three operations of the C extension
 * (fusion.c) on device memory, with the per-pixel math of fusion_math.h.
 *
 * Compiled at run time by NVRTC (cervrt.runtime.gpu.compile_kernels) or ahead of time by
 * nvcc; launched through the driver API by cervrt.runtime.gpu.CudaFusion.  Every kernel is
 * a grid-stride loop, so any grid size covers the work.  Status: compiled (NVRTC and nvcc, in the
 * tests), and its logic run on the host by the tests through a CUDA-less shim; not yet executed on
 * a GPU.
 *
 *   cervrt_gather_normalize  uint8 (n, P, P, 3) HWC patches (already cropped and padded with glass
 *                            on the host) -> normalised float32 (n, 3, P, P) CHW.
 *   cervrt_accumulate        windows of a batch into the band, pixel by pixel over the batch's
 *                            bounding box: each thread owns one band pixel and adds the windows
 *                            covering it in batch order (no atomics, deterministic, the same order
 *                            of additions as the C extension).
 *   cervrt_argmax            uint8 labels of the first `rows` band rows.
 *   cervrt_shift_band        copy the band into a second buffer moved up by `shift` rows (rows at
 *                            or past `filled` become zero): the device's version of the host
 *                            stitcher's in-place row move.
 */
#include "fusion_math.h"

#define CERVRT_GRID_STRIDE(k, total)                                                          \
    for (cervrt_i64 k = (cervrt_i64)blockIdx.x * blockDim.x + threadIdx.x; k < (total);     \
         k += (cervrt_i64)gridDim.x * blockDim.x)

extern "C" __global__ void cervrt_gather_normalize(const cervrt_u8 *patches, float *out, cervrt_i64 n,
                                                   int patch, float scale0, float scale1, float scale2,
                                                   float bias0, float bias1, float bias2)
{
    const cervrt_i64 plane = (cervrt_i64)patch * patch;
    CERVRT_GRID_STRIDE(k, n * plane)
    {
        const cervrt_i64 i = k / plane, q = k - i * plane;
        const cervrt_u8 *px = patches + 3 * k;
        float *o = out + 3 * plane * i + q;
        o[0] = cervrt_normalize(px[0], scale0, bias0);
        o[plane] = cervrt_normalize(px[1], scale1, bias1);
        o[2 * plane] = cervrt_normalize(px[2], scale2, bias2);
    }
}

/*
 * acc (C, band_rows, width), wsum (band_rows, width); probs (n, C, P, P); window i at band row
 * ys[i] - y_origin, column xs[i]; weights (P, P); gate (n, C) or null.  The box
 * [box_y0, box_y0 + box_h) x [box_x0, box_x0 + box_w) must lie inside the band; pixels of a window
 * outside the box are not added (the host passes the batch's bounding box clipped to the band).
 */
extern "C" __global__ void cervrt_accumulate(float *acc, float *wsum, int C, int band_rows, int width,
                                             const float *probs, const cervrt_i64 *ys, const cervrt_i64 *xs,
                                             cervrt_i64 y_origin, int n, const float *weights,
                                             const float *gate, int patch, int box_y0, int box_x0,
                                             int box_h, int box_w)
{
    const cervrt_i64 plane = (cervrt_i64)band_rows * width, pplane = (cervrt_i64)patch * patch;
    CERVRT_GRID_STRIDE(k, (cervrt_i64)box_h * box_w)
    {
        const cervrt_i64 y = box_y0 + k / box_w, x = box_x0 + k % box_w;
        const cervrt_i64 offset = y * width + x;
        for (int i = 0; i < n; ++i) {
            const cervrt_i64 r = y - (ys[i] - y_origin), c = x - xs[i];
            if (r < 0 || r >= patch || c < 0 || c >= patch)
                continue;
            cervrt_accumulate_pixel(acc + offset, plane, wsum + offset, probs + i * C * pplane + r * patch + c,
                                    pplane, gate ? gate + (cervrt_i64)i * C : 0, C, weights[r * patch + c]);
        }
    }
}

extern "C" __global__ void cervrt_argmax(const float *acc, const float *wsum, cervrt_u8 *out, int C,
                                         int band_rows, int width, int rows)
{
    const cervrt_i64 plane = (cervrt_i64)band_rows * width;
    CERVRT_GRID_STRIDE(k, (cervrt_i64)rows * width)
    {
        out[k] = cervrt_argmax_pixel(acc + k, plane, wsum[k], C);
    }
}

/* src and dst: (C + 1) planes of (band_rows, width) floats each (the C class sums, then wsum). */
extern "C" __global__ void cervrt_shift_band(const float *src, float *dst, int planes, int band_rows, int width,
                                             cervrt_i64 shift, cervrt_i64 filled)
{
    const cervrt_i64 plane = (cervrt_i64)band_rows * width;
    CERVRT_GRID_STRIDE(k, planes * plane)
    {
        const cervrt_i64 row = (k % plane) / width;
        dst[k] = (row + shift < filled) ? src[k + shift * width] : 0.0f;
    }
}

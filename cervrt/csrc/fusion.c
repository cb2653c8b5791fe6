/*
 * cervrt._fusion -- the C level of cervrt's sliding-window fusion (plain C on the numpy C API).
 *
 *   gather(image, ys, xs, patch, mean, std, out, threads=0)
 *       Crop patches at (ys[i], xs[i]) from an (H, W, 3) uint8 RGB image (any strides) and write
 *       them normalised, CHW, into out[:n] of a reused float32 (B >= n, 3, P, P) buffer.  Pixels
 *       past the bottom or right edge are glass (255), normalised the same way.
 *   accumulate(acc, wsum, probs, ys, xs, weights, gate=None, threads=0, base=0)
 *       acc[:, y, x] += (w * gate[i]) * probs[i], wsum[y, x] += w, for the windows at band-relative
 *       origins (ys[i], xs[i]); rows and columns outside the band are skipped.  Band row y is
 *       stored in row (y + base) % Hb of acc and wsum (a ring, so the band moves down without a copy).
 *   argmax(acc, wsum, out, rows, threads=0, base=0)
 *       uint8 labels of the first `rows` band rows: argmax of acc / wsum, ties to the lowest
 *       class, uncovered pixels (wsum == 0) 0.
 *
 * The per-pixel math is in fusion_math.h, shared with the CUDA kernels.  Every argument is checked
 * (TypeError for a wrong type or dtype, ValueError for a wrong shape, layout or value) before any
 * memory is touched; the loops then run without the GIL, in parallel with OpenMP when the build
 * defines CERVRT_OPENMP: on `threads` threads if positive (1 where other pipeline threads share the
 * cores), else OpenMP's default.  Per pixel, windows are always added in their given order, so results do
 * not depend on the number of threads, and they match the numpy reference bit for bit when the
 * compiler does not contract a * b + c into an FMA (GCC in ISO C mode, as built by setup.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>

#include <math.h>
#ifdef CERVRT_OPENMP
#include <omp.h>
#endif

#include "fusion_math.h"

#ifdef CERVRT_OPENMP
#define CERVRT_PRAGMA_OMP(x) _Pragma(#x)
#else
#define CERVRT_PRAGMA_OMP(x)
#endif

/*
 * Below this many inner iterations (pixel-windows, or pixel-classes for the argmax) a call stays on
 * one thread: an OpenMP fork/join costs more than the work.  Measured on a 2-core machine at rest:
 * accumulating 4 windows of 64 px (16,384) took 0.020 ms on one thread and 0.33 ms on two; 8 windows
 * of 128 px (131,072) 0.17 ms and 0.08 ms.  On a host busy with other processes a parallel region
 * can wait a scheduler slice for its second thread: there, OMP_NUM_THREADS=1 is the faster setting.
 */
#define CERVRT_PARALLEL_MIN 100000

/*
 * The loops below are compiled twice on x86-64 Linux with GCC: for AVX2 and for the baseline, and the
 * loader picks the one the CPU runs (target_clones, an ifunc).  AVX2 without FMA: the vector code does
 * each pixel's operations in the same order as the scalar code, so both give the same bits.
 */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CERVRT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CERVRT_CLONES
#endif

/* Rows of the accumulation done window by window before moving to the next block of rows: the sums
 * of a block stay in cache while every window of the batch adds to them. */
#define CERVRT_ROW_BLOCK 16

/* The team size of a parallel region: `threads` if positive (the caller's choice, e.g. 1 beside
 * other pipeline threads), else OpenMP's default. */
static int team_size(Py_ssize_t threads)
{
#ifdef CERVRT_OPENMP
    return threads > 0 ? (int)(threads < 1024 ? threads : 1024) : omp_get_max_threads();
#else
    (void)threads;
    return 1;
#endif
}

/* ---- argument checks ------------------------------------------------------------------------ */

enum { NEED_CONTIGUOUS = 1, NEED_WRITEABLE = 2 };

static PyArrayObject *check_array(PyObject *obj, const char *name, int typenum, const char *dtype,
                                  int ndim, int needs)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array, got %s", name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (!PyArray_EquivTypenums(PyArray_TYPE(a), typenum) || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_TypeError, "%s must be %s in native byte order, got %R", name, dtype,
                     (PyObject *)PyArray_DESCR(a));
        return NULL;
    }
    if (PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", name, ndim, PyArray_NDIM(a));
        return NULL;
    }
    if ((needs & NEED_CONTIGUOUS) && !(PyArray_IS_C_CONTIGUOUS(a) && PyArray_ISALIGNED(a))) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous and aligned (pass np.ascontiguousarray(%s))",
                     name, name);
        return NULL;
    }
    if ((needs & NEED_WRITEABLE) && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be writeable", name);
        return NULL;
    }
    return a;
}

static int check_dim(PyArrayObject *a, const char *name, int axis, npy_intp expected, const char *what)
{
    if (PyArray_DIM(a, axis) != expected) {
        PyErr_Format(PyExc_ValueError, "%s.shape[%d] must be %zd (%s), got %zd", name, axis,
                     (Py_ssize_t)expected, what, (Py_ssize_t)PyArray_DIM(a, axis));
        return -1;
    }
    return 0;
}

/* ys and xs: int64, 1-D, contiguous, the same length; returns that length or -1. */
static npy_intp check_origins(PyObject *ys_obj, PyObject *xs_obj, PyArrayObject **ys, PyArrayObject **xs)
{
    *ys = check_array(ys_obj, "ys", NPY_INT64, "int64", 1, NEED_CONTIGUOUS);
    if (*ys == NULL)
        return -1;
    *xs = check_array(xs_obj, "xs", NPY_INT64, "int64", 1, NEED_CONTIGUOUS);
    if (*xs == NULL)
        return -1;
    if (PyArray_DIM(*ys, 0) != PyArray_DIM(*xs, 0)) {
        PyErr_Format(PyExc_ValueError, "ys and xs must have the same length, got %zd and %zd",
                     (Py_ssize_t)PyArray_DIM(*ys, 0), (Py_ssize_t)PyArray_DIM(*xs, 0));
        return -1;
    }
    return PyArray_DIM(*ys, 0);
}

/* A sequence of 3 finite numbers (std: also > 0) into out[3]. */
static int parse_triple(PyObject *obj, const char *name, int positive, double out[3])
{
    PyObject *seq = PySequence_Fast(obj, "mean and std must be sequences of 3 floats");
    if (seq == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) != 3) {
        PyErr_Format(PyExc_ValueError, "%s must have 3 values (R, G, B), got %zd", name,
                     PySequence_Fast_GET_SIZE(seq));
        Py_DECREF(seq);
        return -1;
    }
    for (int c = 0; c < 3; ++c) {
        out[c] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, c));
        if (out[c] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        if (!isfinite(out[c]) || (positive && !(out[c] > 0.0))) {
            PyErr_Format(PyExc_ValueError, "%s must hold finite%s values, got %R", name,
                         positive ? " positive" : "", obj);
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* ---- gather --------------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *data; /* image base pointer */
    npy_intp height, width;    /* image size */
    npy_intp sy, sx, sc;       /* byte strides of rows, columns, channels (any sign) */
} image_view;

/* ncols pixels of packed RGB (the usual layout) normalised into the three planes at o. */
CERVRT_CLONES static void gather_rgb(const unsigned char *restrict src, npy_intp ncols, npy_intp plane,
                                     const float *scale, const float *bias, float *restrict o)
{
    const float s0 = scale[0], s1 = scale[1], s2 = scale[2], b0 = bias[0], b1 = bias[1], b2 = bias[2];
    float *restrict o1 = o + plane, *restrict o2 = o + 2 * plane;
    for (npy_intp x = 0; x < ncols; ++x) {
        o[x] = cervrt_normalize(src[3 * x], s0, b0);
        o1[x] = cervrt_normalize(src[3 * x + 1], s1, b1);
        o2[x] = cervrt_normalize(src[3 * x + 2], s2, b2);
    }
}

/* Write row r of patch i (3 planes of P floats) into o; out-of-image pixels are glass. */
static void gather_row(const image_view *im, cervrt_i64 y0, cervrt_i64 x0, npy_intp r, npy_intp P,
                       const float *scale, const float *bias, const float *glass, float *o)
{
    const npy_intp plane = P * P;
    npy_intp ncols = 0;
    /* Origins were checked to be >= 0; checked again here, on the value used, so that a concurrent
     * change of ys/xs cannot lead outside the image.  With y0, x0 >= 0 nothing below overflows. */
    if (y0 >= 0 && x0 >= 0 && y0 < im->height && r < im->height - y0 && x0 < im->width)
        ncols = (im->width - x0 < P) ? (im->width - x0) : P;
    if (ncols > 0 && im->sx == 3 && im->sc == 1) {
        gather_rgb(im->data + (y0 + r) * im->sy + x0 * 3, ncols, plane, scale, bias, o);
    } else if (ncols > 0) {
        const unsigned char *src = im->data + (y0 + r) * im->sy + x0 * im->sx;
        for (npy_intp x = 0; x < ncols; ++x, src += im->sx) {
            o[x] = cervrt_normalize(src[0], scale[0], bias[0]);
            o[plane + x] = cervrt_normalize(src[im->sc], scale[1], bias[1]);
            o[2 * plane + x] = cervrt_normalize(src[2 * im->sc], scale[2], bias[2]);
        }
    }
    for (npy_intp x = ncols; x < P; ++x) {
        o[x] = glass[0];
        o[plane + x] = glass[1];
        o[2 * plane + x] = glass[2];
    }
}

static void gather_impl(const image_view *im, const cervrt_i64 *ys, const cervrt_i64 *xs, npy_intp n,
                        npy_intp P, const float *scale, const float *bias, float *out, int team)
{
    float glass[3];
    for (int c = 0; c < 3; ++c)
        glass[c] = cervrt_normalize(255, scale[c], bias[c]);
    const npy_intp total = n * P;
    CERVRT_PRAGMA_OMP(omp parallel for schedule(static) num_threads(team) if (team > 1 && total * P > CERVRT_PARALLEL_MIN))
    for (npy_intp k = 0; k < total; ++k) {
        const npy_intp i = k / P, r = k % P;
        gather_row(im, ys[i], xs[i], r, P, scale, bias, glass, out + i * 3 * P * P + r * P);
    }
}

static PyObject *fusion_gather(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"image", "ys", "xs", "patch", "mean", "std", "out", "threads", NULL};
    PyObject *image_obj, *ys_obj, *xs_obj, *mean_obj, *std_obj, *out_obj;
    Py_ssize_t patch, threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOnOOO|n:gather", kwlist, &image_obj, &ys_obj, &xs_obj,
                                     &patch, &mean_obj, &std_obj, &out_obj, &threads))
        return NULL;
    PyArrayObject *image = check_array(image_obj, "image", NPY_UINT8, "uint8", 3, 0);
    if (image == NULL)
        return NULL;
    if (PyArray_DIM(image, 2) != 3) {
        PyErr_Format(PyExc_ValueError, "image must be (H, W, 3) RGB, got %zd channels",
                     (Py_ssize_t)PyArray_DIM(image, 2));
        return NULL;
    }
    PyArrayObject *ys, *xs;
    const npy_intp n = check_origins(ys_obj, xs_obj, &ys, &xs);
    if (n < 0)
        return NULL;
    if (patch <= 0) {
        PyErr_Format(PyExc_ValueError, "patch must be positive, got %zd", patch);
        return NULL;
    }
    double mean[3], std[3];
    if (parse_triple(mean_obj, "mean", 0, mean) < 0 || parse_triple(std_obj, "std", 1, std) < 0)
        return NULL;
    PyArrayObject *out = check_array(out_obj, "out", NPY_FLOAT32, "float32", 4, NEED_CONTIGUOUS | NEED_WRITEABLE);
    if (out == NULL || check_dim(out, "out", 1, 3, "RGB channels") < 0 ||
        check_dim(out, "out", 2, patch, "patch") < 0 || check_dim(out, "out", 3, patch, "patch") < 0)
        return NULL;
    if (PyArray_DIM(out, 0) < n) {
        PyErr_Format(PyExc_ValueError, "out holds %zd patches but %zd windows were given",
                     (Py_ssize_t)PyArray_DIM(out, 0), (Py_ssize_t)n);
        return NULL;
    }
    const cervrt_i64 *y = (const cervrt_i64 *)PyArray_DATA(ys), *x = (const cervrt_i64 *)PyArray_DATA(xs);
    for (npy_intp i = 0; i < n; ++i) {
        if (y[i] < 0 || x[i] < 0) {
            PyErr_Format(PyExc_ValueError, "window origins must be >= 0, got (%lld, %lld) at index %zd",
                         (long long)y[i], (long long)x[i], (Py_ssize_t)i);
            return NULL;
        }
    }
    float scale[3], bias[3];
    for (int c = 0; c < 3; ++c)
        cervrt_norm_coeffs(mean[c], std[c], &scale[c], &bias[c]);
    image_view im = {(const unsigned char *)PyArray_BYTES(image), PyArray_DIM(image, 0), PyArray_DIM(image, 1),
                     PyArray_STRIDE(image, 0), PyArray_STRIDE(image, 1), PyArray_STRIDE(image, 2)};
    const int team = team_size(threads);
    Py_BEGIN_ALLOW_THREADS
    gather_impl(&im, y, x, n, patch, scale, bias, (float *)PyArray_DATA(out), team);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---- accumulate ----------------------------------------------------------------------------- */

typedef struct {
    float *acc, *wsum;          /* (C, Hb, W) and (Hb, W) */
    npy_intp C, Hb, W;
    const float *probs;         /* (n, C, P, P) */
    const float *weights;       /* (P, P) */
    const float *gate;          /* (n, C) or NULL */
    const cervrt_i64 *ys, *xs;  /* band-relative window origins */
    npy_intp n, P;
    npy_intp base;              /* band row y is stored in row (y + base) % Hb: a ring */
} band_job;

/* Add every window's rows that fall on band rows [y_lo, y_hi), a block of CERVRT_ROW_BLOCK rows at a time,
 * window by window in the given order within a block (so each pixel gets its windows in order). */
CERVRT_CLONES static void accumulate_rows(const band_job *j, npy_intp y_lo, npy_intp y_hi)
{
    const npy_intp plane = j->Hb * j->W, pplane = j->P * j->P;
    for (npy_intp b0 = y_lo; b0 < y_hi; b0 += CERVRT_ROW_BLOCK) {
        const npy_intp b1 = (y_hi - b0 < CERVRT_ROW_BLOCK) ? y_hi : b0 + CERVRT_ROW_BLOCK;
        for (npy_intp i = 0; i < j->n; ++i) {
            const cervrt_i64 y0 = j->ys[i], x0 = j->xs[i];
            /* Reject far-away windows first so that the differences below cannot overflow. */
            if (y0 <= -j->P || y0 >= b1 || x0 <= -j->P || x0 >= j->W || b0 - y0 >= j->P)
                continue;
            const npy_intp first = (y0 > b0) ? y0 : b0, end = (y0 + j->P < b1) ? y0 + j->P : b1;
            const npy_intp c0 = x0 < 0 ? -x0 : 0;
            const npy_intp c1 = (j->W - x0 < j->P) ? j->W - x0 : j->P;
            for (npy_intp y = first; y < end; ++y) {
                const npy_intp stored = (y + j->base < j->Hb) ? y + j->base : y + j->base - j->Hb;
                const npy_intp r = y - y0, offset = stored * j->W + x0 + c0;
                cervrt_accumulate_span(j->acc + offset, plane, j->wsum + offset,
                                       j->probs + i * j->C * pplane + r * j->P + c0, pplane,
                                       j->weights + r * j->P + c0, j->gate ? j->gate + i * j->C : NULL,
                                       (int)j->C, c1 - c0);
            }
        }
    }
}

/* The band rows [*lo, *hi) that some window of the job covers, so that threads share only real work. */
static void covered_rows(const band_job *j, npy_intp *lo, npy_intp *hi)
{
    *lo = j->Hb;
    *hi = 0;
    for (npy_intp i = 0; i < j->n; ++i) {
        const cervrt_i64 y0 = j->ys[i];
        if (y0 <= -j->P || y0 >= j->Hb)
            continue;
        const npy_intp first = y0 < 0 ? 0 : y0, end = (j->Hb - y0 < j->P) ? j->Hb : y0 + j->P;
        *lo = first < *lo ? first : *lo;
        *hi = end > *hi ? end : *hi;
    }
}

static void accumulate_impl(const band_job *j, int team)
{
    npy_intp lo, hi;
    covered_rows(j, &lo, &hi);
    if (hi <= lo)
        return;
    const npy_intp blocks = (hi - lo + CERVRT_ROW_BLOCK - 1) / CERVRT_ROW_BLOCK;
    CERVRT_PRAGMA_OMP(omp parallel for schedule(static) num_threads(team) if (team > 1 && j->n * j->P * j->P > CERVRT_PARALLEL_MIN))
    for (npy_intp b = 0; b < blocks; ++b) {
        const npy_intp y = lo + b * CERVRT_ROW_BLOCK;
        accumulate_rows(j, y, (hi - y < CERVRT_ROW_BLOCK) ? hi : y + CERVRT_ROW_BLOCK);
    }
}

/* acc (C, Hb, W) and wsum (Hb, W): float32, contiguous, writeable, matching. */
static int check_band(PyObject *acc_obj, PyObject *wsum_obj, PyArrayObject **acc, PyArrayObject **wsum)
{
    *acc = check_array(acc_obj, "acc", NPY_FLOAT32, "float32", 3, NEED_CONTIGUOUS | NEED_WRITEABLE);
    if (*acc == NULL)
        return -1;
    *wsum = check_array(wsum_obj, "wsum", NPY_FLOAT32, "float32", 2, NEED_CONTIGUOUS | NEED_WRITEABLE);
    if (*wsum == NULL)
        return -1;
    if (PyArray_DIM(*acc, 0) < 1) {
        PyErr_SetString(PyExc_ValueError, "acc must have at least one class plane");
        return -1;
    }
    if (check_dim(*wsum, "wsum", 0, PyArray_DIM(*acc, 1), "band rows of acc") < 0 ||
        check_dim(*wsum, "wsum", 1, PyArray_DIM(*acc, 2), "band width of acc") < 0)
        return -1;
    return 0;
}

/* The ring offset of a band of Hb rows: 0 <= base < Hb. */
static int check_base(Py_ssize_t base, npy_intp Hb)
{
    if (base < 0 || (base > 0 && base >= Hb)) {
        PyErr_Format(PyExc_ValueError, "base must be between 0 and %zd (a band row), got %zd",
                     (Py_ssize_t)(Hb > 0 ? Hb - 1 : 0), base);
        return -1;
    }
    return 0;
}

static int check_probs(PyArrayObject *probs, PyArrayObject *weights, npy_intp n, npy_intp C)
{
    if (PyArray_DIM(probs, 0) < n) {
        PyErr_Format(PyExc_ValueError, "probs holds %zd patches but %zd windows were given",
                     (Py_ssize_t)PyArray_DIM(probs, 0), (Py_ssize_t)n);
        return -1;
    }
    const npy_intp P = PyArray_DIM(probs, 2);
    if (check_dim(probs, "probs", 1, C, "classes of acc") < 0 || check_dim(probs, "probs", 3, P, "square patches") < 0)
        return -1;
    if (P < 1) {
        PyErr_SetString(PyExc_ValueError, "probs must hold patches of at least 1x1 pixels");
        return -1;
    }
    if (check_dim(weights, "weights", 0, P, "patch of probs") < 0 || check_dim(weights, "weights", 1, P, "patch of probs") < 0)
        return -1;
    return 0;
}

static PyObject *fusion_accumulate(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"acc", "wsum", "probs", "ys", "xs", "weights", "gate", "threads", "base", NULL};
    PyObject *acc_obj, *wsum_obj, *probs_obj, *ys_obj, *xs_obj, *weights_obj, *gate_obj = Py_None;
    Py_ssize_t threads = 0, base = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO|Onn:accumulate", kwlist, &acc_obj, &wsum_obj,
                                     &probs_obj, &ys_obj, &xs_obj, &weights_obj, &gate_obj, &threads, &base))
        return NULL;
    PyArrayObject *acc, *wsum, *ys, *xs, *gate = NULL;
    if (check_band(acc_obj, wsum_obj, &acc, &wsum) < 0 || check_base(base, PyArray_DIM(acc, 1)) < 0)
        return NULL;
    PyArrayObject *probs = check_array(probs_obj, "probs", NPY_FLOAT32, "float32", 4, NEED_CONTIGUOUS);
    if (probs == NULL)
        return NULL;
    const npy_intp n = check_origins(ys_obj, xs_obj, &ys, &xs);
    if (n < 0)
        return NULL;
    PyArrayObject *weights = check_array(weights_obj, "weights", NPY_FLOAT32, "float32", 2, NEED_CONTIGUOUS);
    const npy_intp C = PyArray_DIM(acc, 0);
    if (weights == NULL || check_probs(probs, weights, n, C) < 0)
        return NULL;
    if (gate_obj != Py_None) {
        gate = check_array(gate_obj, "gate", NPY_FLOAT32, "float32", 2, NEED_CONTIGUOUS);
        if (gate == NULL || check_dim(gate, "gate", 1, C, "classes of acc") < 0)
            return NULL;
        if (PyArray_DIM(gate, 0) < n) {
            PyErr_Format(PyExc_ValueError, "gate holds %zd rows but %zd windows were given",
                         (Py_ssize_t)PyArray_DIM(gate, 0), (Py_ssize_t)n);
            return NULL;
        }
    }
    if (C > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many classes");
        return NULL;
    }
    band_job job = {(float *)PyArray_DATA(acc), (float *)PyArray_DATA(wsum), C, PyArray_DIM(acc, 1),
                    PyArray_DIM(acc, 2), (const float *)PyArray_DATA(probs), (const float *)PyArray_DATA(weights),
                    gate ? (const float *)PyArray_DATA(gate) : NULL, (const cervrt_i64 *)PyArray_DATA(ys),
                    (const cervrt_i64 *)PyArray_DATA(xs), n, PyArray_DIM(probs, 2), base};
    const int team = team_size(threads);
    Py_BEGIN_ALLOW_THREADS
    accumulate_impl(&job, team);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---- argmax --------------------------------------------------------------------------------- */

/* Labels of band row y in chunks of CERVRT_ARGMAX_CHUNK pixels, class by class over a chunk so that the
 * pixel loop vectorises; per pixel exactly cervrt_argmax_pixel's divisions, comparisons and ties. */
#define CERVRT_ARGMAX_CHUNK 256
CERVRT_CLONES static void argmax_row(const float *acc, const float *wsum, npy_intp C, npy_intp plane, npy_intp W,
                                     cervrt_u8 *out)
{
    float best[CERVRT_ARGMAX_CHUNK], label[CERVRT_ARGMAX_CHUNK];
    for (npy_intp x0 = 0; x0 < W; x0 += CERVRT_ARGMAX_CHUNK) {
        const npy_intp n = (W - x0 < CERVRT_ARGMAX_CHUNK) ? W - x0 : CERVRT_ARGMAX_CHUNK;
        const float *ws = wsum + x0;
        for (npy_intp x = 0; x < n; ++x) {
            best[x] = cervrt_div(acc[x0 + x], ws[x]);
            label[x] = 0.0f;
        }
        for (npy_intp c = 1; c < C; ++c) {
            const float *a = acc + c * plane + x0, k = (float)c;
            for (npy_intp x = 0; x < n; ++x) {
                const float value = cervrt_div(a[x], ws[x]);
                const int better = value > best[x];
                best[x] = better ? value : best[x];
                label[x] = better ? k : label[x];
            }
        }
        for (npy_intp x = 0; x < n; ++x)
            out[x0 + x] = (ws[x] > 0.0f) ? (cervrt_u8)label[x] : 0;
    }
}

static void argmax_impl(const float *acc, const float *wsum, npy_intp C, npy_intp Hb, npy_intp W,
                        npy_intp rows, npy_intp base, cervrt_u8 *out, int team)
{
    const npy_intp plane = Hb * W;
    CERVRT_PRAGMA_OMP(omp parallel for schedule(static) num_threads(team) if (team > 1 && rows * W * C > CERVRT_PARALLEL_MIN))
    for (npy_intp y = 0; y < rows; ++y) {
        const npy_intp stored = (y + base < Hb) ? y + base : y + base - Hb;
        argmax_row(acc + stored * W, wsum + stored * W, C, plane, W, out + y * W);
    }
}

static PyObject *fusion_argmax(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"acc", "wsum", "out", "rows", "threads", "base", NULL};
    PyObject *acc_obj, *wsum_obj, *out_obj;
    Py_ssize_t rows, threads = 0, base = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOn|nn:argmax", kwlist, &acc_obj, &wsum_obj, &out_obj, &rows,
                                     &threads, &base))
        return NULL;
    PyArrayObject *acc, *wsum;
    if (check_band(acc_obj, wsum_obj, &acc, &wsum) < 0 || check_base(base, PyArray_DIM(acc, 1)) < 0)
        return NULL;
    const npy_intp C = PyArray_DIM(acc, 0), Hb = PyArray_DIM(acc, 1), W = PyArray_DIM(acc, 2);
    if (C > CERVRT_MAX_CLASSES) {
        PyErr_Format(PyExc_ValueError, "uint8 labels hold at most %d classes, acc has %zd", CERVRT_MAX_CLASSES,
                     (Py_ssize_t)C);
        return NULL;
    }
    PyArrayObject *out = check_array(out_obj, "out", NPY_UINT8, "uint8", 2, NEED_CONTIGUOUS | NEED_WRITEABLE);
    if (out == NULL || check_dim(out, "out", 1, W, "band width") < 0)
        return NULL;
    if (rows < 0 || rows > Hb || rows > PyArray_DIM(out, 0)) {
        PyErr_Format(PyExc_ValueError, "rows must be between 0 and %zd (band rows and out rows), got %zd",
                     (Py_ssize_t)(Hb < PyArray_DIM(out, 0) ? Hb : PyArray_DIM(out, 0)), rows);
        return NULL;
    }
    const int team = team_size(threads);
    Py_BEGIN_ALLOW_THREADS
    argmax_impl((const float *)PyArray_DATA(acc), (const float *)PyArray_DATA(wsum), C, Hb, W, rows, base,
                (cervrt_u8 *)PyArray_DATA(out), team);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---- module --------------------------------------------------------------------------------- */

static PyMethodDef fusion_methods[] = {
    {"gather", (PyCFunction)(void (*)(void))fusion_gather, METH_VARARGS | METH_KEYWORDS,
     "gather(image, ys, xs, patch, mean, std, out, threads=0)\n--\n\n"
     "Crop, pad with glass (255) and normalise patches of an (H, W, 3) uint8 image into out[:n] "
     "(float32, C-contiguous, (B >= n, 3, P, P))."},
    {"accumulate", (PyCFunction)(void (*)(void))fusion_accumulate, METH_VARARGS | METH_KEYWORDS,
     "accumulate(acc, wsum, probs, ys, xs, weights, gate=None, threads=0, base=0)\n--\n\n"
     "acc[:, y, x] += (w * gate[i]) * probs[i], wsum[y, x] += w for windows at band-relative "
     "origins; rows and columns outside the band are skipped."},
    {"argmax", (PyCFunction)(void (*)(void))fusion_argmax, METH_VARARGS | METH_KEYWORDS,
     "argmax(acc, wsum, out, rows, threads=0, base=0)\n--\n\n"
     "uint8 labels of the first rows band rows into out: argmax of acc / wsum, ties to the lowest "
     "class, uncovered pixels 0."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fusion_module = {
    PyModuleDef_HEAD_INIT, "_fusion",
    "cervrt's C fusion kernels: gather + normalise, band accumulation, argmax (numpy C API, no GIL).",
    -1, fusion_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fusion(void)
{
    import_array();
    PyObject *m = PyModule_Create(&fusion_module);
    if (m == NULL)
        return NULL;
#ifdef CERVRT_OPENMP
    const int openmp = 1;
#else
    const int openmp = 0;
#endif
    if (PyModule_AddIntConstant(m, "OPENMP", openmp) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

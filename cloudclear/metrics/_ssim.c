/*
 * SSIM sums of one tile of a prediction against its reference, in one pass per band.
 *
 * cloudclear.metrics.native loads this library through ctypes (it uses no Python API, so it
 * builds without Python's headers) and falls back to the numpy / torch tiles of
 * cloudclear.metrics.maths when it is not built.
 *
 * Everything is float64, as scikit-image computes it: values are reflectance (raw * scale +
 * offset, clipped to [0, peak] when asked); four planes per band (x, y, xy, x^2 + y^2) are
 * convolved by the separable window (vertical, then horizontal); the SSIM formula forms each
 * term from numbers of its own size (var x + var y as E[x^2 + y^2] - (mean x^2 + mean y^2), the
 * luminance as 1 - (mean x - mean y)^2 / (mean x^2 + mean y^2 + C1)); each selected pixel's
 * SSIM is summed. float32 is not enough: a variance is a difference of near-equal squares, and
 * where a flat patch (a clipped or dark area) lies next to bright cloud no single level to
 * centre on keeps float32's error under 1e-6 against C2.
 *
 * The four planes of the window's rows stay in a ring of rows, and each output row is
 * convolved and put through the formula while its rows are in the CPU's cache: no plane of the
 * tile is ever written to memory, where the numpy / torch tiles make a dozen passes over it.
 *
 * Floating-point contraction is off (-ffp-contract=off in pyproject.toml): SSIM of equal images
 * is then 1 to the bit (2 cov and var x + var y are computed from identical numbers), and every
 * CPU the library is built for gives the same sums.
 */

#include <math.h>
#include <stddef.h>
#include <stdint.h>

enum { T_U8 = 0, T_U16 = 1, T_I16 = 2, T_U32 = 3, T_I32 = 4, T_F32 = 5, T_F64 = 6 };

#define MAX_K 15
#define LANES 8

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
/* One copy for CPUs with AVX2 and FMA (x86-64-v3), one for any x86-64, picked at load time. */
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif
#define INLINE static inline __attribute__((always_inline))

/* One raster of the tile: the first pixel of its window (halo included) and its strides, in
 * elements; columns are contiguous. */
typedef struct {
    const char *data;
    int type;
    ptrdiff_t band_stride, row_stride;
    const double *scale_offset; /* per band: scale, offset */
    int clip;
} Source;

static size_t type_size(int type) {
    switch (type) {
    case T_U8: return 1;
    case T_U16: case T_I16: return 2;
    case T_U32: case T_I32: case T_F32: return 4;
    case T_F64: return 8;
    default: return 0;
    }
}

#define LOAD_ROW(T)                                                                   \
    {                                                                                 \
        const T *restrict a = (const T *)p;                                           \
        if (clip) {                                                                   \
            for (ptrdiff_t c = 0; c < n; c++) {                                       \
                double v = (double)a[c] * s + o;                                      \
                v = v < 0.0 ? 0.0 : v;                                                \
                out[c] = v > peak ? peak : v;                                         \
            }                                                                         \
        } else {                                                                      \
            for (ptrdiff_t c = 0; c < n; c++) out[c] = (double)a[c] * s + o;          \
        }                                                                             \
    }

/* Row `row` of band `band`, n values, as float64 reflectance into out. */
INLINE void load_row(const Source *src, int band, int row, ptrdiff_t n, double peak, double *restrict out) {
    const char *p = src->data + (band * src->band_stride + row * src->row_stride) * (ptrdiff_t)type_size(src->type);
    const double s = src->scale_offset[2 * band], o = src->scale_offset[2 * band + 1];
    const int clip = src->clip;
    switch (src->type) {
    case T_U8: LOAD_ROW(uint8_t) break;
    case T_U16: LOAD_ROW(uint16_t) break;
    case T_I16: LOAD_ROW(int16_t) break;
    case T_U32: LOAD_ROW(uint32_t) break;
    case T_I32: LOAD_ROW(int32_t) break;
    case T_F32: LOAD_ROW(float) break;
    case T_F64: LOAD_ROW(double) break;
    }
}

/* v[c] = sum_k kern[k] * rows[k][c], c < n: each output kept in a register through the window.
 * With a symmetric kernel of odd size (both of cloudclear's windows), mirrored rows are added
 * first and multiplied once: half the multiplications. */
INLINE void vertical(int K, int sym, const double *const *rows, const double *restrict kern, double *restrict v,
                     ptrdiff_t n) {
    const double *restrict r[MAX_K];
    for (int k = 0; k < K; k++) r[k] = rows[k];
    if (sym) {
        const int R = K / 2;
        for (ptrdiff_t c = 0; c < n; c++) {
            double a = kern[R] * r[R][c];
#pragma GCC unroll 16
            for (int k = 0; k < R; k++) a += kern[k] * (r[k][c] + r[K - 1 - k][c]);
            v[c] = a;
        }
        return;
    }
    for (ptrdiff_t c = 0; c < n; c++) {
        double a = kern[0] * r[0][c];
#pragma GCC unroll 16
        for (int k = 1; k < K; k++) a += kern[k] * r[k][c];
        v[c] = a;
    }
}

/* m[c] = sum_k kern[k] * v[c + k], c < n (mirrored values added first, as above). */
INLINE void horizontal(int K, int sym, const double *restrict v, const double *restrict kern, double *restrict m,
                       ptrdiff_t n) {
    if (sym) {
        const int R = K / 2;
        for (ptrdiff_t c = 0; c < n; c++) {
            double a = kern[R] * v[c + R];
#pragma GCC unroll 16
            for (int k = 0; k < R; k++) a += kern[k] * (v[c + k] + v[c + K - 1 - k]);
            m[c] = a;
        }
        return;
    }
    for (ptrdiff_t c = 0; c < n; c++) {
        double a = kern[0] * v[c];
#pragma GCC unroll 16
        for (int k = 1; k < K; k++) a += kern[k] * v[c + k];
        m[c] = a;
    }
}

INLINE int tile(int K, int sym, const Source *pred, const Source *ref, int nb, int h, int w, const double *kern, double peak,
                double c1, double c2, double cov_norm, const uint8_t *sel, ptrdiff_t sel_stride, double *scratch,
                double *out) {
    const ptrdiff_t W2 = w + K - 1;
    const int H2 = h + K - 1;
    double *ring = scratch;                   /* K rows x 4 planes x W2 */
    double *vert = ring + (size_t)K * 4 * W2; /* 4 planes x W2 */
    double *mean = vert + (size_t)4 * W2;     /* 4 planes x w */
    const double tc = 2.0 * cov_norm;
    for (int b = 0; b < nb; b++) {
        double lanes[LANES] = {0};
        for (int t = 0; t < H2; t++) {
            double *x = ring + (size_t)(t % K) * 4 * W2, *y = x + W2, *xy = y + W2, *s2 = xy + W2;
            load_row(pred, b, t, W2, peak, x);
            load_row(ref, b, t, W2, peak, y);
            for (ptrdiff_t c = 0; c < W2; c++) {
                xy[c] = x[c] * y[c];
                s2[c] = x[c] * x[c] + y[c] * y[c];
            }
            if (t < K - 1) continue;
            const int i = t - (K - 1); /* the output row whose window ends at row t */
            for (int p = 0; p < 4; p++) {
                const double *rows[MAX_K];
                for (int k = 0; k < K; k++) rows[k] = ring + ((size_t)((i + k) % K) * 4 + p) * W2;
                vertical(K, sym, rows, kern, vert + (size_t)p * W2, W2);
                horizontal(K, sym, vert + (size_t)p * W2, kern, mean + (size_t)p * w, w);
            }
            const double *ux_ = mean, *uy_ = mean + w, *sxy_ = mean + 2 * w, *s2_ = mean + 3 * w;
            const uint8_t *srow = sel + (ptrdiff_t)i * sel_stride;
            double *val = vert; /* free again: the row's SSIM, zero where not selected, to a multiple of LANES */
            for (ptrdiff_t c = 0; c < w; c++) {
                const double ux = ux_[c], uy = uy_[c];
                const double a2 = (sxy_[c] - ux * uy) * tc + c2;            /* 2 cov + C2 */
                const double b2 = (s2_[c] - (ux * ux + uy * uy)) * cov_norm + c2; /* var x + var y + C2 */
                const double d = ux - uy;
                const double den = (ux * ux + uy * uy) + c1;
                val[c] = (1.0 - (d * d) / den) * (a2 / b2);
            }
            for (ptrdiff_t c = 0; c < w; c++) val[c] = srow[c] ? val[c] : 0.0; /* NaN where not selected: 0 */
            for (ptrdiff_t c = w; c % LANES; c++) val[c] = 0.0;
            for (ptrdiff_t c0 = 0; c0 < w; c0 += LANES) {
                for (int l = 0; l < LANES; l++) lanes[l] += val[c0 + l];
            }
        }
        out[b] += ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    }
    return 0;
}

/* The interface's version: cloudclear.metrics.native loads no library whose version differs (an
 * editable install keeps the library it built until it is reinstalled). Raise it with any change
 * of cc_ssim_tile's arguments or of what it computes. */
int cc_ssim_version(void) { return 2; }

/* Doubles of scratch that cc_ssim_tile needs for a tile `w` columns wide and a window of `ksize`. */
size_t cc_ssim_scratch(int w, int ksize) {
    const size_t W2 = (size_t)w + ksize - 1;
    return (size_t)ksize * 4 * W2 + 4 * W2 + 4 * (size_t)w;
}

/*
 * Adds to out[b] the sum of the SSIM map of band b over the selected pixels of an h x w tile.
 *
 * pred / ref: the first value of the tile's window (ksize - 1 rows and columns more than the
 * tile: the halo), of type *_type (T_*), with their band and row strides in elements (columns
 * contiguous); *_so: per band, scale then offset; *_clip: clip reflectance to [0, peak].
 * kern: the window's 1-D kernel (separable, float64); c1, c2, cov_norm: the SSIM constants. sel: h rows
 * of w bytes (non-zero: selected), sel_stride bytes apart; every selected pixel's window must
 * hold valid values (others may hold anything, NaN included). scratch: cc_ssim_scratch doubles.
 * Returns 0, or -1 when a type or the window size is not supported (nothing added).
 */
CLONES int cc_ssim_tile(const void *pred, int pred_type, ptrdiff_t pred_bs, ptrdiff_t pred_rs, const double *pred_so,
                        int pred_clip, const void *ref, int ref_type, ptrdiff_t ref_bs, ptrdiff_t ref_rs,
                        const double *ref_so, int ref_clip, int nb, int h, int w, int ksize, const double *kern,
                        double peak, double c1, double c2, double cov_norm, const uint8_t *sel,
                        ptrdiff_t sel_stride, double *scratch, double *out) {
    if (!type_size(pred_type) || !type_size(ref_type) || ksize < 1 || ksize > MAX_K || h < 1 || w < 1) return -1;
    const Source p = {(const char *)pred, pred_type, pred_bs, pred_rs, pred_so, pred_clip};
    const Source r = {(const char *)ref, ref_type, ref_bs, ref_rs, ref_so, ref_clip};
    int sym = ksize % 2; /* an odd, symmetric kernel: mirrored taps are added before multiplying */
    for (int k = 0; k < ksize / 2; k++) sym &= kern[k] == kern[ksize - 1 - k];
    /* The two windows cloudclear has, with their sizes known to the compiler (unrolled loops). */
    switch (ksize) {
    case 11: return tile(11, sym, &p, &r, nb, h, w, kern, peak, c1, c2, cov_norm, sel, sel_stride, scratch, out);
    case 7: return tile(7, sym, &p, &r, nb, h, w, kern, peak, c1, c2, cov_norm, sel, sel_stride, scratch, out);
    default: return tile(ksize, sym, &p, &r, nb, h, w, kern, peak, c1, c2, cov_norm, sel, sel_stride, scratch, out);
    }
}

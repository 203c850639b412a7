/* collapselab native CPU kernel: one augmented view per image, fused, image by image.
 *
 * Computes exactly what collapselab.data.augment.apply_view computes with the torch ops
 * (resized crop + flip, colour jitter in per-image order, grayscale, Gaussian blur, solarise,
 * normalise), but for one image at a time in a buffer that stays in the L1/L2 cache, so each
 * pixel is loaded from memory once instead of once per tensor op. All random parameters are
 * drawn in Python (sample_view_params) and passed in as per-image arrays: this file has no
 * randomness and no knowledge of the recipes. The formulas, and the rounding where it matters
 * (torch.lerp's two-sided form, the division by 255), follow the torch ops in augment.py; the
 * tests compare the two paths on random parameters.
 *
 * Built on first use by collapselab.data.native with the system C compiler and loaded with
 * ctypes (no Python or torch headers). Thread safety: a call only writes out[b0:b1] and its
 * own scratch memory, so disjoint image ranges may run concurrently.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define OP_SKIP 0
#define OP_AFFINE 1
#define OP_HUE 2

/* torch.lerp on CPU: weight < 0.5 ? a + w (b - a) : b - (b - a)(1 - w) */
static inline float lerp_t(float a, float b, float w) {
    const float d = b - a, low = a + w * d, high = b - d * (1.0f - w);
    return (w < 0.5f && w > -0.5f) ? low : high; /* both computed: a select, vectorisable */
}

static inline float max_t(float a, float b) { return a > b ? a : b; }
static inline float min_t(float a, float b) { return a < b ? a : b; }

static inline float clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

static inline int reflect_index(int i, int n, int reflect) {
    if (!reflect) return i < 0 ? 0 : (i >= n ? n - 1 : i);
    if (i < 0) return -i;
    if (i >= n) return 2 * (n - 1) - i;
    return i;
}

static void gray_plane(const float *restrict x, int64_t plane, float *restrict g) {
    const float *r = x, *gg = x + plane, *b = x + 2 * plane;
    for (int64_t p = 0; p < plane; p++) g[p] = r[p] * 0.299f + gg[p] * 0.587f + b[p] * 0.114f;
}

static void hue_rotate(float *restrict x, int64_t plane, const float *restrict sigma) {
    float *r = x, *g = x + plane, *b = x + 2 * plane;
    const float s0 = sigma[0], s1 = sigma[1], s2 = sigma[2];
    for (int64_t p = 0; p < plane; p++) {
        float rv = r[p], gv = g[p], bv = b[p];
        float vmax = max_t(max_t(rv, gv), bv);
        float vmin = min_t(min_t(rv, gv), bv);
        float chroma = vmax - vmin;
        float base = vmin - chroma;
        float from_g = (bv - rv) + 2.0f * chroma, from_b = (rv - gv) + 4.0f * chroma, from_r = gv - bv;
        float num = (gv == vmax) ? from_g : from_b;
        num = (rv == vmax) ? from_r : num;
        float h6 = num / max_t(chroma, 1e-12f);
        float u0 = min_t(max_t(fabsf(fabsf(h6 + s0) - 3.0f), 1.0f), 2.0f);
        float u1 = min_t(max_t(fabsf(fabsf(h6 + s1) - 3.0f), 1.0f), 2.0f);
        float u2 = min_t(max_t(fabsf(fabsf(h6 + s2) - 3.0f), 1.0f), 2.0f);
        r[p] = base + chroma * u0;
        g[p] = base + chroma * u1;
        b[p] = base + chroma * u2;
    }
}

/* x <- clamp(f x + a gray(x) + c mean(gray(x))) for every channel */
static void affine_jitter(float *restrict x, int channels, int64_t plane, float f, float a, float c,
                          float *restrict gray) {
    const float *g = x;
    if (channels == 3) {
        gray_plane(x, plane, gray);
        g = gray;
    }
    /* 16 running float sums (vectorisable; a single running sum would be one long chain of
     * dependent adds), combined in double */
    float lanes[16] = {0.0f};
    int64_t p = 0;
    for (; p + 16 <= plane; p += 16)
        for (int l = 0; l < 16; l++) lanes[l] += g[p + l];
    double total = 0.0;
    for (; p < plane; p++) total += g[p];
    for (int l = 0; l < 16; l++) total += lanes[l];
    const float mean_c = (float)(total / (double)plane) * c;
    for (int ch = channels - 1; ch >= 0; ch--) { /* channel 0 last: for 1 channel g aliases it */
        float *xc = x + ch * plane;
        for (int64_t q = 0; q < plane; q++) xc[q] = clamp01((mean_c + g[q] * a) + xc[q] * f);
    }
}

static void blur(float *restrict x, int channels, int oh, int ow, const float *restrict k, int ksize,
                 int reflect, float *restrict tmp, float *restrict padded) {
    /* horizontal then vertical, each sum accumulated from 0 in tap order (as the torch path) */
    const int pad = ksize / 2;
    for (int ch = 0; ch < channels; ch++) {
        float *xc = x + (int64_t)ch * oh * ow;
        for (int i = 0; i < oh; i++) {
            const float *row = xc + (int64_t)i * ow;
            for (int j = 0; j < ow + 2 * pad; j++) padded[j] = row[reflect_index(j - pad, ow, reflect)];
            float *trow = tmp + (int64_t)i * ow;
            for (int j = 0; j < ow; j++) trow[j] = 0.0f;
            for (int t = 0; t < ksize; t++) {
                const float kt = k[t];
                for (int j = 0; j < ow; j++) trow[j] += kt * padded[j + t];
            }
        }
        for (int i = 0; i < oh; i++) {
            float *xrow = xc + (int64_t)i * ow;
            for (int j = 0; j < ow; j++) xrow[j] = 0.0f;
            for (int t = 0; t < ksize; t++) {
                const float *trow = tmp + (int64_t)reflect_index(i + t - pad, oh, reflect) * ow;
                const float kt = k[t];
                for (int j = 0; j < ow; j++) xrow[j] += kt * trow[j];
            }
        }
    }
}

/* Bilinear taps resampling [start, start + length) to n samples, as F.interpolate(...,
 * align_corners=False) of the sliced box (augment._interp_taps, same float32 operations):
 * source indices i0, i1 and the weight w1 of i1; mirror lists the samples in reverse order. */
static void interp_taps(int64_t start, int64_t length, int n, int mirror, int32_t *restrict i0,
                        int32_t *restrict i1, float *restrict w1) {
    const float len = (float)length, scale = len / (float)n, last = len - 1.0f;
    for (int o = 0; o < n; o++) {
        const float pos = mirror ? (float)(n - 1) - (float)o : (float)o;
        float src = (pos + 0.5f) * scale - 0.5f;
        src = src < 0.0f ? 0.0f : src;
        src = src < last ? src : last;
        const float lo = floorf(src), hi = lo + 1.0f < last ? lo + 1.0f : last;
        w1[o] = src - lo;
        i0[o] = (int32_t)lo + (int32_t)start;
        i1[o] = (int32_t)hi + (int32_t)start;
    }
}

/* Everything one call reads; see collapselab_views. */
typedef struct {
    const void *src;
    int src_is_u8, channels, h, w, oh, ow, ksize, reflect;
    float *out;
    const int64_t *boxes;
    const uint8_t *flip, *jitter, *gray, *blur_on, *solar;
    const int8_t *ops;
    const float *jf, *ja, *jc, *sigma, *kernels, *mean, *std;
    float threshold;
} view_args;

/* Per-thread scratch memory. */
typedef struct {
    float *rows, *scratch, *source, *padded, *tw;
    int32_t *ti;
} buffers;

static int buffers_alloc(buffers *m, const view_args *a) {
    const size_t plane = (size_t)a->oh * a->ow;
    m->rows = malloc(sizeof(float) * (size_t)a->channels * a->oh * a->w);
    m->scratch = malloc(sizeof(float) * plane);
    m->source = malloc(sizeof(float) * (size_t)a->channels * a->h * a->w);
    m->padded = malloc(sizeof(float) * (size_t)(a->ow + a->ksize));
    m->ti = malloc(sizeof(int32_t) * 2 * (size_t)(a->oh + a->ow));
    m->tw = malloc(sizeof(float) * (size_t)(a->oh + a->ow));
    return m->rows && m->scratch && m->source && m->padded && m->ti && m->tw;
}

static void buffers_free(buffers *m) {
    free(m->rows);
    free(m->scratch);
    free(m->source);
    free(m->padded);
    free(m->ti);
    free(m->tw);
}

static void make_view(const view_args *a, buffers *m, int64_t b) {
    const int channels = a->channels, h = a->h, w = a->w, oh = a->oh, ow = a->ow;
    const int64_t plane = (int64_t)oh * ow, image = (int64_t)channels * h * w;
    float *x = a->out + b * channels * plane;
    const float *s;
    if (a->src_is_u8) { /* as torch: x.to(float32) / 255 */
        const uint8_t *s8 = (const uint8_t *)a->src + b * image;
        for (int64_t p = 0; p < image; p++) m->source[p] = (float)s8[p] / 255.0f;
        s = m->source;
    } else {
        s = (const float *)a->src + b * image;
    }
    /* resized crop: rows, then columns */
    const int64_t *box = a->boxes + b * 4;
    int32_t *r0 = m->ti, *r1 = m->ti + oh, *c0 = m->ti + 2 * oh, *c1 = m->ti + 2 * oh + ow;
    float *rw = m->tw, *cw = m->tw + oh;
    interp_taps(box[0], box[2], oh, 0, r0, r1, rw);
    interp_taps(box[1], box[3], ow, a->flip[b] != 0, c0, c1, cw);
    for (int ch = 0; ch < channels; ch++) {
        for (int i = 0; i < oh; i++) {
            const float *top = s + ((int64_t)ch * h + r0[i]) * w;
            const float *bottom = s + ((int64_t)ch * h + r1[i]) * w;
            const float wt = rw[i];
            float *dst = m->rows + ((int64_t)ch * oh + i) * w;
            for (int j = 0; j < w; j++) dst[j] = lerp_t(top[j], bottom[j], wt);
        }
    }
    for (int64_t row = 0; row < (int64_t)channels * oh; row++) {
        const float *srow = m->rows + row * w;
        float *dst = x + row * ow;
        for (int j = 0; j < ow; j++) dst[j] = lerp_t(srow[c0[j]], srow[c1[j]], cw[j]);
    }
    /* colour jitter, slot by slot in this image's order */
    if (a->jitter[b]) {
        for (int k = 0; k < 4; k++) {
            const int64_t slot = b * 4 + k;
            if (a->ops[slot] == OP_AFFINE)
                affine_jitter(x, channels, plane, a->jf[slot], a->ja[slot], a->jc[slot], m->scratch);
            else if (a->ops[slot] == OP_HUE && channels == 3)
                hue_rotate(x, plane, a->sigma + b * 3);
        }
    }
    if (a->gray[b] && channels == 3) {
        gray_plane(x, plane, m->scratch);
        for (int ch = 0; ch < 3; ch++)
            for (int64_t p = 0; p < plane; p++) x[ch * plane + p] = m->scratch[p];
    }
    if (a->blur_on[b])
        blur(x, channels, oh, ow, a->kernels + b * a->ksize, a->ksize, a->reflect, m->scratch, m->padded);
    if (a->solar[b]) {
        const float t = a->threshold;
        for (int64_t p = 0; p < channels * plane; p++) x[p] = x[p] >= t ? 1.0f - x[p] : x[p];
    }
    if (a->mean != NULL) {
        for (int ch = 0; ch < channels; ch++) {
            const float mu = a->mean[ch], sd = a->std[ch];
            float *xc = x + ch * plane;
            for (int64_t p = 0; p < plane; p++) xc[p] = (xc[p] - mu) / sd;
        }
    }
}

/* 1 when built with OpenMP (the images of a call are then shared among `threads` threads). */
int collapselab_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Make the view of every image b0 <= b < b1. Returns 0, or -1 if scratch memory ran out.
 *
 * src: (B, C, H, W) uint8 (src_is_u8) or float32, contiguous. out: (B, C, OH, OW) float32.
 * boxes (B, 4) int64 (top, left, height, width) and flip (B,): the crop, mirrored where flip is
 * set. jitter (B,): colour jitter on/off; ops (B, 4) OP_* per slot in order; jf, ja, jc (B, 4)
 * the affine (f, a, c) per slot; sigma (B, 3) hue offsets (augment._hue_sigma). gray, blur_on,
 * solar (B,) flags; kernels (B, ksize) blur weights, reflect (else replicate) padding; mean,
 * std (C,) normalisation or NULL. Flags are uint8 0/1. threads: OpenMP threads (1 = serial);
 * with torch's libgomp (loaded first) they are torch's own intra-op threads.
 */
int collapselab_views(const void *src, int src_is_u8, int64_t b0, int64_t b1, int channels, int h,
                      int w, float *out, int oh, int ow, const int64_t *boxes, const uint8_t *flip,
                      const uint8_t *jitter, const int8_t *ops, const float *jf, const float *ja,
                      const float *jc, const float *sigma, const uint8_t *gray, const uint8_t *blur_on,
                      const float *kernels, int ksize, int reflect, const uint8_t *solar,
                      float threshold, const float *mean, const float *std, int threads) {
    const view_args a = {src, src_is_u8, channels, h, w, oh, ow, ksize, reflect, out, boxes, flip,
                         jitter, gray, blur_on, solar, ops, jf, ja, jc, sigma, kernels, mean, std,
                         threshold};
    int failed = 0;
    (void)threads;
#pragma omp parallel num_threads(threads > 0 ? threads : 1) reduction(| : failed)
    {
        buffers m;
        const int ok = buffers_alloc(&m, &a);
        failed |= !ok;
#pragma omp for schedule(static)
        for (int64_t b = b0; b < b1; b++)
            if (ok) make_view(&a, &m, b);
        buffers_free(&m);
    }
    return failed ? -1 : 0;
}

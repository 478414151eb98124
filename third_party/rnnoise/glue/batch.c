/* Written for audioprep (not part of the upstream tree): many frames in one call, so the
   caller pays its foreign-function overhead once per block instead of once per 10 ms. */

#include "rnnoise.h"

/* Denoise `frames` consecutive 480-sample frames of one channel. `in`/`out` are float
   samples in [-1, 1] (scaled to and from RNNoise's 16-bit range here); `vad` gets one
   speech probability per frame. `in` and `out` may be the same buffer. */
RNNOISE_EXPORT void audioprep_rnnoise_frames(DenoiseState *st, float *out, const float *in,
                                             int frames, float *vad) {
    float buf[480];
    int f, i;
    for (f = 0; f < frames; f++) {
        const float *x = in + (long)f * 480;
        float *y = out + (long)f * 480;
        for (i = 0; i < 480; i++) buf[i] = x[i] * 32768.f;
        vad[f] = rnnoise_process_frame(st, buf, buf);
        for (i = 0; i < 480; i++) y[i] = buf[i] * (1.f / 32768.f);
    }
}

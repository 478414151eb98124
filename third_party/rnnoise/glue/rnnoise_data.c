/* Written for audioprep (not part of the upstream tree): init_rnnoise() as rnnoise's
   weight-exchange CWriter writes it, without the weight arrays (built with
   USE_WEIGHTS_FILE: the arrays come from a blob at run time, see rnnoise_data.h). Layer
   names and shapes follow torch/rnnoise/dump_rnnoise_weights.py: conv1, dense_out and
   vad_dense unquantized; conv2 and the GRUs with int8 + float weights; GRUs sparse (8x4
   blocks), recurrent weights with their diagonal split out. */

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stddef.h>
#include "rnnoise_data.h"

#define GRU_INIT(layer, name, diag) \
    linear_init(&model->layer, arrays, name "_bias", name "_subias", name "_weights_int8", \
                name "_weights_float", name "_weights_idx", diag, name "_scale", \
                GRU1_STATE_SIZE, 3 * GRU1_STATE_SIZE)

int init_rnnoise(RNNoise *model, const WeightArray *arrays) {
    if (linear_init(&model->conv1, arrays, "conv1_bias", NULL, NULL, "conv1_weights_float",
                    NULL, NULL, NULL, 3 * CONV1_IN_SIZE, CONV1_OUT_SIZE)) return 1;
    if (linear_init(&model->conv2, arrays, "conv2_bias", "conv2_subias", "conv2_weights_int8",
                    "conv2_weights_float", NULL, NULL, "conv2_scale", 3 * CONV2_IN_SIZE,
                    CONV2_OUT_SIZE)) return 1;
    if (GRU_INIT(gru1_input, "gru1_input", NULL)) return 1;
    if (GRU_INIT(gru1_recurrent, "gru1_recurrent", "gru1_recurrent_weights_diag")) return 1;
    if (GRU_INIT(gru2_input, "gru2_input", NULL)) return 1;
    if (GRU_INIT(gru2_recurrent, "gru2_recurrent", "gru2_recurrent_weights_diag")) return 1;
    if (GRU_INIT(gru3_input, "gru3_input", NULL)) return 1;
    if (GRU_INIT(gru3_recurrent, "gru3_recurrent", "gru3_recurrent_weights_diag")) return 1;
    if (linear_init(&model->dense_out, arrays, "dense_out_bias", NULL, NULL,
                    "dense_out_weights_float", NULL, NULL, NULL,
                    CONV2_OUT_SIZE + GRU1_OUT_SIZE + GRU2_OUT_SIZE + GRU3_OUT_SIZE,
                    DENSE_OUT_OUT_SIZE)) return 1;
    if (linear_init(&model->vad_dense, arrays, "vad_dense_bias", NULL, NULL,
                    "vad_dense_weights_float", NULL, NULL, NULL,
                    CONV2_OUT_SIZE + GRU1_OUT_SIZE + GRU2_OUT_SIZE + GRU3_OUT_SIZE,
                    VAD_DENSE_OUT_SIZE)) return 1;
    return 0;
}

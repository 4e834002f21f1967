// adafactor_ for the CUDA backend and its simulation (adafactor.cpp).
#pragma once

#include "fusedopt/ops_generated.h"

namespace fusedopt::cuda {

void adafactor_aten(const ops::adafactor_::Args& a, const char* op);

}  // namespace fusedopt::cuda

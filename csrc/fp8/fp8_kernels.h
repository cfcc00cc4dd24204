// The FP8 family's kernel table (fp8_kernels.cpp).
#pragma once
#include "common/kernel_table.h"

namespace lowbit {

KernelTable fp8_kernel_table();

}  // namespace lowbit

// The INT8 family's kernel table (int8_kernels.cpp).
#pragma once
#include "common/kernel_table.h"

namespace lowbit {

KernelTable int8_kernel_table();

}  // namespace lowbit

// The mixed-input (W4A16 / W8A16) family's kernel table (wxa16_kernels.cpp).
#pragma once
#include "common/kernel_table.h"

namespace lowbit {

KernelTable wxa16_kernel_table();

}  // namespace lowbit

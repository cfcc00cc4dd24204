# Sets LOWBIT_CUDA_ARCHS, the CUDA archs the kernels are compiled for, and
# LOWBIT_CUDA_ARCHS_SOURCE, a sentence saying where that list came from (`lowbit info` shows
# it). Included by CMakeLists.txt before the list is used.
#
# An explicit list always wins: -DLOWBIT_CUDA_ARCHS=..., or at `pip install` time the
# environment variable of the same name (pyproject.toml passes it, "" when unset). Left empty,
# the list follows the GPUs visible at build time, as torch's cpp_extension does: every arch
# costs minutes of nvcc, and a card runs only its own. Archs the kernels are written for:
#   compute capability 9.0 -> 90a (wgmma), 8.9 -> 89 (fp8 mma.sync), 8.0/8.6/8.7 -> 80.
# Several GPUs build the union of their archs. A GPU of any other capability, no GPU, or no
# answer from nvidia-smi builds all three (a wheel built on a machine without a GPU must run
# on any of them). nvidia-smi answers the same on every build on one machine, so a second
# build keeps the first one's objects.

set(LOWBIT_CUDA_ARCHS "" CACHE STRING
    "CUDA archs to build for, e.g. 80;89;90a (empty: those of the GPUs visible at build time, else all three)")
set(LOWBIT_CUDA_ARCHS_ALL "80;89;90a")

function(lowbit_detect_cuda_archs out_archs out_source)
  set(${out_archs} "${LOWBIT_CUDA_ARCHS_ALL}" PARENT_SCOPE)
  # CUDA_VISIBLE_DEVICES="" (or starting with "-1") hides every GPU from CUDA.
  if(DEFINED ENV{CUDA_VISIBLE_DEVICES} AND "$ENV{CUDA_VISIBLE_DEVICES}" MATCHES "^ *(-|$)")
    set(${out_source} "default: no GPU visible at build time (CUDA_VISIBLE_DEVICES=$ENV{CUDA_VISIBLE_DEVICES})" PARENT_SCOPE)
    return()
  endif()
  find_program(LOWBIT_NVIDIA_SMI nvidia-smi)
  set(lines "")
  if(LOWBIT_NVIDIA_SMI)
    execute_process(
      COMMAND "${LOWBIT_NVIDIA_SMI}" --query-gpu=compute_cap,name --format=csv,noheader
      OUTPUT_VARIABLE smi_out ERROR_QUIET RESULT_VARIABLE smi_rc TIMEOUT 60)
    if(smi_rc EQUAL 0)
      string(REPLACE "\"" "" smi_out "${smi_out}")
      string(REGEX MATCHALL "[0-9]+\\.[0-9]+, [^\n]*" lines "${smi_out}")
    endif()
  endif()
  if(NOT lines)
    set(${out_source} "default: no GPU visible at build time" PARENT_SCOPE)
    return()
  endif()

  set(archs "")
  set(gpus "")
  set(unknown "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^([0-9]+\\.[0-9]+), *(.*[^ ]) *$" "\\1" cap "${line}")
    string(REGEX REPLACE "^([0-9]+\\.[0-9]+), *(.*[^ ]) *$" "\\2" name "${line}")
    set(gpu "${name} (compute capability ${cap})")
    if(NOT gpu IN_LIST gpus)
      list(APPEND gpus "${gpu}")
    endif()
    if(cap STREQUAL "9.0")
      list(APPEND archs 90a)
    elseif(cap STREQUAL "8.9")
      list(APPEND archs 89)
    elseif(cap MATCHES "^8\\.[067]$")
      list(APPEND archs 80)
    elseif(NOT gpu IN_LIST unknown)
      list(APPEND unknown "${gpu}")
    endif()
  endforeach()
  list(JOIN gpus ", " gpus_text)
  if(unknown)
    list(JOIN unknown ", " unknown_text)
    set(${out_source} "default: no arch of its own here for ${unknown_text}" PARENT_SCOPE)
    return()
  endif()
  # In LOWBIT_CUDA_ARCHS_ALL's order, so that the list (and the command lines) never depend
  # on the order nvidia-smi lists the GPUs in.
  set(ordered "")
  foreach(arch IN LISTS LOWBIT_CUDA_ARCHS_ALL)
    if(arch IN_LIST archs)
      list(APPEND ordered "${arch}")
    endif()
  endforeach()
  set(${out_archs} "${ordered}" PARENT_SCOPE)
  set(${out_source} "detected ${gpus_text}" PARENT_SCOPE)
endfunction()

if(NOT LOWBIT_CUDA_ARCHS STREQUAL "")
  set(LOWBIT_CUDA_ARCHS_SOURCE "LOWBIT_CUDA_ARCHS")
elseif(LOWBIT_WITH_CUDA STREQUAL "OFF")
  set(LOWBIT_CUDA_ARCHS "${LOWBIT_CUDA_ARCHS_ALL}")
  set(LOWBIT_CUDA_ARCHS_SOURCE "none: built without CUDA (LOWBIT_WITH_CUDA=OFF)")
else()
  # A normal variable: it hides the empty cache entry, which stays empty and so keeps meaning
  # "detect" at the next configure.
  lowbit_detect_cuda_archs(LOWBIT_CUDA_ARCHS LOWBIT_CUDA_ARCHS_SOURCE)
endif()
message(STATUS "lowbit: CUDA archs ${LOWBIT_CUDA_ARCHS} (${LOWBIT_CUDA_ARCHS_SOURCE})")

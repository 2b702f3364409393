# Included after every project() of the llama.cpp build (CMAKE_PROJECT_INCLUDE,
# set by scripts/arm64.sh). llama-cpp-sys-2 pins GGML_CPU_ARM_ARCH=armv8-a for
# every aarch64 Linux build that is not `target-cpu=native`, after any value
# the environment gives; this puts back the architecture the script asks for
# (RECKON_ARM_ARCH, e.g. armv8.2-a+dotprod+fp16) before ggml-cpu reads it.
if(DEFINED ENV{RECKON_ARM_ARCH} AND NOT "$ENV{RECKON_ARM_ARCH}" STREQUAL "")
  set(GGML_CPU_ARM_ARCH "$ENV{RECKON_ARM_ARCH}" CACHE STRING "ARM architecture for ggml-cpu (scripts/arm64.sh)" FORCE)
endif()

# Sourced (not run) by the scripts that build: llama.cpp's C and C++ go
# through ccache when it is installed (scripts/deps.sh installs it).
#
# Why: cargo rebuilds llama-cpp-sys-2, and with it all of llama.cpp (about
# 5 minutes on 2 cores of a 2.1 GHz Xeon), whenever the features of its build
# script's own dependencies change, and those are unified over whatever else
# the command builds: `-p reckon` or `-p reckon-trainer` instead of `--workspace`, or
# `--features reckon-trainer/cuda` (scripts/build-cuda.sh, CI), each gets a
# new OUT_DIR. The sources and flags are the same, so ccache answers those
# compiles from the first build's objects.
#
# CCACHE_BASEDIR makes the one include path inside OUT_DIR relative, and
# CCACHE_NOHASHDIR keeps the build directory out of the hash of `-g` objects
# (their DW_AT_comp_dir then names the first build's directory).
if command -v ccache >/dev/null 2>&1; then
  export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(pwd -P)} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
fi

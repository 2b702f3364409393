#!/usr/bin/env bash
# Installs the system packages reckon builds with, if any is missing:
# cmake, clang and libclang-dev (llama.cpp is built from source by
# llama-cpp-sys-2), python3 with pip (the default model is fetched from
# PyPI), for the bindings tests a JDK, JNA and npm, and for the server tests
# python3-venv, chromium and curl, for the CUDA build check unzip, and ccache
# (scripts/ccache-env.sh). Debian/Ubuntu; uses sudo when not root. Safe to
# run again.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v clang >/dev/null 2>&1 || missing+=(clang)
if ! dpkg -s libclang-dev >/dev/null 2>&1 && ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
  missing+=(libclang-dev)
fi
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# Bindings tests: a JDK for kotlinc and the JVM, JNA, npm for kotlin-compiler.
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
[ -f /usr/share/java/jna.jar ] || missing+=(libjna-java)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Server tests: a venv for the openai client, chromium for the page, curl.
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The trainer's CUDA build check: unzip unpacks NVIDIA's toolkit wheels.
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
# llama.cpp rebuilt into another OUT_DIR compiles from ccache (scripts/ccache-env.sh).
command -v ccache >/dev/null 2>&1 || missing+=(ccache)

if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing system packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo (Rust) is not installed; install it with rustup (https://rustup.rs) and run this again" >&2
  exit 1
fi

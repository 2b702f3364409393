#!/usr/bin/env bash
# Builds the native library for Android and generates the Kotlin bindings.
# Needs the Android NDK (ANDROID_NDK_HOME) and cargo-ndk:
#   rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android
#   cargo install cargo-ndk
#   bash android/build-android.sh && (cd android && ./gradlew :sample:assembleDebug)
# API level 23, static C++ runtime (no libc++_shared.so to ship), no OpenMP.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ANDROID_NDK_HOME:?set ANDROID_NDK_HOME to the NDK}"

cargo ndk -t arm64-v8a -t armeabi-v7a -t x86_64 --platform 23 -o android/src/main/jniLibs \
  build --release --locked -p reckon-bindings --no-default-features --features android-static-stdcxx,download

# Library-mode generation needs a host build of the same crate.
cargo build --release --locked -p reckon-bindings -p uniffi-bindgen
rm -rf android/build/generated/uniffi
./target/release/uniffi-bindgen generate --library target/release/libreckon_ffi.so \
  --language kotlin --out-dir android/build/generated/uniffi
echo "android/src/main/jniLibs and android/build/generated/uniffi are ready"

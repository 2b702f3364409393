#!/usr/bin/env bash
# Builds ReckonFFI.xcframework and the Swift bindings on macOS with Xcode:
#   rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios
#   bash ios/build-xcframework.sh
# Device (arm64) and simulator (arm64 + x86_64, merged with lipo) slices,
# llama.cpp with Metal. Then `swift build` / add ios/ as a package in Xcode.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(uname)" = Darwin ] || { echo "error: building the XCFramework needs macOS with Xcode" >&2; exit 1; }

export IPHONEOS_DEPLOYMENT_TARGET=15.0
for t in aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios; do
  cargo build --release --locked -p reckon-bindings --no-default-features --features metal,download --target "$t"
done
cargo build --release --locked -p reckon-bindings -p uniffi-bindgen

OUT=target/ios
rm -rf "$OUT" ios/ReckonFFI.xcframework
mkdir -p "$OUT/headers" "$OUT/sim" ios/Sources/Reckon/Generated
./target/release/uniffi-bindgen generate --library target/aarch64-apple-ios/release/libreckon_ffi.a \
  --language swift --out-dir "$OUT/swift"
cp "$OUT/swift/ReckonFFI.h" "$OUT/headers/"
cp "$OUT/swift/ReckonFFI.modulemap" "$OUT/headers/module.modulemap"
cp "$OUT/swift/Reckon.swift" ios/Sources/Reckon/Generated/Reckon.swift

lipo -create target/aarch64-apple-ios-sim/release/libreckon_ffi.a target/x86_64-apple-ios/release/libreckon_ffi.a \
  -output "$OUT/sim/libreckon_ffi.a"
xcodebuild -create-xcframework \
  -library target/aarch64-apple-ios/release/libreckon_ffi.a -headers "$OUT/headers" \
  -library "$OUT/sim/libreckon_ffi.a" -headers "$OUT/headers" \
  -output ios/ReckonFFI.xcframework
echo "ios/ReckonFFI.xcframework and ios/Sources/Reckon/Generated/Reckon.swift are ready"

#!/usr/bin/env bash
# The phone's CPU (issue 20): cross-builds `reckon` and the bindings library
# for aarch64-unknown-linux-gnu and runs them under qemu-aarch64 against the
# real default model, beside this host's build of the same commit
# (scripts/arm64.py: info, token-by-token greedy solves, floor/"Wait", cap,
# Ctrl-C, and for the phone the bindings' Python test under an ARM64
# CPython). Flavours:
#
#   phone     llama.cpp for armv8.2-a+dotprod+fp16, run as a Cortex-A76
#             (the big cores of phones from 2019 on)
#   baseline  llama.cpp for armv8-a, run as a Cortex-A53 (the oldest 64-bit
#             ARM core; what an app built for every arm64 phone gets)
#
# Writes results/arm64/report.{json,md} and the libraries' sizes. Emulation
# is slow (about an hour and a half for both flavours on 2 cores, with the
# three cold builds): a documented script, not part of CI.
#
# Where an ARM build's greedy path parts from the host's, the sampled
# log-probs must agree within the rounding scale that a portable x86-64
# build of the same commit (x86-64-v3: AVX2, no AVX-512 or AMX; built here
# too) shows against the host.
#
#   bash scripts/arm64.sh                 # both flavours
#   bash scripts/arm64.sh phone           # one
#   bash scripts/arm64.sh calibrate       # only the rounding scale; judge the stored flavours again
#   PYTHON_TEST=0 bash scripts/arm64.sh   # without the ARM64 Python test
set -euo pipefail
cd "$(dirname "$0")/.."
FLAVOURS=("$@")
[ ${#FLAVOURS[@]} -gt 0 ] || FLAVOURS=(phone baseline)
[ "${FLAVOURS[*]}" != calibrate ] || FLAVOURS=()
TARGET=aarch64-unknown-linux-gnu
OUT=results/arm64
PYROOT=.tools/arm64-python

bash scripts/deps.sh
. scripts/ccache-env.sh
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
[ -f /usr/aarch64-linux-gnu/lib/libc.so.6 ] || missing+=(libc6-dev-arm64-cross)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing the cross toolchain: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"

# An ARM64 CPython from Debian's arm64 packages, unpacked (not installed:
# nothing of the host changes but apt's list of architectures).
if [ "${PYTHON_TEST:-1}" = 1 ] && [ ! -x "$PYROOT/usr/bin/python3.11" ]; then
  echo "==> ARM64 CPython from Debian's arm64 packages"
  dpkg --print-foreign-architectures | grep -qx arm64 || { $sudo dpkg --add-architecture arm64; $sudo apt-get update -qq; }
  debs=$(mktemp -d)
  (cd "$debs" && apt-get download -q python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 \
    libffi8:arm64 zlib1g:arm64 libexpat1:arm64 libbz2-1.0:arm64 liblzma5:arm64 libssl3:arm64 libuuid1:arm64 libcrypt1:arm64 >/dev/null 2>&1)
  mkdir -p "$PYROOT"
  for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$PYROOT"; done
  rm -rf "$debs"
fi

# The host's build: the reference the tokens are compared with.
cargo build --release --locked --workspace
MODEL=$(./target/release/reckon fetch-model --quiet)
# The portable x86-64 build: the rounding scale's other side.
PORTABLE=target/x86-64-v3
RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR=$PORTABLE cargo build --release --locked -p reckon --bin reckon

specs=()
sizes="$OUT/sizes.tsv"
mkdir -p "$OUT"
# A run of some flavours keeps the other flavours' rows.
keep=$(mktemp)
if [ -f "$sizes" ]; then
  awk -F'\t' -v run=" ${FLAVOURS[*]} " 'NR > 1 && index(run, " " $1 " ") == 0' "$sizes" > "$keep"
fi
printf "flavour\tlibrary\tbytes\tstripped_bytes\n" > "$sizes"
cat "$keep" >> "$sizes"
rm -f "$keep"
for f in "${FLAVOURS[@]}"; do
  case $f in
    phone) arch=armv8.2-a+dotprod+fp16 cpu=cortex-a76 dir=target/arm64/armv8.2-a ;;
    baseline) arch=armv8-a cpu=cortex-a53 dir=target/arm64/armv8-a ;;
    *) echo "unknown flavour $f (phone, baseline)" >&2; exit 2 ;;
  esac
  echo "==> $f: cross-building for $TARGET, llama.cpp -march=$arch"
  # RUSTFLAGS="" replaces .cargo/config.toml's target-cpu=native (this
  # host's CPU is not the target's); arch.cmake puts the ARM architecture
  # past llama-cpp-sys-2's fixed armv8-a.
  export RECKON_ARM_ARCH=$arch CMAKE_PROJECT_INCLUDE=$PWD/scripts/arm64/arch.cmake RUSTFLAGS="" \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc CARGO_TARGET_DIR=$dir
  cargo build --release --locked --target "$TARGET" -p reckon --bin reckon
  # The bindings alone, as an app links them (the lean feature set; cargo
  # builds llama.cpp again for it): for the phone, the build an app ships.
  [ "$f" = phone ] && cargo build --release --locked --target "$TARGET" -p reckon-bindings --lib
  unset RECKON_ARM_ARCH CMAKE_PROJECT_INCLUDE RUSTFLAGS CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER CARGO_TARGET_DIR
  rel=$dir/$TARGET/release
  # The kernels the flags select: dot-product instructions only where asked for.
  sdot=$(aarch64-linux-gnu-objdump -d "$rel/reckon" | grep -c $'\tsdot' || true)
  echo "    sdot instructions in reckon: $sdot"
  case $f in
    phone) [ "$sdot" -gt 0 ] || { echo "the phone build has no dot-product kernels" >&2; exit 1; } ;;
    baseline) [ "$sdot" -eq 0 ] || { echo "the baseline build uses dot-product instructions" >&2; exit 1; } ;;
  esac
  libs=(reckon)
  [ "$f" = phone ] && libs+=(libreckon_ffi.so libreckon_ffi.a)
  for lib in "${libs[@]}"; do
    aarch64-linux-gnu-strip -o "$rel/$lib.stripped" "$rel/$lib"
    printf "%s\t%s\t%s\t%s\n" "$f" "$lib" "$(stat -c %s "$rel/$lib")" "$(stat -c %s "$rel/$lib.stripped")" >> "$sizes"
  done
  spec="$f=$rel/reckon=$cpu"
  if [ "${PYTHON_TEST:-1}" = 1 ] && [ "$f" = phone ]; then
    py=$dir/python
    rm -rf "$py"
    ./target/release/uniffi-bindgen generate --no-format --library "$rel/libreckon_ffi.so" --language python --out-dir "$py" >/dev/null
    cp "$rel/libreckon_ffi.so" "$py/"
    spec="$spec=$PYROOT,$py"
  fi
  specs+=("$spec")
done
echo "==> sizes"; column -t "$sizes"
python3 scripts/arm64.py ./target/release/reckon "$MODEL" ../shared/data/gsm8k/train.jsonl "$OUT" \
  --calibrate "$PORTABLE/release/reckon" "${specs[@]}"

#!/usr/bin/env bash
# Installs what roguewatch needs from the distribution, idempotently:
#   - bcc for Debian's python3 (python3-bpfcc; PyPI's "bcc" is an unrelated package),
#   - libsystemd-dev and pkg-config (systemd-python builds against them),
#   - a kernel header tree under /lib/modules/$(uname -r)/{build,source} for bcc.
# Where the distribution has no headers for the running kernel (custom kernels), the generic
# headers of the distribution are linked in the Debian layout, with a warning: struct layouts
# may differ, which is why the probes only read tracepoint arguments and helper results.
set -euo pipefail

kver=$(uname -r)
arch=$(dpkg --print-architecture)
packages=(python3-bpfcc python3-venv libsystemd-dev pkg-config gcc make libseccomp2)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

have_headers() { [ -e "/lib/modules/$kver/build/include/linux/kconfig.h" ] || [ -e "/lib/modules/$kver/build/Makefile" ]; }

if [ ${#missing[@]} -gt 0 ] || ! have_headers; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    if [ ${#missing[@]} -gt 0 ]; then
        echo "install-deps: installing ${missing[*]}"
        apt-get install -y -q "${missing[@]}"
    fi
    if ! have_headers; then
        if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
            apt-get install -y -q "linux-headers-$kver"
        else
            apt-get install -y -q "linux-headers-$arch"
        fi
    fi
fi

if ! have_headers; then
    # Newest generic header tree of the distribution, linked in the Debian layout.
    build=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$build" ]; then
        echo "install-deps: no kernel header tree found under /usr/src; install linux-headers-$arch" >&2
        exit 1
    fi
    common=${build%-"$arch"}-common
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$build" "/lib/modules/$kver/build"
    [ -d "$common" ] && ln -sfn "$common" "/lib/modules/$kver/source"
    echo "install-deps: WARNING: no headers for kernel $kver in the distribution;" \
         "linked $(basename "$build") instead. They do not match the running kernel:" \
         "roguewatch's probes read only tracepoint arguments, so this is enough for them." >&2
fi

#!/usr/bin/env bash
# Builds roguewatch's binary packages into dist/ (`make package` runs this):
#   dist/roguewatch_<version>_<arch>.deb       with dpkg-deb
#   dist/roguewatch-<version>-1.<rpmarch>.rpm  with rpmbuild, when it is installed
# FORMATS="deb" (or "rpm", "deb rpm": the default) chooses; MAINTAINER overrides the field.
#
# The package carries a self-contained virtual environment at /opt/roguewatch/venv, made from
# Debian's python3 with --system-site-packages (bcc comes from python3-bpfcc), holding
# roguewatch (non-editable) and its pinned dependencies. A venv is not relocatable, so it is
# built inside the staging root and every staging path in it is then rewritten to the final
# one (scripts' shebangs, pyvenv.cfg, activate*); the byte-code is compiled afterwards with
# the final paths; the build fails if any staging path is left. Needs network access to PyPI.
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"
formats=${FORMATS:-deb rpm}
maintainer=${MAINTAINER:-roguewatch maintainers <roguewatch@localhost>}
prefix=/opt/roguewatch
venv=$prefix/venv

say() { echo "package: $*"; }
die() { echo "package: ERROR: $*" >&2; exit 1; }

# --- build tools ------------------------------------------------------------------------------
# python3-venv (ensurepip), python3-dev + gcc + libsystemd-dev + pkg-config (systemd-python is
# built from source), dpkg-dev (dpkg-shlibdeps); rpm (rpmbuild) only for the .rpm.
need=(python3-venv python3-dev gcc libsystemd-dev pkg-config dpkg-dev)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing build packages: ${missing[*]} (apt-get install them)"
    say "installing build packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" ||
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; }
fi

python=/usr/bin/python3
pyver=$($python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
python=/usr/bin/python$pyver # the venv is bound to this minor version: say so, and depend on it
version=$($python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
arch=$(dpkg --print-architecture)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)}

work=$top/build/package
stage=$work/root
rm -rf "$work"
mkdir -p "$work/src" "$stage" dist

# --- the virtual environment ------------------------------------------------------------------
# Built from a copy of the sources, so that pip's in-tree build leaves nothing in the work tree.
say "roguewatch $version for $arch, Python $pyver"
tar -C "$top" --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' \
    -cf - pyproject.toml README.md daemon probes rules | tar -C "$work/src" -xf -
$python -m venv --system-site-packages "$stage$venv"
vpy=$stage$venv/bin/python
say "installing roguewatch and its pinned dependencies into $venv"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$vpy" -m pip install -q --no-compile "$work/src"
# pip and setuptools were only needed to install: the service never installs anything.
PIP_DISABLE_PIP_VERSION_CHECK=1 "$vpy" -m pip uninstall -q -y pip setuptools
find "$stage$venv" -name __pycache__ -type d -prune -exec rm -rf {} +

# Generated from the CLI's own parsers, with the staged interpreter (it finds its pyvenv.cfg).
mkdir -p "$stage/usr/share/man/man1" "$stage/usr/share/man/man8" \
    "$stage/usr/share/bash-completion/completions"
"$vpy" "$here/manpage.py" roguewatch | gzip -9n > "$stage/usr/share/man/man1/roguewatch.1.gz"
"$vpy" "$here/manpage.py" roguewatchd | gzip -9n > "$stage/usr/share/man/man8/roguewatchd.8.gz"
"$vpy" "$here/completion.py" > "$stage/usr/share/bash-completion/completions/roguewatch"
ln -s roguewatch "$stage/usr/share/bash-completion/completions/roguewatchd"

# The documented example configuration must name every key and load cleanly.
sed -E 's/^#([a-z_]+:)/\1/' "$here/roguewatchd.yaml.example" > "$work/example.yaml"
"$vpy" - "$work/example.yaml" <<'EOF' || die "packaging/roguewatchd.yaml.example is out of date"
import dataclasses, sys, yaml
from roguewatch.policy import config
keys = set(yaml.safe_load(open(sys.argv[1])))
known = {f.name for f in dataclasses.fields(config.Config)}
if keys != known:
    sys.exit(f"example config: missing {sorted(known - keys)}, unknown {sorted(keys - known)}")
cfg = config.load(sys.argv[1])
if cfg != config.Config():
    sys.exit("example config: a value differs from the built-in default")
EOF

# Staging paths -> final paths, then byte-code compiled with the final paths.
grep -rlIZ -- "$stage" "$stage$venv" | xargs -0 -r sed -i "s|$stage$venv|$venv|g"
if grep -rlI -- "$stage" "$stage$venv"; then die "staging paths left in the files above"; fi
if find "$stage$venv" -type l -lname "$stage*" | grep .; then die "symlinks into the staging root"; fi
$python -m compileall -q -j0 -s "$stage" -p / "$stage$venv/lib" >/dev/null
# Nothing else in the venv would be written at run time (ProtectSystem=strict forbids it
# under systemd anyway); postrm removes /opt/roguewatch whole in case something was.

# --- the rest of the tree ---------------------------------------------------------------------
install -d "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/logrotate.d" \
    "$stage/usr/share/doc/roguewatch"
ln -s "$venv/bin/roguewatch" "$stage/usr/bin/roguewatch"
ln -s "$venv/bin/roguewatchd" "$stage/usr/bin/roguewatchd"
grep -qx 'ExecStart=/usr/bin/roguewatchd --quiet' systemd/roguewatchd.service ||
    die "systemd/roguewatchd.service: ExecStart is not /usr/bin/roguewatchd --quiet"
install -m 0644 systemd/roguewatchd.service "$stage/lib/systemd/system/roguewatchd.service"
install -m 0644 "$here/logrotate" "$stage/etc/logrotate.d/roguewatch"
install -m 0644 README.md "$here/roguewatchd.yaml.example" "$stage/usr/share/doc/roguewatch/"
cat > "$stage/usr/share/doc/roguewatch/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: roguewatch
Comment: /opt/roguewatch/venv also holds roguewatch's Python dependencies, each under its own
 licence (see the *.dist-info directories there): $(sed -n '/^dependencies = \[/,/^\]/p' pyproject.toml | grep -o '"[^"]*"' | tr -d '"' | tr '\n' ' ')

Files: *
Copyright: the roguewatch authors
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
EOF
# Fixed mtimes for what we generated (reproducibility); byte-code records its sources' mtimes,
# so the venv keeps the times pip gave it.
find "$stage" -path "$stage$venv" -prune -o -newermt "@$SOURCE_DATE_EPOCH" \
    -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# --- .deb -------------------------------------------------------------------------------------
build_deb() {
    local deb=dist/roguewatch_${version}_${arch}.deb
    local ctl=$stage/DEBIAN
    install -d "$ctl"
    # Shared libraries the venv's extension modules need from the system (dpkg-shlibdeps wants
    # a debian/control to run in; the libraries the wheels bundle are found through RPATH).
    mkdir -p "$work/shlibs/debian"
    printf 'Source: roguewatch\n\nPackage: roguewatch\nArchitecture: any\n' \
        > "$work/shlibs/debian/control"
    local elfs shlibs
    mapfile -t elfs < <(find "$stage$venv" -type f -name '*.so*' -exec sh -c \
        'head -c4 "$1" | grep -q ELF && echo "$1"' _ {} \;)
    shlibs=$(cd "$work/shlibs" && dpkg-shlibdeps -O --ignore-missing-info \
        -l"$stage$venv/lib" "${elfs[@]}" 2>"$work/shlibdeps.log" | sed -n 's/^shlibs:Depends=//p') ||
        true
    [ -n "$shlibs" ] || { cat "$work/shlibdeps.log" >&2; die "dpkg-shlibdeps found nothing"; }
    local depends="python$pyver, python3 (>= 3.11), python3-bpfcc, libsystemd0, $shlibs"
    depends+=", linux-headers-$arch | linux-headers-generic | linux-headers"
    cat > "$ctl/control" <<EOF
Package: roguewatch
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: $depends
Recommends: logrotate
Suggests: bash-completion
Section: admin
Priority: optional
Description: watch autonomous AI agents and stop them when they go rogue
 roguewatch follows the processes of AI-agent sessions with eBPF tracepoint probes (bcc)
 and alerts, at once, when they reach outside their mandate: egress to where they were not
 allowed, persistence that outlives their session, evading shutdown, tampering with the tools
 that watch them; it can kill, freeze, or refuse egress in the kernel.
 .
 This package installs the roguewatch command, the roguewatchd service (not started or
 enabled: systemctl enable --now roguewatchd) and a virtual environment with their Python
 dependencies in /opt/roguewatch, bound to Python $pyver.
EOF
    install -m 0755 "$here/debian/postinst" "$here/debian/prerm" "$here/debian/postrm" "$ctl/"
    echo /etc/logrotate.d/roguewatch > "$ctl/conffiles"
    (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
        xargs -0 md5sum) > "$ctl/md5sums"
    chmod 0644 "$ctl/control" "$ctl/conffiles" "$ctl/md5sums"
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
    rm -rf "$ctl"
    say "built $deb ($(du -h "$deb" | cut -f1), installed $(du -sh --exclude=DEBIAN "$stage" | cut -f1))"
}

# --- .rpm -------------------------------------------------------------------------------------
build_rpm() {
    if ! command -v rpmbuild >/dev/null; then
        say "rpmbuild not found (apt-get install rpm): no .rpm built"
        return 0
    fi
    local rpmarch
    case $arch in
        amd64) rpmarch=x86_64 ;; arm64) rpmarch=aarch64 ;; *) rpmarch=$arch ;;
    esac
    mkdir -p "$work/rpm"
    rpmbuild -bb --quiet --target "$rpmarch" \
        --define "_topdir $work/rpm" \
        --define "_rpmdir $top/dist" \
        --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
        --define "rw_stage $stage" \
        --define "rw_version $version" \
        --define "rw_pyver $pyver" \
        "$here/rpm/roguewatch.spec" > "$work/rpmbuild.log" 2>&1 ||
        { cat "$work/rpmbuild.log" >&2; die "rpmbuild failed"; }
    local rpm=dist/roguewatch-$version-1.$rpmarch.rpm
    [ -f "$rpm" ] || die "rpmbuild did not write $rpm"
    say "built $rpm ($(du -h "$rpm" | cut -f1))"
}

for f in $formats; do
    case $f in
        deb) build_deb ;;
        rpm) build_rpm ;;
        *) die "unknown format $f (deb, rpm)" ;;
    esac
done

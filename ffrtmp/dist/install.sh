#!/bin/sh
# Installs ffrtmp from this release tarball (for hosts without dpkg):
#   ./install.sh [--prefix DIR]      default /usr/local
#   ./install.sh --uninstall [--prefix DIR]
# Installs the binary, man pages, completions and docs under the prefix, the
# units in /etc/systemd/system (naming the prefix's binary), the sysusers
# entry in /etc/sysusers.d, the events file's logrotate entry, and
# /etc/ffrtmp/policy.toml unless one exists.
# Like the Debian package it never enables or starts the daemon, and
# uninstalling stops every ffrtmp (workloads run on, limited), removes the
# empty job cgroups it made, and keeps an edited policy.
set -eu

prefix=/usr/local
uninstall=""
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    *) echo "usage: $0 [--prefix DIR] [--uninstall]" >&2; exit 2 ;;
    esac
done
case "$prefix" in
/*) ;;
*) echo "install.sh: --prefix must be absolute: $prefix" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
manifest=$prefix/share/ffrtmp/installed-files

if [ -n "$uninstall" ]; then
    [ -f "$manifest" ] || { echo "install.sh: nothing installed under $prefix" >&2; exit 1; }
    if [ -d /run/systemd/system ]; then
        systemctl stop ffrtmp-watch.service 2>/dev/null || true
    fi
    # As the package's prerm: run wrappers detach on SIGUSR1 (SIGTERM may
    # be forwarded to their stream), the others on SIGTERM.
    for dir in /proc/[0-9]*; do
        if [ "$dir/exe" -ef "$prefix/bin/ffrtmp" ]; then
            sig=TERM
            if [ "$(tr '\0' '\n' <"$dir/cmdline" 2>/dev/null | sed -n 2p)" = run ]; then
                sig=USR1
            fi
            kill -"$sig" "${dir#/proc/}" 2>/dev/null || true
        fi
    done
    sleep 1
    "$prefix/bin/ffrtmp" cleanup --format text >/dev/null 2>&1 || true
    while IFS= read -r f; do
        rm -f "$f"
    done <"$manifest"
    rm -f "$manifest"
    for d in "$prefix"/share/ffrtmp/*/; do rmdir "$d" 2>/dev/null || true; done
    rmdir "$prefix/share/ffrtmp" "$prefix/share/doc/ffrtmp" 2>/dev/null || true
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    echo "ffrtmp uninstalled from $prefix (/etc/ffrtmp/policy.toml kept)"
    exit 0
fi

installed=""
put() { # MODE SOURCE TARGET
    install -D -m "$1" "$2" "$3"
    installed="$installed
$3"
}
put 0755 "$here/bin/ffrtmp" "$prefix/bin/ffrtmp"
for f in "$here"/share/man/man1/*; do
    put 0644 "$f" "$prefix/share/man/man1/${f##*/}"
done
put 0644 "$here/share/bash-completion/completions/ffrtmp" "$prefix/share/bash-completion/completions/ffrtmp"
put 0644 "$here/share/zsh/vendor-completions/_ffrtmp" "$prefix/share/zsh/site-functions/_ffrtmp"
put 0644 "$here/share/fish/vendor_completions.d/ffrtmp.fish" "$prefix/share/fish/vendor_completions.d/ffrtmp.fish"
for f in "$here"/share/doc/ffrtmp/*; do
    put 0644 "$f" "$prefix/share/doc/ffrtmp/${f##*/}"
done
# Prometheus rules, their tests and a scrape example; the event schema.
for f in "$here"/share/ffrtmp/*/* "$here"/share/ffrtmp/*.json; do
    [ -f "$f" ] || continue
    put 0644 "$f" "$prefix/share/ffrtmp/${f#"$here"/share/ffrtmp/}"
done
for unit in ffrtmp-watch.service ffrtmp-wrapper.service; do
    tmp=$(mktemp)
    sed -e "s|/usr/bin/ffrtmp|$prefix/bin/ffrtmp|g" \
        -e "s|/usr/share/doc/ffrtmp|$prefix/share/doc/ffrtmp|g" \
        "$here/lib/systemd/system/$unit" >"$tmp"
    put 0644 "$tmp" "/etc/systemd/system/$unit"
    rm -f "$tmp"
done
put 0644 "$here/lib/sysusers.d/ffrtmp.conf" /etc/sysusers.d/ffrtmp.conf
if [ ! -e /etc/ffrtmp/policy.toml ]; then
    install -D -m 0644 "$here/etc/ffrtmp/policy.toml" /etc/ffrtmp/policy.toml
fi
if [ -d /etc/logrotate.d ]; then
    put 0644 "$here/etc/logrotate.d/ffrtmp" /etc/logrotate.d/ffrtmp
fi
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers /etc/sysusers.d/ffrtmp.conf
elif ! getent passwd ffrtmp >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir / \
        --shell /usr/sbin/nologin --comment "ffrtmp delegated workloads" ffrtmp
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
mkdir -p "$prefix/share/ffrtmp"
printf '%s\n' "$installed" | sed '/^$/d' >"$manifest"
echo "ffrtmp installed under $prefix; its daemon is not enabled:"
echo "    systemctl enable --now ffrtmp-watch.service"

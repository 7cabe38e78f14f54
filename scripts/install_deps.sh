#!/usr/bin/env bash
# Install everything frankenpy needs to build and test, on a fresh Debian 12, as root.
#
# Usage: bash scripts/install_deps.sh [--bench] [--dev]
#   --bench  also install the tools the benchmarks compare against:
#            supervisor, nginx, php8.2-fpm, apache2 + libapache2-mod-php8.2, the C HTTP
#            libraries bench_http_libs.py compares (libmicrohttpd-dev, libevent-dev), and
#            redis-server + php8.2-redis (bench_workers.py: tasks against a Redis LPUSH/BRPOP
#            round trip)
#   --dev    also install Debian's PHP-Parser 4.x (package php-parser), needed only by
#            scripts/gen_arginfo.sh to regenerate csrc/frankenphp_arginfo.h (which is committed)
#
# Idempotent: when everything is already installed it only refreshes apt's lists.
set -euo pipefail

want_bench=0
want_dev=0
for arg in "$@"; do
    case "$arg" in
        --bench) want_bench=1 ;;
        --dev) want_dev=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install_deps.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "install_deps.sh: must run as root (apt-get install)" >&2
    exit 1
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian packages.
#   libphp8.2-embed  /usr/lib/libphp8.2.so (NTS, SONAME libphp.so)
#   php8.2-dev       headers and php-config8.2
#   php8.2-cli       php8.2 binary (gen_stub.php, comparisons)
#   php8.2-common    ctype.so posix.so sockets.so tokenizer.so pdo.so (and more)
#   php8.2-mbstring  mbstring.so
#   php8.2-sqlite3   pdo_sqlite.so sqlite3.so
#   php8.2-opcache   opcache.so
#   php8.2-xml       dom.so xsl.so xmlreader.so simplexml.so (tests: extensions that call into dom)
#   gcc libc6-dev make  C toolchain for csrc/ (usually present already)
#   wrk              HTTP load from another process (tests/test_http.py, benchmarks)
#   libh2o-evloop-dev libssl-dev pkg-config
#                    the native HTTP server's library (csrc/http_server.c; its headers
#                    include OpenSSL's, and the server makes its TLS contexts with OpenSSL),
#                    found with pkg-config
#   openssl curl     tests/test_http_tls.py: a self-signed certificate, and an HTTP/2 client
#                    (Debian's curl is built with nghttp2)
#   strace           tests/test_syscalls.py: the system calls an execution makes, counted
apt_pkgs=(
    libphp8.2-embed php8.2-dev php8.2-cli php8.2-common
    php8.2-mbstring php8.2-sqlite3 php8.2-opcache php8.2-xml
    gcc libc6-dev make
    wrk
    libh2o-evloop-dev libssl-dev pkg-config
    openssl curl
    strace
)
# cmake >= 3.18: use the one on PATH (e.g. from pip) if there is one, else Debian's (3.25).
if ! command -v cmake >/dev/null 2>&1; then
    apt_pkgs+=(cmake)
fi
if [ "$want_bench" -eq 1 ]; then
    apt_pkgs+=(supervisor nginx php8.2-fpm apache2 libapache2-mod-php8.2)
    apt_pkgs+=(libmicrohttpd-dev libevent-dev)
    apt_pkgs+=(redis-server php8.2-redis)
fi
if [ "$want_dev" -eq 1 ]; then
    apt_pkgs+=(php-parser)
fi

export DEBIAN_FRONTEND=noninteractive
echo "install_deps: apt-get update"
apt-get update -qq
echo "install_deps: apt-get install ${apt_pkgs[*]}"
# Quiet on success; on failure show apt's full output.
apt_log="$(mktemp)"
trap 'rm -f "$apt_log"' EXIT
if ! apt-get install -y -q --no-install-recommends "${apt_pkgs[@]}" >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    echo "install_deps.sh: apt-get install failed" >&2
    exit 1
fi

# The binaries link to libphp's SONAME, libphp.so: ldconfig makes that link
# (/usr/lib/libphp.so -> libphp8.2.so) when the package is installed; make sure it is there.
if ! ldconfig -p | grep '^[[:space:]]*libphp\.so ' >/dev/null; then
    echo "install_deps: ldconfig (libphp.so not in the linker cache)"
    ldconfig
fi

# Python packages: the list lives in requirements-dev.txt.
echo "install_deps: pip install -r requirements-dev.txt"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check -r "$repo_root/requirements-dev.txt"

echo "install_deps: done"

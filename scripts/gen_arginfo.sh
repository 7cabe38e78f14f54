#!/usr/bin/env bash
# Regenerate csrc/frankenphp_arginfo.h from csrc/frankenphp.stub.php (and
# csrc/worker_handle_arginfo.h from csrc/worker_handle.stub.php) with php-src's gen_stub.php, as
# shipped by Debian's php8.2-dev.
#
# Usage: bash scripts/gen_arginfo.sh
# Needs: php8.2-cli (with tokenizer.so), php8.2-dev, and Debian's PHP-Parser 4.x
#        (package php-parser; `bash scripts/install_deps.sh --dev` installs it).
#
# gen_stub.php looks for PHP-Parser in <its own dir>/PHP-Parser-4.15.1/lib/PhpParser and
# downloads it from GitHub when missing, which cannot work here. So we copy gen_stub.php
# into a temporary directory and put there a PHP-Parser-4.15.1/lib/PhpParser symlink to
# Debian's /usr/share/php/PhpParser. No system file is modified.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stubs=("$repo_root/csrc/frankenphp.stub.php" "$repo_root/csrc/worker_handle.stub.php")
php_bin="${PHP:-php8.2}"
php_config="${PHP_CONFIG:-php-config8.2}"

ext_dir="$("$php_config" --extension-dir)"
gen_stub="$ext_dir/build/gen_stub.php"
parser_dir=/usr/share/php/PhpParser
[ -f "$gen_stub" ] || { echo "gen_arginfo.sh: $gen_stub not found (install php8.2-dev)" >&2; exit 1; }
[ -d "$parser_dir" ] || { echo "gen_arginfo.sh: $parser_dir not found (bash scripts/install_deps.sh --dev)" >&2; exit 1; }
# The PHP-Parser version gen_stub.php expects (its initPhpParser()).
parser_version="$(sed -n 's/^ *\$version = "\([0-9.]*\)";/\1/p' "$gen_stub" | head -n1)"
[ -n "$parser_version" ] || { echo "gen_arginfo.sh: cannot read the PHP-Parser version from $gen_stub" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$gen_stub" "$tmp/gen_stub.php"
mkdir -p "$tmp/PHP-Parser-$parser_version/lib"
ln -s "$parser_dir" "$tmp/PHP-Parser-$parser_version/lib/PhpParser"

# -n: ignore the system php.ini and conf.d, then load just the tokenizer gen_stub needs.
# -f: always rewrite the header, even when the stub's hash has not changed.
for stub in "${stubs[@]}"; do
    "$php_bin" -n -d extension=tokenizer "$tmp/gen_stub.php" -f "$stub"
    echo "gen_arginfo.sh: wrote ${stub%.stub.php}_arginfo.h"
done

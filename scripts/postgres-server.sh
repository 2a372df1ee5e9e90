#!/usr/bin/env bash
# Make sure this machine has PostgreSQL's server programs (initdb, pg_ctl, postgres), which
# the PostgreSQL sweep tests start a throw-away server with. Debian keeps them out of PATH
# (/usr/lib/postgresql/<version>/bin); nothing is done when they are there. Otherwise, as root
# with apt-get, the postgresql package is installed; if that cannot be done, the tests say so
# and skip (this script never fails the caller).
set -uo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
    exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "postgres-server: installing Debian's postgresql package for the sweep tests" >&2
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 ||
       { apt-get update -qq >/dev/null 2>&1 &&
         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1; }; then
        exit 0
    fi
fi
echo "postgres-server: no PostgreSQL server programs here; the PostgreSQL sweep tests will be skipped" >&2
exit 0

#!/bin/sh
# The keelson.local/mariadb image's entrypoint (/usr/local/bin/docker-entrypoint.sh).
#
#   empty /var/lib/mysql ─► mariadb-install-db into /var/lib/mysql/.initializing
#                           (system tables, then the MARIADB_* database and user)
#                         ─► moved into place, mysql/ last: its presence means "initialized"
#   then                  ─► exec mariadbd (PID 1: SIGTERM shuts it down cleanly)
#
# Environment, read only when the data directory is empty:
#   MARIADB_ROOT_PASSWORD  required: root@localhost's password (root also
#                          logs in without one over the socket, as OS user root,
#                          so `kubectl exec POD -- mariadb` works)
#   MARIADB_DATABASE       a database to create (optional)
#   MARIADB_USER           a user, allowed from any host, with every privilege
#   MARIADB_PASSWORD       on MARIADB_DATABASE (both required together)
#
# mariadbd runs as user mysql when this starts as root with the capabilities
# to hand files over (CHOWN, SETUID, SETGID), else as whoever runs it (root
# in a container that has dropped those capabilities).
#
# Arguments: none or flags (`--innodb-buffer-pool-size=64M`) run mariadbd
# with them; anything else (`sh`) is run instead.
set -eu

datadir=/var/lib/mysql
rundir=/run/mysqld

log() { echo "entrypoint: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- mariadbd "$@"
fi
case "$1" in
  mariadbd | /usr/sbin/mariadbd) shift ;;
  *) exec "$@" ;;
esac

# Whom mariadbd runs as.
user=""
if [ "$(id -u)" -eq 0 ]; then
  user=root
  caps=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
  # CAP_CHOWN (0), CAP_SETGID (6), CAP_SETUID (7).
  wanted=$((0xc1))
  if [ -n "$caps" ] && [ $((0x$caps & wanted)) -eq "$wanted" ]; then
    user=mysql
  fi
fi

mkdir -p "$rundir" "$datadir"
if [ "$user" = mysql ]; then
  # Files a root-run server (or an empty volume) left are handed over.
  find "$datadir" "$rundir" ! -user mysql -exec chown mysql:mysql {} +
fi

# A string literal for SQL.
sql_string() {
  printf "'%s'" "$(printf '%s' "$1" | sed "s/[\\\\']/\\\\&/g")"
}
# An identifier for SQL (the backticks are SQL's, not the shell's).
# shellcheck disable=SC2016
sql_name() {
  printf '`%s`' "$(printf '%s' "$1" | sed 's/`/``/g')"
}

initialize() {
  [ -n "${MARIADB_ROOT_PASSWORD:-}" ] ||
    die "the data directory $datadir is empty and MARIADB_ROOT_PASSWORD is not set"
  if [ -n "${MARIADB_USER:-}" ] && [ -z "${MARIADB_PASSWORD:-}" ]; then
    die "MARIADB_USER is set but MARIADB_PASSWORD is not"
  fi
  if [ "${MARIADB_USER:-}" = root ]; then
    die "MARIADB_USER must not be root: root is set up from MARIADB_ROOT_PASSWORD"
  fi
  staging=$datadir/.initializing
  rm -rf "$staging"
  mkdir -p "$staging"
  if [ "$user" = mysql ]; then chown mysql:mysql "$staging"; fi

  sql=$rundir/initialize.sql
  (
    umask 077
    {
      echo "-- Run by mariadb-install-db after the system tables (bootstrap mode)."
      echo "FLUSH PRIVILEGES;"
      # install-db grants proxying to root@<this hostname>: meaningless in a pod.
      echo "DELETE FROM mysql.proxies_priv WHERE Host <> 'localhost';"
      echo "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD($(sql_string "$MARIADB_ROOT_PASSWORD"));"
      if [ -n "${MARIADB_DATABASE:-}" ]; then
        echo "CREATE DATABASE IF NOT EXISTS $(sql_name "$MARIADB_DATABASE");"
      fi
      if [ -n "${MARIADB_USER:-}" ]; then
        echo "CREATE USER $(sql_string "$MARIADB_USER")@'%' IDENTIFIED BY $(sql_string "$MARIADB_PASSWORD");"
        if [ -n "${MARIADB_DATABASE:-}" ]; then
          echo "GRANT ALL ON $(sql_name "$MARIADB_DATABASE").* TO $(sql_string "$MARIADB_USER")@'%';"
        fi
      fi
    } >"$sql"
  )
  if [ "$user" = mysql ]; then chown mysql:mysql "$sql"; fi

  log "initializing $datadir (database '${MARIADB_DATABASE:-}', user '${MARIADB_USER:-}')"
  set -- --datadir="$staging" --skip-test-db --skip-name-resolve \
    --auth-root-authentication-method=socket --auth-root-socket-user=root --extra-file="$sql"
  if [ -n "$user" ]; then set -- --user="$user" "$@"; fi
  if ! mariadb-install-db "$@" >&2; then
    rm -f "$sql"
    die "mariadb-install-db failed; $datadir is left uninitialized and is retried at the next start"
  fi
  rm -f "$sql"

  # Everything but mysql/ first: a crash before the last move leaves an
  # uninitialized directory, which the next start initializes again.
  for entry in "$staging"/*; do
    name=${entry##*/}
    [ "$name" = mysql ] && continue
    rm -rf "${datadir:?}/$name"
    mv "$entry" "$datadir/$name"
  done
  mv "$staging/mysql" "$datadir/mysql"
  rmdir "$staging"
  log "initialized $datadir"
}

if [ ! -d "$datadir/mysql" ]; then
  initialize
fi

if [ -n "$user" ]; then set -- --user="$user" "$@"; fi
log "starting mariadbd $*"
exec mariadbd "$@"

#!/bin/sh
# Install cpagent as a systemd service on a device:
#   - system user/group cpagent (no login shell, home /var/lib/cpagent), member of dialout
#   - venv /opt/cpagent with the agent from this source tree (the unit's ExecStart)
#   - /etc/cpagent/agent.toml from docs/agent.example.toml if absent (0640 root:cpagent)
#   - /var/lib/cpagent (0750 cpagent:cpagent), the unit in /etc/systemd/system, daemon-reload + enable
#
# Usage: systemd/install.sh [--root DIR] [--no-venv]
#   --root DIR  install into DIR as if it were / (an image, a test): no useradd, chown, pip or systemctl
#   --no-venv   do not create/update /opt/cpagent (the venv is provided some other way)
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=/
BUILD_VENV=yes
VENV=/opt/cpagent
PYTHON=${PYTHON:-python3}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --no-venv) BUILD_VENV=no; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$ROOT" && pwd)
if [ "$ROOT" = / ]; then
    LIVE=yes
    P=
else
    LIVE=no
    P=$ROOT
fi

say() { echo "install.sh: $*"; }

if [ "$LIVE" = yes ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must run as root (or pass --root DIR)" >&2
    exit 1
fi

# --- user and group ---
if [ "$LIVE" = yes ]; then
    getent group cpagent >/dev/null || groupadd --system cpagent
    getent group dialout >/dev/null || groupadd --system dialout
    if ! getent passwd cpagent >/dev/null; then
        useradd --system --gid cpagent --groups dialout --home-dir /var/lib/cpagent --no-create-home \
            --shell /usr/sbin/nologin --comment "EV chargepoint agent" cpagent
    fi
    usermod --append --groups dialout cpagent
else
    say "--root $ROOT: skipping useradd/groupadd (create user cpagent in the image's first boot)"
fi

# own PATH USER:GROUP: chown only on the live system, where the user exists.
own() {
    if [ "$LIVE" = yes ]; then chown "$2" "$1"; fi
}

# --- directories ---
install -d -m 0755 "$P/etc" "$P/var/lib" "$P/etc/systemd/system"
install -d -m 0750 "$P/etc/cpagent"
own "$P/etc/cpagent" root:cpagent
install -d -m 0750 "$P/var/lib/cpagent"
own "$P/var/lib/cpagent" cpagent:cpagent

# --- configuration: never overwrite a device's own agent.toml ---
if [ -e "$P/etc/cpagent/agent.toml" ]; then
    say "keeping existing /etc/cpagent/agent.toml"
else
    install -m 0640 "$SRC/docs/agent.example.toml" "$P/etc/cpagent/agent.toml"
    own "$P/etc/cpagent/agent.toml" root:cpagent
    say "wrote /etc/cpagent/agent.toml from docs/agent.example.toml: edit it before starting"
fi

# --- the software (ExecStart=/opt/cpagent/bin/cpagent) ---
if [ "$LIVE" = yes ] && [ "$BUILD_VENV" = yes ]; then
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$SRC"
else
    say "not building $VENV (--root or --no-venv)"
fi

# --- the unit ---
install -m 0644 "$SRC/systemd/cpagent.service" "$P/etc/systemd/system/cpagent.service"

if [ "$LIVE" = yes ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable cpagent.service
    say "enabled cpagent.service; start it with: systemctl start cpagent"
else
    say "systemd is not running here: skipping daemon-reload/enable"
fi

#!/usr/bin/env bash
# Install rescue-t2i's robot runtime: a venv with the base package only (no torch), a verified
# bundle, and the systemd service bound to the operator link's serial adapter.
#
#   sudo deploy/install.sh --bundle /media/usb/bundles/rescue-v1
#   deploy/install.sh --prefix /tmp/rt --state /tmp/rt/state --no-service   # no root, no systemd
#
# Offline robots: build a wheelhouse on a connected machine of the same CPU architecture
# (`pip wheel --wheel-dir wheels .`) and pass --find-links wheels. pip honours PIP_CONSTRAINT.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=/opt/rescue-t2i
state=/var/lib/rescue-t2i
source_dir=$(dirname "$here")
device=/dev/rescue-radio
user=rescue
python=python3
systemd_dir=/etc/systemd/system
find_links=""
bundle=""
service=1

die() { echo "install.sh: $*" >&2; exit 2; }
usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --state) state=${2:?--state needs a directory}; shift 2 ;;
    --source) source_dir=${2:?--source needs a directory or wheel}; shift 2 ;;
    --bundle) bundle=${2:?--bundle needs a directory}; shift 2 ;;
    --device) device=${2:?--device needs a path}; shift 2 ;;
    --user) user=${2:?--user needs a name}; shift 2 ;;
    --python) python=${2:?--python needs an interpreter}; shift 2 ;;
    --systemd-dir) systemd_dir=${2:?--systemd-dir needs a directory}; shift 2 ;;
    --find-links) find_links=${2:?--find-links needs a directory}; shift 2 ;;
    --no-service) service=0; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[ -e "$source_dir" ] || die "--source $source_dir: not found"
[ -z "$bundle" ] || [ -f "$bundle/manifest.json" ] || die "--bundle $bundle: no manifest.json there"
case "$device" in /*) ;; *) die "--device $device: must be an absolute path" ;; esac
command -v "$python" >/dev/null || die "--python $python: not found"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "--python $python: Python >= 3.10 is required (found $("$python" -V 2>&1))"
if [ "$service" = 1 ] && [ "$(id -u)" != 0 ]; then
  die "installing the service needs root (or use --no-service)"
fi

echo "[install] venv in $prefix/venv"
mkdir -p "$prefix"
"$python" -m venv "$prefix/venv"
pip_args=(--quiet --disable-pip-version-check)
[ -n "$find_links" ] && pip_args+=(--no-index --find-links "$find_links")
"$prefix/venv/bin/python" -m pip install "${pip_args[@]}" "$source_dir"
# The robot install must stay small: the base package never pulls torch.
if "$prefix/venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
  echo "[install] warning: torch is importable in $prefix/venv; the robot does not need it" >&2
fi
"$prefix/venv/bin/rescue-edge" --help >/dev/null

mkdir -p "$prefix/share/rescue-t2i"
cp "$here/DEPLOY.md" "$prefix/share/rescue-t2i/DEPLOY.md"
mkdir -p "$state/images"

if [ -n "$bundle" ]; then
  echo "[install] verifying bundle $bundle"
  "$prefix/venv/bin/rescue-edge" info "$bundle" >/dev/null
  # Swap in atomically; keep the previous bundle for a quick rollback.
  rm -rf "$state/bundle.new"
  cp -r "$bundle" "$state/bundle.new"
  if [ -d "$state/bundle" ]; then rm -rf "$state/bundle.prev"; mv "$state/bundle" "$state/bundle.prev"; fi
  mv "$state/bundle.new" "$state/bundle"
  echo "[install] bundle placed at $state/bundle"
fi

if command -v systemd-escape >/dev/null; then
  device_unit=$(systemd-escape --path --suffix=device "$device")
else  # systemd's path escaping for the common case: drop the leading '/', '/' → '-', '-' → '\x2d'
  device_unit="$(printf '%s' "${device#/}" | sed -e 's/-/\\x2d/g' -e 's#/#-#g').device"
fi
mkdir -p "$systemd_dir"
unit="$systemd_dir/rescue-t2i.service"
sed -e "s#@PREFIX@#$prefix#g" -e "s#@BUNDLE@#$state/bundle#g" -e "s#@STATE@#$state#g" \
    -e "s#@USER@#$user#g" -e "s#@DEVICE@#$device#g" -e "s#@DEVICE_UNIT@#${device_unit//\\/\\\\}#g" \
    "$here/rescue-t2i.service" > "$unit.tmp"
mv "$unit.tmp" "$unit"
echo "[install] unit written to $unit"

if [ "$service" = 1 ]; then
  # The radio's own group (deploy/99-rescue-serial.rules), so dialout members cannot open it.
  getent group rescue-radio >/dev/null || groupadd --system rescue-radio
  if ! id "$user" >/dev/null 2>&1; then
    useradd --system --home-dir "$state" --shell /usr/sbin/nologin --groups rescue-radio "$user"
  else
    usermod -a -G rescue-radio "$user"
  fi
  # The operator-link key: made once, root-only; the unit hands it over as a credential.
  key=/etc/rescue-t2i/operator.key
  if [ ! -f "$key" ]; then
    install -d -m 0700 /etc/rescue-t2i
    "$prefix/venv/bin/rescue-edge" keygen "$key" >/dev/null
    echo "[install] new operator-link key at $key: copy it to the ground station (DEPLOY.md)"
  fi
  chown -R "$user:$user" "$state"
  systemctl daemon-reload
  systemctl enable --now rescue-t2i.service
  echo "[install] service enabled; follow it with: journalctl -u rescue-t2i -f"
else
  echo "[install] --no-service: not creating user $user or enabling the unit"
fi
echo "[install] done: $prefix/venv/bin/rescue-edge"

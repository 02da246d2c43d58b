#!/usr/bin/env bash
# Install rescue-t2i's robot runtime: a root-owned venv with the base package only (no torch), a
# verified read-only bundle beside it, and the hardened systemd service bound to the serial adapter.
#
#   sudo deploy/install.sh --bundle /media/usb/bundles/rescue-v1
#   deploy/install.sh --prefix /tmp/rt --state /tmp/rt/state --no-service   # no root, no systemd
#   deploy/install.sh --dry-run --device /dev/ttyUSB0    # validate, print the unit, write nothing
#
# Layout: PREFIX/venv, PREFIX/bundle (root-owned, read-only to the service; PREFIX/bundle.prev
# keeps the previous one), STATE/images (the only folder the service writes).
# Offline robots: --find-links WHEELS, a wheelhouse with a hash-pinned requirements.txt made on the
# workstation by deploy/hash_wheels.py; pip then installs nothing whose sha256 is not listed.
# Every argument is checked against an allow-list before anything is written (deploy/DEPLOY.md § 6).
set -euo pipefail
umask 022

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
dry_run=0

die() { printf 'install.sh: %s\n' "$*" >&2; exit 2; }
usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
# Values are printed with %q so that a hostile one cannot forge more lines of output.
need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) need "$@"; prefix=$2; shift 2 ;;
    --state) need "$@"; state=$2; shift 2 ;;
    --source) need "$@"; source_dir=$2; shift 2 ;;
    --bundle) need "$@"; bundle=$2; shift 2 ;;
    --device) need "$@"; device=$2; shift 2 ;;
    --user) need "$@"; user=$2; shift 2 ;;
    --python) need "$@"; python=$2; shift 2 ;;
    --systemd-dir) need "$@"; systemd_dir=$2; shift 2 ;;
    --find-links) need "$@"; find_links=$2; shift 2 ;;
    --no-service) service=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown option $(printf '%q' "$1") (see --help)" ;;
  esac
done

# --- validation: allow-lists only; nothing below this block runs before all of it passed -------
SAFE_PATH='^(/[A-Za-z0-9_][A-Za-z0-9._+-]*)+/?$'
# Folders a --prefix or --state must never be: handing one to the installer (or chown) is fatal.
SYSTEM_DIRS=(/ /bin /boot /dev /etc /home /lib /lib32 /lib64 /libx32 /media /mnt /opt /proc /root
  /run /sbin /srv /sys /tmp /usr /usr/bin /usr/lib /usr/local /usr/local/bin /usr/local/lib
  /usr/local/share /usr/sbin /usr/share /var /var/cache /var/lib /var/log /var/tmp /var/run)

safe_path() {  # flag value: absolute, safe characters, no '.'/'..' components, no '//'
  local flag=$1 value=$2
  [[ $value =~ $SAFE_PATH ]] || die "$flag $(printf '%q' "$value"): must be an absolute path of letters, digits and ._+- only"
  case "/$value/" in */./*|*/../*) die "$flag $value: '.' and '..' are not allowed" ;; esac
  [ ${#value} -le 200 ] || die "$flag: path longer than 200 characters"
}
not_system_dir() {
  local flag=$1 value=${2%/} dir
  for dir in "${SYSTEM_DIRS[@]}"; do
    [ "${value:-/}" != "$dir" ] || die "$flag $value: a system folder; choose a folder of its own (e.g. $3)"
  done
}

safe_path --prefix "$prefix"; prefix=${prefix%/}
not_system_dir --prefix "$prefix" /opt/rescue-t2i
safe_path --state "$state"; state=${state%/}
not_system_dir --state "$state" /var/lib/rescue-t2i
case "$prefix/" in "$state"/*) die "--prefix $prefix: inside --state $state (the bundle must stay out of the service's reach)" ;; esac
case "$state/" in "$prefix"/*) die "--state $state: inside --prefix $prefix (the venv and bundle must stay root-only)" ;; esac
safe_path --systemd-dir "$systemd_dir"

safe_path --source "$source_dir"
if [ -f "$source_dir" ]; then
  case "$source_dir" in *.whl) ;; *) die "--source $source_dir: not a wheel (.whl) or a directory" ;; esac
elif [ ! -d "$source_dir" ]; then
  die "--source $source_dir: not found"
fi

if [ -n "$bundle" ]; then
  safe_path --bundle "$bundle"
  [ ! -L "${bundle%/}" ] || die "--bundle $bundle: is a symlink; pass the real folder"
  [ -d "$bundle" ] || die "--bundle $bundle: not a folder"
  [ -f "$bundle/manifest.json" ] && [ ! -L "$bundle/manifest.json" ] || die "--bundle $bundle: no manifest.json there"
  # A bundle is flat: regular files only (the loader refuses anything else; refuse it here first).
  odd=$(find "$bundle" -mindepth 1 \( ! -type f -o -type l \) -print -quit)
  [ -z "$odd" ] || die "--bundle $bundle: $(printf '%q' "${odd#"$bundle"/}") is not a regular file (symlinks, folders and devices are refused)"
  for file in "$bundle"/*; do
    name=${file##*/}
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]] || die "--bundle $bundle: file name $(printf '%q' "$name") is not allowed"
  done
fi

safe_path --device "$device"
case "$device" in /dev/*) ;; *) die "--device $device: must be under /dev" ;; esac
if [ -e "$device" ]; then
  [ -c "$device" ] || die "--device $device: not a character device"
elif [ "$service" = 1 ]; then
  die "--device $device: no such device; plug the adapter in (or use --no-service)"
fi

[[ $user =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--user $(printf '%q' "$user"): not a valid user name"
case "$user" in root|nobody|daemon|bin|sys|dialout) die "--user $user: a shared or privileged account; the service needs its own" ;; esac
if id -u "$user" >/dev/null 2>&1 && [ "$(id -u "$user")" = 0 ]; then
  die "--user $user: has uid 0"
fi

[[ $python =~ ^[A-Za-z0-9._/+-]+$ ]] || die "--python $(printf '%q' "$python"): not a plain interpreter name or path"
command -v "$python" >/dev/null || die "--python $python: not found"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "--python $python: Python >= 3.10 is required (found $("$python" -V 2>&1))"

if [ -n "$find_links" ]; then
  safe_path --find-links "$find_links"
  [ -d "$find_links" ] || die "--find-links $find_links: not a folder"
  [ -f "$find_links/requirements.txt" ] || die "--find-links $find_links: no requirements.txt with hashes (make it with deploy/hash_wheels.py)"
  grep -q -- '--hash=sha256:' "$find_links/requirements.txt" || die "--find-links $find_links: requirements.txt has no --hash=sha256: pins"
fi

if [ "$service" = 1 ] && [ "$dry_run" = 0 ] && [ "$(id -u)" != 0 ]; then
  die "installing the service needs root (or use --no-service)"
fi

# --- rendering: a template filled by Python string replacement, each value checked again -------
if command -v systemd-escape >/dev/null; then
  device_unit=$(systemd-escape --path --suffix=device "$device")
else  # systemd's path escaping for the allow-listed characters: '-' → '\x2d', '/' → '-'
  device_unit="$(printf '%s' "${device#/}" | sed -e 's/-/\\x2d/g' -e 's#/#-#g').device"
fi
# The serial driver's device class (ttyUSB, ttyACM, ttyAMA, ttyS, ...) from /proc/devices, only
# when the device's own name is that class plus a number: never a broad class such as "tty" or
# "mem".
device_class_allow=""
if [ -c "$device" ] && [ -r /proc/devices ]; then
  device_base=$(basename "$(readlink -f "$device")")
  device_major=$((16#$(stat -L -c %t "$device")))
  while read -r number name; do
    if [ "$number" = "$device_major" ] && [[ $name =~ ^tty[A-Za-z]+$ ]] \
        && [[ $device_base =~ ^${name}[0-9]+$ ]]; then
      device_class_allow="DeviceAllow=char-$name rw"
    fi
  done < <(awk '/^Character/ {c = 1; next} /^Block/ {c = 0} c' /proc/devices)
fi
case "$state" in
  /var/lib/?*) images_writable="StateDirectory=${state#/var/lib/}/images" ;;  # made by systemd
  *) images_writable="ReadWritePaths=$state/images" ;;
esac

render_unit() {  # render_unit OUT: the unit for the validated values
  "$python" - "$here/rescue-t2i.service" "$1" \
    "PREFIX=$prefix" "BUNDLE=$prefix/bundle" "IMAGES=$state/images" "USER=$user" \
    "DEVICE=$device" "DEVICE_UNIT=$device_unit" "IMAGES_WRITABLE=$images_writable" \
    "DEVICE_CLASS_ALLOW=$device_class_allow" <<'PY'
import re, sys
template, out, *pairs = sys.argv[1:]
text = open(template, encoding="utf-8").read()
for pair in pairs:
    key, value = pair.split("=", 1)
    # Belt and braces after the shell's allow-list: one line, no specifier or quoting characters
    # (one space only in a "DeviceAllow=... rw" line; the class line may be empty).
    plain = r"[A-Za-z0-9_./+=\\-]+"
    if not (re.fullmatch(plain, value) or (key == "DEVICE_CLASS_ALLOW" and
            re.fullmatch(rf"(DeviceAllow=char-tty[A-Za-z]+ rw)?", value))):
        sys.exit(f"install.sh: refusing to render {key}={value!r}")
    text = text.replace(f"@{key}@", value)
left = re.findall(r"@[A-Z_]+@", text)
if left:
    sys.exit(f"install.sh: unit template has unknown placeholders {left}")
if out == "-":
    sys.stdout.write(text)
else:
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
PY
}

if [ "$dry_run" = 1 ]; then
  render_unit -
  exit 0
fi

# --- installation ------------------------------------------------------------------------------
echo "[install] venv in $prefix/venv"
mkdir -p "$prefix"
"$python" -m venv "$prefix/venv"
pip=("$prefix/venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if [ -n "$find_links" ]; then
  # Offline: only the wheels listed, each checked against its sha256.
  "${pip[@]}" --no-index --find-links "$find_links" --require-hashes --only-binary :all: \
    -r "$find_links/requirements.txt"
else
  constraints=()
  [ -f "$source_dir/constraints.txt" ] && constraints=(--constraint "$source_dir/constraints.txt")
  "${pip[@]}" "${constraints[@]}" "$source_dir"
fi
# The robot install must stay small: the base package never pulls torch.
if "$prefix/venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
  echo "[install] warning: torch is importable in $prefix/venv; the robot does not need it" >&2
fi
"$prefix/venv/bin/rescue-edge" --help >/dev/null

mkdir -p "$prefix/share/rescue-t2i"
cp "$here/DEPLOY.md" "$prefix/share/rescue-t2i/DEPLOY.md"
mkdir -p "$state/images"

if [ "$service" = 1 ]; then
  # The radio's own group (deploy/99-rescue-serial.rules), so dialout members cannot open it.
  getent group rescue-radio >/dev/null || groupadd --system rescue-radio
  if ! id "$user" >/dev/null 2>&1; then
    useradd --system --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin \
      --groups rescue-radio "$user"
  else
    usermod -a -G rescue-radio "$user"
  fi
fi

if [ -n "$bundle" ]; then
  echo "[install] copying bundle $bundle"
  rm -rf "$prefix/bundle.new"
  mkdir -m 0755 "$prefix/bundle.new"
  for file in "$bundle"/*; do  # regular files only (checked above); never follows a link
    install -m 0644 "$file" "$prefix/bundle.new/${file##*/}"
  done
  # Verify the copy that will be served, as the unprivileged user that will serve it.
  verify=("$prefix/venv/bin/rescue-edge" info "$prefix/bundle.new")
  if [ "$(id -u)" = 0 ] && id "$user" >/dev/null 2>&1; then
    verify=(runuser -u "$user" -- "${verify[@]}")
  fi
  if ! "${verify[@]}" >/dev/null; then
    rm -rf "$prefix/bundle.new"
    die "--bundle $bundle: refused by rescue-edge info (above); nothing was replaced"
  fi
  # Swap in; keep the previous bundle for a quick rollback.
  if [ -d "$prefix/bundle" ]; then rm -rf "$prefix/bundle.prev"; mv "$prefix/bundle" "$prefix/bundle.prev"; fi
  mv "$prefix/bundle.new" "$prefix/bundle"
  echo "[install] bundle placed at $prefix/bundle (read-only to the service)"
fi

mkdir -p "$systemd_dir"
unit="$systemd_dir/rescue-t2i.service"
render_unit "$unit.tmp"
mv "$unit.tmp" "$unit"
echo "[install] unit written to $unit"

if [ -e "$state/bundle" ]; then
  echo "[install] note: $state/bundle is left from an older install; the service now reads $prefix/bundle (remove the old one)" >&2
fi
if [ "$service" = 1 ]; then
  # The operator-link key: made once, root-only; the unit hands it over as a credential.
  key=/etc/rescue-t2i/operator.key
  if [ ! -f "$key" ]; then
    install -d -m 0700 /etc/rescue-t2i
    "$prefix/venv/bin/rescue-edge" keygen "$key" >/dev/null
    echo "[install] new operator-link key at $key: copy it to the ground station (DEPLOY.md)"
  fi
  chown root:root "$state" && chmod 0755 "$state"  # older installs gave it to the service user
  chown "$user:$user" "$state/images"  # only the images folder; systemd keeps it so
  systemctl daemon-reload
  systemctl enable --now rescue-t2i.service
  echo "[install] service enabled; follow it with: journalctl -u rescue-t2i -f"
else
  echo "[install] --no-service: not creating user $user or enabling the unit"
fi
echo "[install] done: $prefix/venv/bin/rescue-edge"

#!/usr/bin/env bash
# Builds the local demo image warmpool/agent:latest (and warmpool/scratch-test:latest, used by
# tests) from Debian's busybox-static, because no registry can be pulled from. Does nothing
# when the images already exist, unless --force is given.
set -euo pipefail

image=warmpool/agent:latest
force=${1:-}

have() { docker image inspect "$1" >/dev/null 2>&1; }

if [ "$force" != "--force" ] && have "$image"; then
  echo "build-demo-image: $image already present"
  exit 0
fi

busybox=""
for p in /bin/busybox /usr/bin/busybox; do
  if [ -x "$p" ] && "$p" --help 2>&1 | head -1 | grep -q BusyBox && file -L "$p" 2>/dev/null | grep -q static; then
    busybox=$p
  fi
done
if [ -z "$busybox" ]; then
  echo "build-demo-image: installing Debian's busybox-static"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq busybox-static file >/dev/null
  busybox=$(command -v busybox)
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"   # the image's / (mktemp makes it 0700; rootless Podman's vfs keeps that)
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/work" "$root/root"
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
mkdir -p "$root/usr/bin" && ln -s /bin/env "$root/usr/bin/env"
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
agent:x:1000:1000:agent:/work:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/false
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
agent:x:1000:
nogroup:x:65534:
GROUP
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'WORKDIR /work' \
  --change 'CMD ["/bin/sh"]' \
  - "$image" >/dev/null
echo "build-demo-image: built $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"

#!/usr/bin/env bash
# Make libvirt/QEMU ready on a host without systemd (CI, containers): install Debian's
# packages when missing, let QEMU run as root without a security driver (no AppArmor or
# SELinux here), and start virtlogd and libvirtd by hand. Safe to run again: it changes
# only what is missing. On a host with systemd, install the packages and use
# `systemctl start libvirtd` instead.
set -euo pipefail

pkgs=()
command -v virsh >/dev/null 2>&1 || pkgs+=(libvirt-clients)
command -v libvirtd >/dev/null 2>&1 || pkgs+=(libvirt-daemon-system libvirt-daemon-driver-qemu)
[ -e /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so ] || pkgs+=(libvirt-daemon-driver-qemu)
command -v qemu-system-x86_64 >/dev/null 2>&1 || pkgs+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || pkgs+=(qemu-utils)
command -v mkfs.ext4 >/dev/null 2>&1 || pkgs+=(e2fsprogs)
id libvirt-qemu >/dev/null 2>&1 || pkgs+=(libvirt-daemon-system)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "installing Debian packages: ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold "${pkgs[@]}" >/dev/null
fi

conf=/etc/libvirt/qemu.conf
if ! grep -q '^# osr: ' "$conf" 2>/dev/null; then
  printf '\n# osr: no security driver on this host; QEMU runs as root\nsecurity_driver = "none"\nuser = "root"\ngroup = "root"\n' >>"$conf"
fi

# libvirtd runs only the hook scripts it found when it started: osr's fence hook
# (deploy/libvirt, the same text osr agent --host libvirt installs) goes in first
mkdir -p /run/libvirt /var/lib/libvirt/qemu /var/log/libvirt/qemu /etc/libvirt/hooks/qemu.d
hook=/etc/libvirt/hooks/qemu.d/50-osr-fence
restart=0
if ! cmp -s "$(dirname "$0")/../deploy/libvirt/50-osr-fence" "$hook"; then
  install -m 0755 "$(dirname "$0")/../deploy/libvirt/50-osr-fence" "$hook"
  restart=1
fi
pgrep -x virtlogd >/dev/null 2>&1 || virtlogd -d
if [ "$restart" = 1 ] && pgrep -x libvirtd >/dev/null 2>&1; then
  pkill -x libvirtd
  for _ in $(seq 1 20); do pgrep -x libvirtd >/dev/null 2>&1 || break; sleep 0.5; done
fi
if ! pgrep -x libvirtd >/dev/null 2>&1; then
  libvirtd -d
fi
for _ in $(seq 1 30); do
  virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "libvirtd did not answer on qemu:///system" >&2
exit 1

#!/usr/bin/env bash
# vmtest/run.sh: run a static test binary inside a Debian kernel under qemu.
#
#   vmtest/run.sh KERNEL TESTBINARY [ENV=VAL ...] -- [test args...]
#
# KERNEL is a kernel series (6.1, 6.12, ...: the newest plain amd64
# linux-image package of that series that apt knows) or a full Debian package
# name (linux-image-6.1.0-57-amd64). TESTBINARY must be static (for Go:
# CGO_ENABLED=0 go test -c). It runs as root (pid 1's child) in an initramfs
# with proc, sysfs, devtmpfs, tracefs, debugfs, bpffs and cgroup2 mounted,
# with the ENV=VAL pairs exported and the test args as its arguments.
#
# The script exits with the test binary's exit code, 124 if the guest timed
# out, 125 if the guest stopped without reporting one (kernel panic, init
# died), 2 for a usage error.
#
# Environment:
#   VMTEST_CACHE    kernel cache (default /var/cache/verifierlog-vmtest)
#   VMTEST_TIMEOUT  seconds before the guest is killed (default 900)
#   VMTEST_MEM      guest memory (default 2G)
#   VMTEST_APPEND   extra kernel command line
#   VMTEST_LOGLEVEL console loglevel while the test runs (default 5: kernel
#                   warnings and worse reach the console; boot stays quiet)
#   VMTEST_PRE      shell commands (busybox sh) run in the guest before the
#                   test, e.g. 'grep -w bpf_prog_load /proc/kallsyms'
#   VMTEST_WORKDIR  host directory copied into the guest as the test's
#                   working directory (default: an empty /work)
#   VMTEST_LOG      also write the whole console log to this file
set -euo pipefail
shopt -s extglob

prog=vmtest
say() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() { say "error: $*"; exit "${2:-125}"; }
usage() {
	cat >&2 <<'EOF'
usage: vmtest/run.sh KERNEL TESTBINARY [ENV=VAL ...] -- [test args...]
  KERNEL      6.1, 6.12 (newest Debian amd64 kernel of that series) or a
              Debian package name such as linux-image-6.1.0-57-amd64
  TESTBINARY  a static executable, e.g. from CGO_ENABLED=0 go test -c
  ENV=VAL     exported in the guest before the binary runs
  test args   passed to the binary (e.g. -test.v -test.run TestX)
env: VMTEST_CACHE VMTEST_TIMEOUT VMTEST_MEM VMTEST_APPEND VMTEST_LOGLEVEL
     VMTEST_PRE VMTEST_WORKDIR VMTEST_LOG (see the top of this script)
EOF
	exit 2
}

# ---- arguments --------------------------------------------------------------

[[ $# -ge 2 ]] || usage
case $1 in -h|--help) usage ;; esac
kernel_arg=$1
test_bin=$2
shift 2
envs=()
while [[ $# -gt 0 && $1 != -- ]]; do
	[[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { say "not ENV=VAL: $1"; usage; }
	envs+=("$1")
	shift
done
[[ $# -gt 0 ]] && shift # the --
test_args=("$@")

[[ -f $test_bin && -x $test_bin ]] || die "test binary $test_bin: not an executable file" 2
if command -v readelf >/dev/null && LC_ALL=C readelf -lW "$test_bin" 2>/dev/null | grep INTERP >/dev/null; then
	die "test binary $test_bin is dynamically linked; build it with CGO_ENABLED=0" 2
fi

cache=${VMTEST_CACHE:-/var/cache/verifierlog-vmtest}
timeout_s=${VMTEST_TIMEOUT:-900}
mem=${VMTEST_MEM:-2G}
loglevel=${VMTEST_LOGLEVEL:-5}
[[ $timeout_s =~ ^[0-9]+$ ]] || die "VMTEST_TIMEOUT must be seconds, not $timeout_s" 2
[[ $loglevel =~ ^[0-9]$ ]] || die "VMTEST_LOGLEVEL must be 0-9, not $loglevel" 2
if [[ -n ${VMTEST_WORKDIR:-} && ! -d $VMTEST_WORKDIR ]]; then
	die "VMTEST_WORKDIR $VMTEST_WORKDIR is not a directory" 2
fi

t_start=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# ---- host tools -------------------------------------------------------------

apt_updated=0
apt_update_once() {
	[[ $apt_updated == 1 ]] && return 0
	say "apt-get update"
	apt-get update -qq >&2 || die "apt-get update failed"
	apt_updated=1
}

need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
command -v cpio >/dev/null || need_pkgs+=(cpio)
# busybox (the dynamic one) and busybox-static both install /bin/busybox.
dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep 'ok installed' >/dev/null || need_pkgs+=(busybox-static)
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
	[[ $(id -u) == 0 ]] || die "need ${need_pkgs[*]} installed (run as root to install them)"
	say "installing ${need_pkgs[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2; then
		apt_update_once
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2 ||
			die "apt-get install ${need_pkgs[*]} failed"
	fi
fi
busybox=/bin/busybox
command -v readelf >/dev/null && LC_ALL=C readelf -lW "$busybox" 2>/dev/null | grep INTERP >/dev/null && die "$busybox is not static (install busybox-static)"

# ---- kernel -----------------------------------------------------------------

# candidates PATTERN: package names matching the regex that apt can install,
# newest first.
candidates() {
	local names
	names=$(apt-cache search --names-only "$1" 2>/dev/null | awk '{print $1}' | grep -E "$1" || true)
	[[ -n $names ]] || return 0
	# shellcheck disable=SC2086 # one word per name
	apt-cache policy $names 2>/dev/null |
		awk '/^[^ ]/ { sub(":$", ""); p = $0 } /^  Candidate: / && $2 != "(none)" { print p }' |
		sort -rV
}

case $kernel_arg in
linux-image-*) pattern="^$(printf '%s' "$kernel_arg" | sed 's/[.+]/\\&/g')\$" ;;
[0-9]*.[0-9]*)
	[[ $kernel_arg =~ ^[0-9]+\.[0-9]+$ ]] || die "KERNEL must be a series like 6.1 or 6.12, or a package name" 2
	v=${kernel_arg//./\\.}
	# 6.1: linux-image-6.1.0-57-amd64; 6.12: linux-image-6.12.117+deb12-amd64.
	# Not -rt-, -cloud-, -dbg, -unsigned: the plain (signed) amd64 flavour.
	pattern="^linux-image-${v}(\\.0-[0-9]+|\\.[0-9]+\\+deb[0-9]+)-amd64\$"
	;;
*) die "KERNEL must be a series like 6.1 or 6.12, or a package name" 2 ;;
esac

mkdir -p "$cache/kernels"
pkg=$(candidates "$pattern" | sed -n 1p)
if [[ -z $pkg ]]; then
	apt_update_once
	pkg=$(candidates "$pattern" | sed -n 1p)
fi
if [[ -z $pkg ]]; then
	# No apt answer (offline, no lists): fall back on the newest cached one.
	pkg=$(find "$cache/kernels" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null |
		grep -E "$pattern" | sort -rV | sed -n 1p || true)
	[[ -n $pkg ]] || die "no Debian kernel package matches $kernel_arg (pattern $pattern)"
	say "apt knows no package for $kernel_arg; using cached $pkg"
fi

kdir=$cache/kernels/$pkg
if [[ ! -f $kdir/.done ]]; then
	exec 9>"$cache/.lock"
	flock 9
	if [[ ! -f $kdir/.done ]]; then
		say "fetching $pkg into $cache"
		dl=$(mktemp -d "$cache/dl.XXXXXX")
		(cd "$dl" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2) ||
			{ rm -rf "$dl"; die "apt-get download $pkg failed"; }
		deb=$(ls "$dl"/*.deb)
		# Debian's kernel packages carry their modules; a split-off modules
		# package would show in Depends.
		deps=$(dpkg-deb -f "$deb" Depends || true)
		if grep -q 'linux-modules' <<<"$deps"; then
			say "note: $pkg depends on a separate modules package ($deps); not fetched, everything needed is expected built in"
		fi
		rm -rf "$kdir"
		dpkg -x "$deb" "$kdir"
		dpkg-deb -f "$deb" Package Version >"$kdir/.package"
		rm -rf "$dl"
		touch "$kdir/.done"
	fi
	flock -u 9
	exec 9>&-
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* 2>/dev/null | sed -n 1p || true)
config=$(ls "$kdir"/boot/config-* 2>/dev/null | sed -n 1p || true)
[[ -n $vmlinuz && -f $vmlinuz ]] || die "no boot/vmlinuz-* in $kdir"
kver=$(awk '/^Version:/ {print $2}' "$kdir/.package" 2>/dev/null || true)

# What the tests need must be built in: the initramfs loads no modules.
if [[ -n $config ]]; then
	missing=()
	for opt in BPF_SYSCALL BPF_JIT DEBUG_INFO_BTF KPROBES KPROBE_EVENTS BPF_EVENTS \
		FTRACE_SYSCALLS FUNCTION_TRACER DYNAMIC_FTRACE_WITH_DIRECT_CALLS DEBUG_FS \
		DEVTMPFS SERIAL_8250 SERIAL_8250_CONSOLE BLK_DEV_INITRD RD_GZIP CGROUPS; do
		grep -qx "CONFIG_$opt=y" "$config" || missing+=("$opt")
	done
	[[ ${#missing[@]} -eq 0 ]] || say "warning: $pkg lacks built-in CONFIG_${missing[*]}; tests may fail"
fi

# ---- initramfs --------------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/vmtest.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# sq WORD: WORD quoted for a POSIX shell.
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,etc,work,vmtest}
cp "$busybox" "$root/bin/busybox"
cp "$test_bin" "$root/vmtest/$(basename "$test_bin")"
if [[ -n ${VMTEST_WORKDIR:-} ]]; then
	cp -a "$VMTEST_WORKDIR"/. "$root/work/"
fi
nonce=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
marker=VMTEST_EXIT

{
	echo "# generated by vmtest/run.sh"
	for kv in "${envs[@]}"; do
		echo "export ${kv%%=*}=$(sq "${kv#*=}")"
	done
	printf 'set --'
	for a in "${test_args[@]}"; do printf ' %s' "$(sq "$a")"; done
	echo
	echo "VMTEST_BIN=$(sq "/vmtest/$(basename "$test_bin")")"
	echo "VMTEST_NONCE=$nonce"
	echo "VMTEST_LOGLEVEL=$loglevel"
} >"$root/etc/vmtest.env"
printf '%s\n' "${VMTEST_PRE:-}" >"$root/etc/vmtest.pre"

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm /root
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing || echo "vmtest: cannot mount tracefs"
mount -t debugfs debugfs /sys/kernel/debug || echo "vmtest: cannot mount debugfs"
mount -t bpf bpf /sys/fs/bpf || echo "vmtest: cannot mount bpffs"
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || echo "vmtest: cannot mount cgroup2"
ip link set lo up 2>/dev/null
ulimit -l unlimited 2>/dev/null
hostname vmtest
. /etc/vmtest.env
# Boot is quiet; while the test runs, kernel warnings and worse reach the console.
echo "$VMTEST_LOGLEVEL" > /proc/sys/kernel/printk
echo; echo "VMTEST_BOOTED uptime=$(cut -d' ' -f1 /proc/uptime)s kernel=$(uname -r)"
cd /work
if [ -s /etc/vmtest.pre ]; then
	sh -c '. /etc/vmtest.pre'
fi
"$VMTEST_BIN" "$@"
rc=$?
echo
echo "VMTEST_EXIT=$rc id=$VMTEST_NONCE"
sync
poweroff -f
echo o > /proc/sysrq-trigger
sleep 5
EOF
chmod +x "$root/init"

initrd=$work/initrd.gz
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
	cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -1 >"$initrd"

# ---- boot -------------------------------------------------------------------

qemu=(qemu-system-x86_64 -accel tcg -cpu max,-arch-capabilities -smp 1 -m "$mem"
	-nographic -no-reboot -nic none
	-kernel "$vmlinuz" -initrd "$initrd"
	-append "console=ttyS0 panic=-1 quiet loglevel=3 random.trust_cpu=on ${VMTEST_APPEND:-}")

log=$work/console.log
say "booting $pkg${kver:+ ($kver)} with $(basename "$test_bin") ${test_args[*]} (timeout ${timeout_s}s)"
t_boot=$(date +%s.%N)

# The console goes to stdout as it comes, without the firmware's escape
# sequences and carriage returns, and to $log for the verdict.
set +e
timeout --foreground -k 10 "$timeout_s" "${qemu[@]}" </dev/null 2>&1 |
	while IFS= read -r line || [[ -n $line ]]; do
		line=${line//$'\r'/}
		if [[ $line == *$'\e'* ]]; then
			line=${line//$'\e'\[*([0-9;?])[A-Za-z]/}
			line=${line//$'\e'[()][0-9A-Za-z]/}
			line=${line//$'\e'[c78=>]/}
		fi
		printf '%s\n' "$line" >>"$log"
		case $line in
		*VMTEST_BOOTED\ *) say "guest booted in $(elapsed "$t_boot")s (${line#*VMTEST_BOOTED })" ;;
		"$marker="*" id=$nonce") ;;
		SeaBIOS*|iPXE*|Booting\ from*|*"] reboot: Power down") ;;
		*) printf '%s\n' "$line" ;;
		esac
	done
rcs=("${PIPESTATUS[@]}")
set -e
qemu_rc=${rcs[0]}

[[ -n ${VMTEST_LOG:-} ]] && cp "$log" "$VMTEST_LOG"
total=$(elapsed "$t_start")

kernel_trouble=$(grep -E 'Kernel panic|BUG:|Oops|WARNING:|Call Trace:|general protection fault|RIP:' "$log" | sed -n 1,5p || true)

exit_line=$(grep -E "^$marker=[0-9]+ id=$nonce\$" "$log" | tail -n1 || true)
if [[ -n $exit_line ]]; then
	rc=${exit_line#"$marker="}
	rc=${rc%% *}
	[[ -n $kernel_trouble ]] && say "warning: the kernel logged trouble during the run (see the console above)"
	say "$pkg: test binary exited $rc (total ${total}s)"
	exit "$rc"
fi

if [[ $qemu_rc == 124 || $qemu_rc == 137 ]]; then
	say "error: $pkg: timed out after ${timeout_s}s without the test's exit code (VMTEST_TIMEOUT); total ${total}s"
	exit 124
fi
if grep -q 'Kernel panic' "$log"; then
	say "error: $pkg: the guest kernel panicked before the test reported its exit code:"
	grep -m1 'Kernel panic' "$log" >&2
	kernel_trouble=$(grep -v 'Kernel panic' <<<"$kernel_trouble" || true)
else
	say "error: $pkg: the guest stopped (qemu exit $qemu_rc) without reporting the test's exit code"
fi
[[ -n $kernel_trouble ]] && printf '%s\n' "$kernel_trouble" >&2
say "total ${total}s"
exit 125

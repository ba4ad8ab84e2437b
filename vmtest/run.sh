#!/usr/bin/env bash
# vmtest/run.sh: run a static test binary inside a Debian kernel under qemu.
#
#   vmtest/run.sh KERNEL TESTBINARY [ENV=VAL ...] -- [test args...]
#   VMTEST_ARCH=arm64 vmtest/run.sh 6.1 tracer-arm64.test -- -test.v
#
# KERNEL is a kernel series or a full Debian package name:
#   5.10  the newest linux-image-5.10.0-N-ARCH of Debian 11 (bullseye)
#   6.1   the newest linux-image-6.1.0-N-ARCH of Debian 12 (bookworm)
#   6.12  the newest linux-image-6.12.N+deb12-ARCH of Debian 12 (bookworm)
#   linux-image-6.1.0-57-arm64 (its suite from its version as above, its
#         architecture from its suffix, which must agree with VMTEST_ARCH)
# Kernels (and arm64's busybox) come through a private apt configuration under
# the cache directory: its own sources list, lists, state and archives, for
# the suite and architecture asked for, on the mirror the system's own
# sources use. The system's /etc/apt and dpkg's architectures are not touched.
#
# VMTEST_ARCH (default amd64) picks the guest: amd64 boots
# qemu-system-x86_64 -cpu max (console ttyS0), arm64 boots
# qemu-system-aarch64 -M virt -cpu max (console ttyAMA0) with Debian's arm64
# kernel and busybox-static (the arm64 .deb unpacked into the cache); both
# with -accel tcg -smp 1, and with the CPU features that cost TCG most and
# the tests nothing turned off (see VMTEST_CPU). TESTBINARY must be a static
# executable for that architecture (for Go: GOARCH=arm64 CGO_ENABLED=0 go
# test -c); its ELF machine is checked.
#
# The binary runs as root (pid 1's child) in an initramfs with proc, sysfs,
# devtmpfs, tracefs, debugfs, bpffs and cgroup2 mounted, with the ENV=VAL
# pairs exported and the test args as its arguments.
#
# Several runs in one boot: VMTEST_RUNS names a file with one run a line,
#   NAME [ENV=VAL ...]          (# comments and blank lines are skipped)
# NAME is [A-Za-z0-9._-]+; values cannot contain white space. The guest boots
# once and runs the binary once per line, in order, each with the common
# ENV=VAL pairs plus its own (its own win) and the same test args, each in
# its own process and subshell. Kernel state (loaded programs, tracefs
# events) is whatever the previous run left. With VMTEST_OUTDIR set, each run
# leaves NAME.log (the console between its start and end: its output and the
# kernel's messages meanwhile), NAME.rc (its exit code; 124 if it timed out,
# 124/125 if the guest timed out/stopped before it reported one) and
# NAME.secs (its wall time seen from the host) there; a run the guest never
# got to has only NAME.log, saying why.
#
# Exit status: with one run, the test binary's exit code; with several, 0 if
# every run exited 0, else 1. 124 if the guest (or the only run) timed out,
# 125 if the guest stopped before every run reported (kernel panic, init
# died), 2 for a usage error.
#
# Environment:
#   VMTEST_ARCH     amd64 (default) or arm64
#   VMTEST_CACHE    kernel and apt cache (default /var/cache/verifierlog-vmtest)
#   VMTEST_TIMEOUT  seconds before the whole guest is killed (default 900)
#   VMTEST_RUN_TIMEOUT  seconds one run may take in the guest before it gets
#                   SIGQUIT (a Go binary dumps its goroutines), then SIGKILL
#                   10 s later; the next run still runs (default 0: no limit)
#   VMTEST_RUNS     several runs in one boot (see above)
#   VMTEST_OUTDIR   where each run's log, exit code and time go
#   VMTEST_CPU      qemu's -cpu (default amd64: max,-arch-capabilities,-pcid,
#                   -invpcid; arm64: max,pauth=off,sve=off)
#   VMTEST_MEM      guest memory (default 2G)
#   VMTEST_APPEND   extra kernel command line
#   VMTEST_LOGLEVEL console loglevel while the test runs (default 5: kernel
#                   warnings and worse reach the console; boot stays quiet)
#   VMTEST_PRE      shell commands (busybox sh) run in the guest once before
#                   the runs, e.g. 'grep -w bpf_prog_load /proc/kallsyms'
#   VMTEST_WORKDIR  host directory copied into the guest as the test's
#                   working directory (default: an empty /work)
#   VMTEST_LOG      also write the whole console log to this file
#   VMTEST_MIRROR, VMTEST_SECURITY_MIRROR  Debian archive and security
#                   archive URIs (default: the ones the system's apt sources
#                   use for its own release)
#   VMTEST_APT_MAX_AGE  seconds before the private apt lists are refreshed
#                   (default 86400; they are also refreshed when they know no
#                   matching kernel)
set -euo pipefail
shopt -s extglob

prog=vmtest
say() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() { say "error: $1"; exit "${2:-125}"; }
usage() {
	cat >&2 <<'EOF'
usage: [VMTEST_ARCH=arm64] vmtest/run.sh KERNEL TESTBINARY [ENV=VAL ...] -- [test args...]
  KERNEL      5.10 (Debian 11), 6.1, 6.12 (Debian 12): the newest Debian
              kernel of that series for VMTEST_ARCH, or a Debian package name
              such as linux-image-6.1.0-57-amd64
  TESTBINARY  a static executable for VMTEST_ARCH (amd64 or arm64), e.g.
              from [GOARCH=arm64] CGO_ENABLED=0 go test -c
  ENV=VAL     exported in the guest before the binary runs
  test args   passed to the binary (e.g. -test.v -test.run TestX)
env: VMTEST_ARCH VMTEST_CACHE VMTEST_TIMEOUT VMTEST_RUN_TIMEOUT VMTEST_RUNS
     VMTEST_OUTDIR VMTEST_CPU VMTEST_MEM VMTEST_APPEND VMTEST_LOGLEVEL VMTEST_PRE
     VMTEST_WORKDIR VMTEST_LOG VMTEST_MIRROR VMTEST_SECURITY_MIRROR
     VMTEST_APT_MAX_AGE (see the top of this script)
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

arch=${VMTEST_ARCH:-amd64}
case $arch in
amd64)
	qemu_bin=qemu-system-x86_64
	qemu_pkg=qemu-system-x86
	# PCID/INVPCID off: TCG has no tagged TLB to gain from them, and the
	# tracer's runs took ~12% less without (37 s against 42 s).
	cpu_model=max,-arch-capabilities,-pcid,-invpcid
	qemu_machine=()
	console=ttyS0
	elf_machine=62 # EM_X86_64
	elf_name=x86-64
	goarch=amd64
	# What the guest needs to talk and to stop.
	boot_opts=(SERIAL_8250 SERIAL_8250_CONSOLE)
	;;
arm64)
	qemu_bin=qemu-system-aarch64
	qemu_pkg=qemu-system-arm
	# Pointer authentication and SVE off: Debian's arm64 kernel signs and
	# checks every return address, which TCG emulates at great cost (a
	# tracer run took 108 s with QARMA, 47 s with pauth-impdef=on, 31 s with
	# pauth=off,sve=off). The kernel's PAC instructions are hints that run
	# as no-ops; the BPF programs and the kernel paths they hook are the
	# same. VMTEST_CPU=max tests with the full CPU.
	cpu_model=max,pauth=off,sve=off
	qemu_machine=(-M virt)
	console=ttyAMA0
	elf_machine=183 # EM_AARCH64
	elf_name=AArch64
	goarch=arm64
	boot_opts=(SERIAL_AMBA_PL011 SERIAL_AMBA_PL011_CONSOLE ARM_PSCI_FW)
	;;
*) die "VMTEST_ARCH must be amd64 or arm64, not $arch" 2 ;;
esac

[[ -f $test_bin && -x $test_bin ]] || die "test binary $test_bin: not an executable file" 2
# The ELF header: magic, class 2 (64-bit), data 1 (little endian), e_machine.
magic=$(od -An -c -N4 "$test_bin" | tr -d ' ')
[[ $magic == '177ELF' ]] || die "test binary $test_bin is not an ELF executable" 2
machine=$(od -An -tu2 -j18 -N2 "$test_bin" | tr -d ' ')
if [[ $machine != "$elf_machine" ]]; then
	case $machine in 62) what=x86-64 ;; 183) what=AArch64 ;; *) what="ELF machine $machine" ;; esac
	die "test binary $test_bin is $what, but VMTEST_ARCH=$arch boots an $elf_name guest: build it with GOARCH=$goarch CGO_ENABLED=0 (or set VMTEST_ARCH)" 2
fi
if command -v readelf >/dev/null && LC_ALL=C readelf -lW "$test_bin" 2>/dev/null | grep INTERP >/dev/null; then
	die "test binary $test_bin is dynamically linked; build it with CGO_ENABLED=0" 2
fi

cache=${VMTEST_CACHE:-/var/cache/verifierlog-vmtest}
timeout_s=${VMTEST_TIMEOUT:-900}
run_timeout=${VMTEST_RUN_TIMEOUT:-0}
mem=${VMTEST_MEM:-2G}
loglevel=${VMTEST_LOGLEVEL:-5}
apt_max_age=${VMTEST_APT_MAX_AGE:-86400}
outdir=${VMTEST_OUTDIR:-}
[[ $timeout_s =~ ^[0-9]+$ ]] || die "VMTEST_TIMEOUT must be seconds, not $timeout_s" 2
[[ $run_timeout =~ ^[0-9]+$ ]] || die "VMTEST_RUN_TIMEOUT must be seconds, not $run_timeout" 2
[[ $apt_max_age =~ ^[0-9]+$ ]] || die "VMTEST_APT_MAX_AGE must be seconds, not $apt_max_age" 2
[[ $loglevel =~ ^[0-9]$ ]] || die "VMTEST_LOGLEVEL must be 0-9, not $loglevel" 2
if [[ -n ${VMTEST_WORKDIR:-} && ! -d $VMTEST_WORKDIR ]]; then
	die "VMTEST_WORKDIR $VMTEST_WORKDIR is not a directory" 2
fi
if [[ -n $outdir ]]; then
	mkdir -p "$outdir" || die "cannot create VMTEST_OUTDIR $outdir" 2
fi

# The runs: names and their own ENV=VAL pairs (one string each).
run_names=()
run_envs=()
if [[ -n ${VMTEST_RUNS:-} ]]; then
	[[ -f $VMTEST_RUNS ]] || die "VMTEST_RUNS $VMTEST_RUNS is not a file" 2
	while read -r name rest; do
		[[ -z $name || $name == \#* ]] && continue
		[[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "VMTEST_RUNS: bad run name '$name'" 2
		for n in "${run_names[@]}"; do
			[[ $n != "$name" ]] || die "VMTEST_RUNS: run $name twice" 2
		done
		for kv in $rest; do
			[[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "VMTEST_RUNS: run $name: not ENV=VAL: $kv" 2
		done
		run_names+=("$name")
		run_envs+=("$rest")
	done <"$VMTEST_RUNS"
	[[ ${#run_names[@]} -gt 0 ]] || die "VMTEST_RUNS $VMTEST_RUNS lists no runs" 2
else
	run_names=(test)
	run_envs=("")
fi
nruns=${#run_names[@]}

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
command -v "$qemu_bin" >/dev/null || need_pkgs+=("$qemu_pkg")
command -v cpio >/dev/null || need_pkgs+=(cpio)
# busybox (the dynamic one) and busybox-static both install /bin/busybox.
# arm64's comes from the cache (below).
if [[ $arch == amd64 ]]; then
	dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep 'ok installed' >/dev/null || need_pkgs+=(busybox-static)
fi
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
	[[ $(id -u) == 0 ]] || die "need ${need_pkgs[*]} installed (run as root to install them)"
	say "installing ${need_pkgs[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2; then
		apt_update_once
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2 ||
			die "apt-get install ${need_pkgs[*]} failed"
	fi
fi

# ---- private apt ------------------------------------------------------------

# system_sources: "URI SUITE" for every enabled deb entry of the system's apt
# sources (one-line .list files and deb822 .sources files).
system_sources() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f $f ]] || continue
		awk '$1 == "deb" {
			i = 2
			if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
			print $i, $(i + 1)
		}' "$f"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		awk '
		function flush(  i, j, nu, ns, u, s) {
			if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no") {
				nu = split(uris, u, " "); ns = split(suites, s, " ")
				for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]
			}
			types = uris = suites = enabled = ""
		}
		/^#/ { next }
		/^[ \t]*$/ { flush(); next }
		{
			line = $0; key = tolower(line); sub(/:.*/, "", key)
			val = line; sub(/^[^:]*:[ \t]*/, "", val)
			if (key == "types") types = val
			else if (key == "uris") uris = val
			else if (key == "suites") suites = val
			else if (key == "enabled") enabled = val
		}
		END { flush() }' "$f"
	done
}

# mirrors: sets mirror and security_mirror from the system's sources: the
# URIs it uses for its own release (CODENAME and CODENAME-security).
mirrors() {
	[[ -n ${mirror:-} ]] && return 0
	mirror=${VMTEST_MIRROR:-}
	security_mirror=${VMTEST_SECURITY_MIRROR:-}
	local codename src
	codename=$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}")
	src=$(system_sources)
	if [[ -z $mirror && -n $codename ]]; then
		mirror=$(awk -v s="$codename" '$2 == s { print $1; exit }' <<<"$src")
	fi
	if [[ -z $mirror ]]; then
		mirror=$(awk '$1 ~ /\/debian\/?$/ { print $1; exit }' <<<"$src")
	fi
	if [[ -z $security_mirror ]]; then
		security_mirror=$(awk -v s="$codename-security" '$2 == s { print $1; exit }' <<<"$src")
	fi
	if [[ -z $security_mirror ]]; then
		security_mirror=$(awk '$1 ~ /\/debian-security\/?$/ { print $1; exit }' <<<"$src")
	fi
	[[ -n $mirror ]] || die "cannot tell the Debian mirror from /etc/apt/sources.list{,.d}; set VMTEST_MIRROR (e.g. http://HOST/debian)"
	mirror=${mirror%/}
	security_mirror=${security_mirror%/}
	[[ -n $security_mirror ]] || say "warning: no Debian security archive in the system's apt sources (set VMTEST_SECURITY_MIRROR); the newest kernels live there"
}

# apt_setup SUITE DEBARCH: sets aptdir and aptopts for a private apt
# configuration for SUITE (with its -updates and -security) and DEBARCH.
apt_setup() {
	local suite=$1 darch=$2 keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	mirrors
	aptdir=$cache/apt/$suite-$darch
	mkdir -p "$aptdir"/lists/partial "$aptdir"/archives/partial
	[[ -f $aptdir/status ]] || : >"$aptdir/status"
	{
		echo "# generated by vmtest/run.sh; mirror from the system's apt sources"
		printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$suite"
		printf 'deb [signed-by=%s] %s %s-updates main\n' "$keyring" "$mirror" "$suite"
		[[ -z $security_mirror ]] || printf 'deb [signed-by=%s] %s %s-security main\n' "$keyring" "$security_mirror" "$suite"
	} >"$aptdir/sources.list.new"
	if cmp -s "$aptdir/sources.list.new" "$aptdir/sources.list"; then
		rm "$aptdir/sources.list.new"
	else
		mv "$aptdir/sources.list.new" "$aptdir/sources.list"
		rm -f "$aptdir/.updated"
	fi
	aptopts=(
		-o "Dir::Etc::SourceList=$aptdir/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o "Dir::State::Lists=$aptdir/lists" -o "Dir::State::status=$aptdir/status"
		-o "Dir::Cache=$aptdir" -o "Dir::Cache::archives=$aptdir/archives"
		-o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
		-o "APT::Architecture=$darch" -o "APT::Architectures::=$darch"
		-o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
		-o APT::Sandbox::User=root
	)
}

# apt_update_private [force]: refresh the private lists if older than
# VMTEST_APT_MAX_AGE (or always with force). Fails softly when lists remain.
apt_update_private() {
	local stamp=$aptdir/.updated
	if [[ ${1:-} != force && -f $stamp ]] &&
		(($(date +%s) - $(stat -c %Y "$stamp") < apt_max_age)); then
		return 0
	fi
	say "apt-get update (private: $(basename "$aptdir"), $mirror)"
	if apt-get -qq "${aptopts[@]}" update >&2; then
		touch "$stamp"
	else
		say "warning: apt-get update for $(basename "$aptdir") failed; using what the cache has"
	fi
}

# candidates PATTERN: package names matching the regex that the private apt
# can install, newest first.
candidates() {
	local names
	names=$(apt-cache "${aptopts[@]}" search --names-only "$1" 2>/dev/null | awk '{print $1}' | grep -E "$1" || true)
	[[ -n $names ]] || return 0
	# shellcheck disable=SC2086 # one word per name
	apt-cache "${aptopts[@]}" policy $names 2>/dev/null |
		awk '/^[^ ]/ { sub(":$", ""); p = $0 } /^  Candidate: / && $2 != "(none)" { print p }' |
		sort -rV
}

# fetch_deb PKG DIR: download PKG with the private apt and unpack it into DIR
# (with its Package and Version in DIR/.package and DIR/.done when complete).
fetch_deb() {
	local pkg=$1 dir=$2 dl deb
	say "fetching $pkg into $dir"
	dl=$(mktemp -d "$cache/dl.XXXXXX")
	(cd "$dl" && apt-get download -qq "${aptopts[@]}" "$pkg" >&2) ||
		{ rm -rf "$dl"; die "apt-get download $pkg failed"; }
	deb=$(ls "$dl"/*.deb)
	rm -rf "$dir"
	mkdir -p "$dir"
	dpkg -x "$deb" "$dir" || { rm -rf "$dl" "$dir"; die "cannot unpack $deb"; }
	dpkg-deb -f "$deb" Package Version Depends >"$dir/.package"
	rm -rf "$dl"
	touch "$dir/.done"
}

# ---- kernel -----------------------------------------------------------------

# suite_of SERIES: the Debian release whose kernel series it is.
suite_of() {
	case $1 in
	5.10 | 5.10.*) echo bullseye ;;
	6.1 | 6.1.* | 6.12 | 6.12.*) echo bookworm ;;
	*) return 1 ;;
	esac
}

case $kernel_arg in
linux-image-*)
	pkg_arch=${kernel_arg##*-}
	[[ $pkg_arch == "$arch" ]] || die "package $kernel_arg is for $pkg_arch, but VMTEST_ARCH is $arch" 2
	series=${kernel_arg#linux-image-}
	suite=$(suite_of "$series") || die "which Debian release has $kernel_arg? (known: 5.10 bullseye, 6.1 and 6.12 bookworm)" 2
	pattern="^$(printf '%s' "$kernel_arg" | sed 's/[.+]/\\&/g')\$"
	;;
[0-9]*.[0-9]*)
	[[ $kernel_arg =~ ^[0-9]+\.[0-9]+$ ]] || die "KERNEL must be a series like 6.1 or 6.12, or a package name" 2
	suite=$(suite_of "$kernel_arg") || die "kernel series $kernel_arg: known are 5.10 (bullseye), 6.1 and 6.12 (bookworm)" 2
	v=${kernel_arg//./\\.}
	# 5.10: linux-image-5.10.0-46-amd64; 6.1: linux-image-6.1.0-57-arm64;
	# 6.12: linux-image-6.12.117+deb12-amd64. Not -rt-, -cloud-, -dbg,
	# -unsigned, -16k-: the plain (signed) flavour of the architecture.
	pattern="^linux-image-${v}(\\.0-[0-9]+|\\.[0-9]+\\+deb[0-9]+)-${arch}\$"
	;;
*) die "KERNEL must be a series like 6.1 or 6.12, or a package name" 2 ;;
esac

mkdir -p "$cache/kernels"
# One fetcher at a time (parallel matrix jobs share the cache and the lists).
exec 9>"$cache/.lock"
flock 9
apt_setup "$suite" "$arch"
apt_update_private
pkg=$(candidates "$pattern" | sed -n 1p)
if [[ -z $pkg ]]; then
	apt_update_private force
	pkg=$(candidates "$pattern" | sed -n 1p)
fi
if [[ -z $pkg ]]; then
	# No apt answer (offline, no lists): fall back on the newest cached one.
	pkg=$(find "$cache/kernels" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null |
		grep -E "$pattern" | sort -rV | sed -n 1p || true)
	[[ -n $pkg ]] || die "no Debian kernel package matches $kernel_arg for $arch in $suite (pattern $pattern)"
	say "apt knows no package for $kernel_arg; using cached $pkg"
fi
kdir=$cache/kernels/$pkg
if [[ ! -f $kdir/.done ]]; then
	fetch_deb "$pkg" "$kdir"
	# Debian's kernel packages carry their modules; a split-off modules
	# package would show in Depends.
	if grep -q 'linux-modules' "$kdir/.package"; then
		say "note: $pkg depends on a separate modules package; not fetched, everything needed is expected built in"
	fi
fi

# busybox: the host's static one for amd64; arm64's from Debian 12's
# busybox-static:arm64, unpacked into the cache (not installed over the
# host's).
if [[ $arch == amd64 ]]; then
	busybox=/bin/busybox
else
	apt_setup bookworm "$arch"
	apt_update_private
	bbdir=$(find "$cache/busybox" -mindepth 1 -maxdepth 1 -type d -name "busybox-static_*_$arch" 2>/dev/null | sort -rV | sed -n 1p || true)
	bbver=$(apt-cache "${aptopts[@]}" policy busybox-static 2>/dev/null | awk '/^  Candidate: / && $2 != "(none)" { print $2 }')
	if [[ -n $bbver ]]; then
		bbdir=$cache/busybox/busybox-static_${bbver//:/%3a}_$arch
		[[ -f $bbdir/.done ]] || fetch_deb "busybox-static" "$bbdir"
	fi
	[[ -n $bbdir && -f $bbdir/.done ]] || die "no busybox-static for $arch (apt knows none and the cache has none)"
	busybox=$bbdir/bin/busybox
fi
flock -u 9
exec 9>&-

[[ -f $busybox ]] || die "$busybox is missing"
[[ $(od -An -tu2 -j18 -N2 "$busybox" | tr -d ' ') == "$elf_machine" ]] || die "$busybox is not an $elf_name binary"
command -v readelf >/dev/null && LC_ALL=C readelf -lW "$busybox" 2>/dev/null | grep INTERP >/dev/null && die "$busybox is not static (install busybox-static)"

vmlinuz=$(ls "$kdir"/boot/vmlinuz-* 2>/dev/null | sed -n 1p || true)
config=$(ls "$kdir"/boot/config-* 2>/dev/null | sed -n 1p || true)
[[ -n $vmlinuz && -f $vmlinuz ]] || die "no boot/vmlinuz-* in $kdir"
kver=$(awk '/^Version:/ {print $2}' "$kdir/.package" 2>/dev/null || true)

# What the tests need must be built in: the initramfs loads no modules.
if [[ -n $config ]]; then
	missing=()
	for opt in BPF_SYSCALL BPF_JIT DEBUG_INFO_BTF KPROBES KPROBE_EVENTS BPF_EVENTS \
		FTRACE_SYSCALLS FUNCTION_TRACER DEBUG_FS DEVTMPFS BLK_DEV_INITRD RD_GZIP CGROUPS \
		"${boot_opts[@]}"; do
		grep -qx "CONFIG_$opt=y" "$config" || missing+=("$opt")
	done
	[[ ${#missing[@]} -eq 0 ]] || say "warning: $pkg lacks built-in CONFIG_${missing[*]}; tests may fail"
	# fentry (BPF trampolines) attaches through ftrace's direct calls.
	grep -qx "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y" "$config" ||
		say "note: $pkg has no CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS: fentry attach cannot work there"
fi

# ---- initramfs --------------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/vmtest.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
# Interrupted (Ctrl-C, or a matrix job being stopped): stop the guest too.
# timeout passes the TERM on to qemu.
qemu_pid=
trap 'say "interrupted"; [[ -z $qemu_pid ]] || kill "$qemu_pid" 2>/dev/null; exit 130' INT TERM

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
	echo "VMTEST_RUN_TIMEOUT=$run_timeout"
} >"$root/etc/vmtest.env"
for ((i = 0; i < nruns; i++)); do
	{
		# shellcheck disable=SC2086 # one word per pair
		for kv in ${run_envs[i]}; do
			echo "export ${kv%%=*}=$(sq "${kv#*=}")"
		done
	} >"$root/etc/vmtest.run.$((i + 1))"
done
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
# Boot is quiet; while the tests run, kernel warnings and worse reach the console.
echo "$VMTEST_LOGLEVEL" > /proc/sys/kernel/printk
echo; echo "VMTEST_BOOTED uptime=$(cut -d' ' -f1 /proc/uptime)s kernel=$(uname -r)"
cd /work
if [ -s /etc/vmtest.pre ]; then
	sh -c '. /etc/vmtest.pre'
fi
# run_one N: the binary with run N's environment, in a subshell so that one
# run's environment does not leak into the next; a run that outlives
# VMTEST_RUN_TIMEOUT gets SIGQUIT (Go dumps its goroutines) and, 10 s later,
# SIGKILL, and counts as 124.
run_one() (
	. "/etc/vmtest.run.$1"
	shift
	[ "$VMTEST_RUN_TIMEOUT" -gt 0 ] || exec "$VMTEST_BIN" "$@"
	rm -f /tmp/vmtest.timedout
	"$VMTEST_BIN" "$@" </dev/null &
	pid=$!
	(
		sleep "$VMTEST_RUN_TIMEOUT"
		kill -0 "$pid" 2>/dev/null || exit 0
		: >/tmp/vmtest.timedout
		echo; echo "vmtest: run timed out after ${VMTEST_RUN_TIMEOUT}s (VMTEST_RUN_TIMEOUT): SIGQUIT"
		kill -QUIT "$pid"
		sleep 10
		kill -KILL "$pid" 2>/dev/null
	) &
	watcher=$!
	wait "$pid"
	rc=$?
	kill "$watcher" 2>/dev/null
	[ -e /tmp/vmtest.timedout ] && rc=124
	exit "$rc"
)
i=1
while [ -f "/etc/vmtest.run.$i" ]; do
	echo; echo "VMTEST_RUN_BEGIN=$i id=$VMTEST_NONCE"
	run_one "$i" "$@"
	rc=$?
	echo; echo "VMTEST_RUN_END=$i rc=$rc id=$VMTEST_NONCE"
	i=$((i + 1))
done
echo "VMTEST_DONE id=$VMTEST_NONCE"
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

qemu=("$qemu_bin" -accel tcg "${qemu_machine[@]}" -cpu "${VMTEST_CPU:-$cpu_model}" -smp 1 -m "$mem"
	-nographic -no-reboot -nic none
	-kernel "$vmlinuz" -initrd "$initrd"
	-append "console=$console panic=-1 quiet loglevel=3 random.trust_cpu=on ${VMTEST_APPEND:-}")

log=$work/console.log
runs_desc=$(basename "$test_bin")
((nruns == 1)) || runs_desc="$runs_desc $nruns times (${run_names[*]})"
limits="-cpu ${VMTEST_CPU:-$cpu_model}, timeout ${timeout_s}s"
((run_timeout == 0)) || limits="$limits, ${run_timeout}s a run"
say "booting $pkg${kver:+ ($kver)} with $runs_desc ${test_args[*]} ($limits)"
t_boot=$(date +%s.%N)

# The console goes to stdout as it comes, without the firmware's escape
# sequences and carriage returns, and to $log; each run's part also to
# $work/run.N.log, its exit code to run.N.rc and its time to run.N.secs.
# qemu runs in the background, so that a trap fires at once rather than when
# qemu is done; this shell reads its console from a fifo.
mkfifo "$work/console"
timeout --foreground -k 10 "$timeout_s" "${qemu[@]}" </dev/null >"$work/console" 2>&1 &
qemu_pid=$!
cur=
blank=0
while IFS= read -r line || [[ -n $line ]]; do
	line=${line//$'\r'/}
	if [[ $line == *$'\e'* ]]; then
		line=${line//$'\e'\[*([0-9;?])[A-Za-z]/}
		line=${line//$'\e'[()][0-9A-Za-z]/}
		line=${line//$'\e'[c78=>]/}
	fi
	printf '%s\n' "$line" >>"$log"
	# The guest starts each marker on a fresh line, after an empty one:
	# empty lines are held back and dropped if a marker follows.
	if [[ -z $line ]]; then
		blank=$((blank + 1))
		continue
	fi
	case $line in
	VMTEST_*" id=$nonce" | *VMTEST_BOOTED\ *) ;;
	*)
		for ((; blank > 0; blank--)); do
			echo
			[[ -z ${cur:-} ]] || echo >>"$work/run.$cur.log"
		done
		;;
	esac
	blank=0
	case $line in
	*VMTEST_BOOTED\ *) say "guest booted in $(elapsed "$t_boot")s (${line#*VMTEST_BOOTED })" ;;
	"VMTEST_RUN_BEGIN="*" id=$nonce")
		cur=${line#VMTEST_RUN_BEGIN=}
		cur=${cur%% *}
		date +%s.%N >"$work/run.$cur.start"
		: >"$work/run.$cur.log"
		((nruns == 1)) || say "run ${run_names[cur - 1]} ($cur/$nruns)"
		;;
	"VMTEST_RUN_END="*" id=$nonce")
		n=${line#VMTEST_RUN_END=}
		n=${n%% *}
		rc=${line#* rc=}
		rc=${rc%% *}
		printf '%s\n' "$rc" >"$work/run.$n.rc"
		elapsed "$(cat "$work/run.$n.start")" >"$work/run.$n.secs"
		((nruns == 1)) || say "run ${run_names[n - 1]} exited $rc ($(cat "$work/run.$n.secs")s)"
		cur=
		;;
	"VMTEST_DONE id=$nonce") : >"$work/done" ;;
	SeaBIOS*|iPXE*|Booting\ from*|*"] reboot: Power down") ;;
	*)
		printf '%s\n' "$line"
		[[ -z ${cur:-} ]] || printf '%s\n' "$line" >>"$work/run.$cur.log"
		;;
	esac
done <"$work/console"
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=

[[ -n ${VMTEST_LOG:-} ]] && cp "$log" "$VMTEST_LOG"
total=$(elapsed "$t_start")

trouble_re='Kernel panic|BUG:|Oops|WARNING:|Call Trace:|general protection fault|RIP:|Internal error:|Unable to handle kernel'
kernel_trouble=$(grep -E "$trouble_re" "$log" | sed -n 1,5p || true)

# Why runs without an exit code have none.
if [[ -f $work/done ]]; then
	why="its end marker never reached the console (garbled line?)"
	guest_rc=125
elif [[ $qemu_rc == 124 || $qemu_rc == 137 ]]; then
	why="the guest timed out after ${timeout_s}s (VMTEST_TIMEOUT)"
	guest_rc=124
elif grep -q 'Kernel panic' "$log"; then
	why="the guest kernel panicked: $(grep -m1 'Kernel panic' "$log")"
	guest_rc=125
else
	why="the guest stopped (qemu exit $qemu_rc)"
	guest_rc=125
fi

failed=0
unreported=0
for ((i = 1; i <= nruns; i++)); do
	name=${run_names[i - 1]}
	if [[ -f $work/run.$i.rc ]]; then
		rc=$(cat "$work/run.$i.rc")
	else
		rc=$guest_rc
		unreported=$((unreported + 1))
		if [[ -f $work/run.$i.log ]]; then
			printf 'vmtest: run %s reported no exit code: %s during it\n' "$name" "$why" >>"$work/run.$i.log"
			elapsed "$(cat "$work/run.$i.start")" >"$work/run.$i.secs"
		else
			printf 'vmtest: run %s did not start: %s before it\n' "$name" "$why" >"$work/run.$i.log"
		fi
	fi
	[[ $rc == 0 ]] || failed=1
	if [[ -f $work/run.$i.log ]] && grep -qE "$trouble_re" "$work/run.$i.log"; then
		say "warning: the kernel logged trouble during run $name (see its log)"
	fi
	if [[ -n $outdir ]]; then
		cp "$work/run.$i.log" "$outdir/$name.log"
		rm -f "$outdir/$name.rc" "$outdir/$name.secs"
		# A run that never started has no exit code and no time.
		if [[ -f $work/run.$i.secs ]]; then
			echo "$rc" >"$outdir/$name.rc"
			cp "$work/run.$i.secs" "$outdir/$name.secs"
		fi
	fi
	last_rc=$rc
done

if ((unreported == 0)); then
	[[ -n $kernel_trouble ]] && say "warning: the kernel logged trouble during the run (see the console above)"
	if ((nruns == 1)); then
		say "$pkg: test binary exited $last_rc (total ${total}s)"
		exit "$last_rc"
	fi
	say "$pkg: $nruns runs, $([[ $failed == 0 ]] && echo 'all exited 0' || echo 'some failed') (total ${total}s)"
	exit "$failed"
fi

if [[ $guest_rc == 124 ]]; then
	say "error: $pkg: $why without every run's exit code ($unreported of $nruns missing); total ${total}s"
	exit 124
fi
if grep -q 'Kernel panic' "$log"; then
	say "error: $pkg: the guest kernel panicked before every run reported its exit code ($unreported of $nruns missing):"
	grep -m1 'Kernel panic' "$log" >&2
	kernel_trouble=$(grep -v 'Kernel panic' <<<"$kernel_trouble" || true)
else
	say "error: $pkg: $why without every run's exit code ($unreported of $nruns missing)"
fi
[[ -n $kernel_trouble ]] && printf '%s\n' "$kernel_trouble" >&2
say "total ${total}s"
exit 125

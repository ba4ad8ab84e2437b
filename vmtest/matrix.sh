#!/usr/bin/env bash
# vmtest/matrix.sh: the tracer's real-kernel suite on every kernel x
# architecture x attach mode x program variant, and a table of the results.
#
#   vmtest/matrix.sh [SELECT ...]
#
# The rows come from the table below: each line is one machine (this host,
# or a Debian kernel under qemu via vmtest/run.sh) and its rows are its
# MODES x VARIANTS. A guest boots once per line and runs the test binary once
# per row, one after the other (VMTEST_RUNS); each row keeps its own log and
# exit code. The host's rows run first, then the guests, MATRIX_JOBS at a
# time (one vCPU each), the longest first.
#
# SELECT limits the lines: host, an architecture (amd64, arm64), a kernel
# series (6.1: both architectures) or ARCH/KERNEL (arm64/6.12). Default: all.
#
# Every row runs the tracer's tests (go test -c ./tracer, static, for the
# line's architecture) with -test.v and, exported:
#   CI=true                         a skipped kernel test fails the row
#   VERIFIERLOG_TEST_ATTACH=MODE    the row's attach mode
#   VERIFIERLOG_TEST_VARIANT=V      the row's program variant
#   VERIFIERLOG_EXPECT_AUTO=AUTO    the mode auto must choose on that kernel
#   VERIFIERLOG_EXPECT_VARIANT=PICK the variant automatic selection must
#                                   choose on that kernel
# and the package's testdata/ in its working directory, as go test has.
#
# Environment:
#   VERIFIERLOG_EXPECT_AUTO_HOST, VERIFIERLOG_EXPECT_VARIANT_HOST
#                    AUTO and PICK for the host line (default: not checked)
#   VMTEST_MODES     only these modes (default: each line's)
#   MATRIX_VARIANTS  only these variants (default: each line's)
#   MATRIX_JOBS      guests at a time (default 2, at most the CPU count)
#   MATRIX_DEADLINE  seconds from the start after which no guest may still
#                    run: each guest's VMTEST_TIMEOUT is cut to what is left,
#                    and a line that cannot start in time fails its rows
#                    (default 0: no deadline)
#   MATRIX_LOGS      where each row's output goes (default: a temporary
#                    directory): LINE/ROW.log, LINE/vmtest.out (the guest's
#                    whole output), LINE/console.log
# Exit status: 0 only if every row passed. The last line is
# "matrix: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

# ---- the matrix -------------------------------------------------------------
#
# ARCH      amd64 or arm64 (a guest), or host (this machine's kernel)
# KERNEL    the series vmtest/run.sh boots (- for the host)
# MODES     attach modes, one row each (auto: the row runs in auto mode)
# VARIANTS  program variants, one row each
# AUTO      VERIFIERLOG_EXPECT_AUTO there (- : not checked)
# PICK      VERIFIERLOG_EXPECT_VARIANT there (- : not checked)
#
# 5.10 (Debian 11): the modern variant needs newer kernels (5.17), so compat
#   only, and automatic selection must pick compat.
# arm64 6.1: fentry does not attach ("create raw tracepoint: not supported":
#   no CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS on arm64 before 6.4), so no
#   fentry row but an auto row, and auto must choose kprobe.
# arm64 6.12: fentry attaches.
matrix='
# ARCH  KERNEL  MODES                     VARIANTS       AUTO    PICK
host    -       tracepoint,auto           modern,compat  -       -
amd64   5.10    fentry,kprobe,tracepoint  compat         fentry  compat
amd64   6.1     fentry,kprobe,tracepoint  modern,compat  fentry  modern
amd64   6.12    fentry,kprobe,tracepoint  modern,compat  fentry  modern
arm64   6.1     kprobe,tracepoint,auto    modern,compat  kprobe  modern
arm64   6.12    fentry,kprobe,tracepoint  modern,compat  fentry  modern
'

# Time limits: one row's -test.timeout (a Go test binary then panics with
# every goroutine's stack); the guest stops the row 20 s later. A row takes
# ~35-65 s in a guest of either architecture (tcg, two guests at a time) and
# ~5 s on the host.
declare -A row_limit=([host]=120 [amd64]=150 [arm64]=200)
# A guest's boot allowance on top of its rows (booting takes 3-9 s).
boot_limit=60
# For the order only (longest line first): a row's weight. With arm64 first
# the five guest lines took 629 s on 2 cores, 14 s over the best split.
declare -A row_cost=([host]=5 [amd64]=40 [arm64]=45)

# ---- setup ------------------------------------------------------------------

say() { printf 'matrix: %s\n' "$*"; }
t0=$SECONDS
clock() { local s=$((SECONDS - t0)); printf '%d:%02d' $((s / 60)) $((s % 60)); }

jobs_max=${MATRIX_JOBS:-2}
deadline=${MATRIX_DEADLINE:-0}
[[ $jobs_max =~ ^[1-9][0-9]*$ ]] || { echo "MATRIX_JOBS must be a positive number" >&2; exit 2; }
[[ $deadline =~ ^[0-9]+$ ]] || { echo "MATRIX_DEADLINE must be seconds" >&2; exit 2; }
ncpu=$(nproc)
((jobs_max <= ncpu)) || jobs_max=$ncpu
logs=${MATRIX_LOGS:-$(mktemp -d /tmp/vmtest-matrix.XXXXXX)}
mkdir -p "$logs"
logs=$(cd "$logs" && pwd)

# The lines: parallel arrays, in table order, after SELECT and the filters.
L_arch=() L_kernel=() L_rows=() L_auto=() L_pick=()
in_list() { local x=$1; shift; [[ " $* " == *" $x "* ]]; }
filter_modes=${VMTEST_MODES:-}
filter_variants=${MATRIX_VARIANTS:-}
while read -r arch kernel modes variants auto pick; do
	[[ -z $arch || $arch == \#* ]] && continue
	if [[ $# -gt 0 ]]; then
		sel=0
		for s in "$@"; do
			case $s in "$arch" | "$kernel" | "$arch/$kernel") sel=1 ;; esac
		done
		[[ $sel == 1 ]] || continue
	fi
	if [[ $arch == host ]]; then
		auto=${VERIFIERLOG_EXPECT_AUTO_HOST:-$auto}
		pick=${VERIFIERLOG_EXPECT_VARIANT_HOST:-$pick}
	fi
	rows=()
	for m in ${modes//,/ }; do
		[[ -z $filter_modes ]] || in_list "$m" $filter_modes || continue
		for v in ${variants//,/ }; do
			[[ -z $filter_variants ]] || in_list "$v" $filter_variants || continue
			rows+=("$m:$v")
		done
	done
	[[ ${#rows[@]} -gt 0 ]] || continue
	L_arch+=("$arch") L_kernel+=("$kernel") L_rows+=("${rows[*]}") L_auto+=("$auto") L_pick+=("$pick")
done <<<"$matrix"
nlines=${#L_arch[@]}
[[ $nlines -gt 0 ]] || { echo "matrix: no line of the matrix matches: $*" >&2; exit 2; }

# line_dir I: the line's log directory.
line_dir() {
	if [[ ${L_arch[$1]} == host ]]; then echo "$logs/host"; else echo "$logs/${L_arch[$1]}-${L_kernel[$1]}"; fi
}

# The test binaries, one per architecture needed (host: this machine's).
host_goarch=$(go env GOARCH)
declare -A bin=()
for ((i = 0; i < nlines; i++)); do
	a=${L_arch[i]}
	[[ $a == host ]] && a=$host_goarch
	[[ -n ${bin[$a]:-} ]] && continue
	bin[$a]=$logs/tracer-$a.test
	say "building the tracer test binary for $a (static)"
	GOARCH=$a CGO_ENABLED=0 go test -c -o "${bin[$a]}" ./tracer
done

# The package's testdata, as the working directory of every row.
workdir=$logs/work
rm -rf "$workdir"
mkdir -p "$workdir"
[[ ! -d tracer/testdata ]] || cp -a tracer/testdata "$workdir/testdata"

# ---- the host ---------------------------------------------------------------

run_host() {
	local i=$1 dir row mode variant rc t limit=${row_limit[host]} envs=(CI=true)
	dir=$(line_dir "$i")
	mkdir -p "$dir"
	[[ ${L_auto[i]} == - ]] || envs+=("VERIFIERLOG_EXPECT_AUTO=${L_auto[i]}")
	[[ ${L_pick[i]} == - ]] || envs+=("VERIFIERLOG_EXPECT_VARIANT=${L_pick[i]}")
	for row in ${L_rows[i]}; do
		mode=${row%:*} variant=${row#*:}
		say "[$(clock)] host $(uname -r): $mode $variant"
		t=$(date +%s.%N)
		rc=0
		(
			cd "$workdir"
			env -u VERIFIERLOG_EXPECT_AUTO -u VERIFIERLOG_EXPECT_VARIANT \
				"${envs[@]}" VERIFIERLOG_TEST_ATTACH="$mode" VERIFIERLOG_TEST_VARIANT="$variant" \
				timeout -s QUIT -k 20 $((limit + 20)) \
				"${bin[$host_goarch]}" -test.v -test.count=1 -test.timeout="${limit}s"
		) >"$dir/$mode-$variant.log" 2>&1 || rc=$?
		echo "$rc" >"$dir/$mode-$variant.rc"
		awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' >"$dir/$mode-$variant.secs"
	done
}

# ---- the guests -------------------------------------------------------------

# start_guest I: vmtest/run.sh for line I in the background; sets guest_pid.
start_guest() {
	local i=$1 dir row mode variant n limit timeout left envs=()
	local arch=${L_arch[i]} kernel=${L_kernel[i]}
	dir=$(line_dir "$i")
	mkdir -p "$dir"
	: >"$dir/runs"
	n=0
	for row in ${L_rows[i]}; do
		mode=${row%:*} variant=${row#*:}
		echo "$mode-$variant VERIFIERLOG_TEST_ATTACH=$mode VERIFIERLOG_TEST_VARIANT=$variant" >>"$dir/runs"
		n=$((n + 1))
	done
	limit=${row_limit[$arch]}
	timeout=$((boot_limit + n * (limit + 30)))
	if ((deadline > 0)); then
		# run.sh's timeout allows qemu 10 s more to end after its TERM.
		left=$((deadline - (SECONDS - t0) - 10))
		((timeout <= left)) || timeout=$left
	fi
	envs=(CI=true)
	[[ ${L_auto[i]} == - ]] || envs+=("VERIFIERLOG_EXPECT_AUTO=${L_auto[i]}")
	[[ ${L_pick[i]} == - ]] || envs+=("VERIFIERLOG_EXPECT_VARIANT=${L_pick[i]}")
	say "[$(clock)] start $arch Linux $kernel: $n rows in one boot (timeout ${timeout}s)"
	VMTEST_ARCH=$arch VMTEST_RUNS=$dir/runs VMTEST_OUTDIR=$dir VMTEST_WORKDIR=$workdir \
		VMTEST_RUN_TIMEOUT=$((limit + 20)) VMTEST_TIMEOUT=$timeout VMTEST_LOG=$dir/console.log \
		vmtest/run.sh "$kernel" "${bin[$arch]}" "${envs[@]}" -- -test.v -test.count=1 -test.timeout="${limit}s" \
		>"$dir/vmtest.out" 2>&1 &
	guest_pid=$!
}

# guest_done I RC: the line's guest has ended with RC.
guest_done() {
	local i=$1 rc=$2 dir boot total npass=0 nrows=0 row
	dir=$(line_dir "$i")
	echo "$rc" >"$dir/vmtest.rc"
	boot=$(grep -m1 -o 'guest booted in [0-9.]*s' "$dir/vmtest.out" | awk '{print $4}' || true)
	total=$(grep -o 'total [0-9.]*s' "$dir/vmtest.out" | tail -n1 | awk '{print $2}' || true)
	for row in ${L_rows[i]}; do
		nrows=$((nrows + 1))
		[[ $(cat "$dir/${row/:/-}.rc" 2>/dev/null) != 0 ]] || npass=$((npass + 1))
	done
	say "[$(clock)] done ${L_arch[i]} Linux ${L_kernel[i]}: $npass of $nrows rows passed (boot ${boot:-?}, total ${total:-?}; run.sh exit $rc)"
}

# ---- run --------------------------------------------------------------------

declare -A running=() # pid -> line
stop_all() {
	local pid
	say "interrupted: stopping the guests"
	for pid in "${!running[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait || true
	exit 130
}
trap stop_all INT TERM

# The host's lines first (they take seconds, and alone: timings stay honest).
guests=()
for ((i = 0; i < nlines; i++)); do
	if [[ ${L_arch[i]} == host ]]; then
		run_host "$i"
	else
		guests+=("$i")
	fi
done

# The guests, the costliest first (so the last to start are short).
order=$(for i in "${guests[@]}"; do
	set -- ${L_rows[i]}
	echo "$((boot_limit / 6 + $# * ${row_cost[${L_arch[i]}]})) $i"
done | sort -rn | awk '{print $2}')

# reap_one waits for one running guest and records its rows.
reap_one() {
	local pid= rc=0
	wait -n -p pid "${!running[@]}" || rc=$?
	[[ -n $pid ]] || return 0
	guest_done "${running[$pid]}" "$rc"
	unset "running[$pid]"
}

for i in $order; do
	while ((${#running[@]} >= jobs_max)); do
		reap_one
	done
	if ((deadline > 0 && deadline - (SECONDS - t0) < boot_limit)); then
		dir=$(line_dir "$i")
		mkdir -p "$dir"
		say "[$(clock)] skip ${L_arch[i]} Linux ${L_kernel[i]}: MATRIX_DEADLINE (${deadline}s) is too close"
		echo "matrix: not run: MATRIX_DEADLINE ${deadline}s was too close to boot Linux ${L_kernel[i]}" >"$dir/vmtest.out"
		continue
	fi
	start_guest "$i"
	running[$guest_pid]=$i
done
while ((${#running[@]} > 0)); do
	reap_one
done
trap - INT TERM

# ---- the table --------------------------------------------------------------

table=()
npass=0
nfail=0
failures=()
for ((i = 0; i < nlines; i++)); do
	dir=$(line_dir "$i")
	if [[ ${L_arch[i]} == host ]]; then
		kname="host $(uname -r)"
	else
		pkg=$(grep -m1 -o 'vmtest: booting [^ ]*' "$dir/vmtest.out" 2>/dev/null | cut -d' ' -f3 || true)
		kname="Linux ${L_kernel[i]}${pkg:+ ($pkg)}"
	fi
	for row in ${L_rows[i]}; do
		mode=${row%:*} variant=${row#*:} name=${row/:/-}
		log=$dir/$name.log
		rc=$(cat "$dir/$name.rc" 2>/dev/null || true)
		secs=$(cat "$dir/$name.secs" 2>/dev/null || true)
		if [[ -z $rc ]]; then
			# Not run: the guest never got to it (the row's log says why),
			# or run.sh stopped before booting (vmtest.out says why).
			rc="none"
			[[ -f $log ]] || log=$dir/vmtest.out
		fi
		if [[ $rc == 0 ]]; then
			result="passed ($(grep -c '^--- PASS' "$log" || true) tests)"
			npass=$((npass + 1))
		else
			case $rc in
			124) result="FAILED (timed out)" ;;
			none) result="FAILED (not run)" ;;
			*) result="FAILED (exit $rc)" ;;
			esac
			nfail=$((nfail + 1))
			failures+=("${L_arch[i]}|$kname|$mode|$variant|$log")
		fi
		table+=("$(printf '%-6s %-47s %-11s %-8s %7s  %s' "${L_arch[i]}" "$kname" "$mode" "$variant" "${secs:+${secs}s}" "$result")")
	done
done

for f in "${failures[@]}"; do
	IFS='|' read -r a k m v log <<<"$f"
	echo
	say "$a $k $m $v failed; its failures ($log):"
	grep -E -A4 '^--- FAIL|^panic:|^vmtest: (error|warning|run .* (did not start|reported no))|^matrix: not run|timed out' "$log" | head -40 || true
done

echo
printf '%-6s %-47s %-11s %-8s %7s  %s\n' ARCH KERNEL MODE VARIANT TIME RESULT
printf '%s\n' "${table[@]}"
echo "(logs in $logs; wall time $(clock))"
say "$npass passed, $nfail failed"
[[ $nfail == 0 ]]

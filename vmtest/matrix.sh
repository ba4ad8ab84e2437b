#!/usr/bin/env bash
# vmtest/matrix.sh: the tracer's real-kernel suite on every kernel x attach
# mode, with one test binary, and a table of the results.
#
#   vmtest/matrix.sh [KERNEL ...]        (default: 6.1 6.12)
#
# Rows: the host in tracepoint and auto mode, then each KERNEL under qemu
# (vmtest/run.sh) in fentry, kprobe and tracepoint mode. In the VMs auto must
# choose fentry; on the host VERIFIERLOG_EXPECT_AUTO_HOST (if set) names the
# mode auto must choose there. CI=true is passed everywhere, so a skipped
# kernel test fails its row.
#
# Environment: VMTEST_MODES (default "fentry kprobe tracepoint"),
# MATRIX_LOGS (default: a temporary directory) keeps each row's output.
# Exit status: 0 only if every row passed.
set -euo pipefail
cd "$(dirname "$0")/.."

kernels=("$@")
[[ ${#kernels[@]} -gt 0 ]] || kernels=(6.1 6.12)
read -r -a modes <<<"${VMTEST_MODES:-fentry kprobe tracepoint}"
logs=${MATRIX_LOGS:-$(mktemp -d /tmp/vmtest-matrix.XXXXXX)}
mkdir -p "$logs"

bin=$logs/tracer.test
echo "matrix: building the tracer test binary (static)"
CGO_ENABLED=0 go test -c -o "$bin" ./tracer

rows=()
failed=0
npass=0
nfail=0

# record NAME MODE LOGFILE RC: one table row, and the failures if any.
record() {
	local name=$1 mode=$2 log=$3 rc=$4 result passed
	passed=$(grep -c '^--- PASS' "$log" || true)
	if [[ $rc -eq 0 ]]; then
		result="passed ($passed tests)"
		npass=$((npass + 1))
	else
		result="FAILED (exit $rc)"
		failed=1
		nfail=$((nfail + 1))
		echo "matrix: $name $mode failed; its failures:"
		grep -E -A4 '^--- FAIL|^panic:|vmtest: error' "$log" | head -60 || true
	fi
	rows+=("$(printf '%-46s %-11s %s' "$name" "$mode" "$result")")
}

host="host $(uname -r)"
for mode in tracepoint auto; do
	log=$logs/host-$mode.out
	echo "matrix: $host, $mode"
	rc=0
	env CI=true VERIFIERLOG_TEST_ATTACH=$mode ${VERIFIERLOG_EXPECT_AUTO_HOST:+VERIFIERLOG_EXPECT_AUTO=$VERIFIERLOG_EXPECT_AUTO_HOST} \
		"$bin" -test.v -test.count=1 >"$log" 2>&1 || rc=$?
	record "$host" "$mode" "$log" "$rc"
done

for k in "${kernels[@]}"; do
	for mode in "${modes[@]}"; do
		log=$logs/$k-$mode.out
		echo "matrix: Linux $k under qemu, $mode"
		rc=0
		VMTEST_LOG=$logs/$k-$mode.console vmtest/run.sh "$k" "$bin" \
			CI=true VERIFIERLOG_TEST_ATTACH="$mode" VERIFIERLOG_EXPECT_AUTO=fentry \
			-- -test.v -test.count=1 >"$log" 2>&1 || rc=$?
		kernel=$(grep -m1 -o 'vmtest: booting [^ ]*' "$log" | cut -d' ' -f3 || true)
		record "Linux $k${kernel:+ ($kernel)}" "$mode" "$log" "$rc"
	done
done

echo
printf '%-46s %-11s %s\n' "KERNEL" "MODE" "RESULT"
printf '%s\n' "${rows[@]}"
echo "(logs in $logs)"
echo "matrix: $npass passed, $nfail failed"
exit $failed

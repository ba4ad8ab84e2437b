package kerneltest

import "testing"

// TestKernelAtLeastOnThisKernel compares the running kernel with versions
// just below, at and just above its own.
func TestKernelAtLeastOnThisKernel(t *testing.T) {
	rel, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	major, minor, err := ParseRelease(rel)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		major, minor int
		want         bool
	}{
		{0, 0, true},
		{major - 1, minor + 1, true},
		{major, minor, true},
		{major, minor + 1, false},
		{major + 1, 0, false},
	} {
		if got := KernelAtLeast(t, c.major, c.minor); got != c.want {
			t.Errorf("on %s, KernelAtLeast(%d, %d) = %v, want %v", rel, c.major, c.minor, got, c.want)
		}
	}
	t.Logf("kernel %s is %d.%d", rel, major, minor)
}

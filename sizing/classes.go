package sizing

import (
	"math"
	"math/bits"
)

const (
	minSizeExp = 7  // 128 B, the smallest size class's upper bound
	maxSizeExp = 30 // 1 GiB, the largest finite one
	// NumSizeClasses is the number of size classes: one per power of two
	// from 128 B to 1 GiB, plus "larger than 1 GiB".
	NumSizeClasses = maxSizeExp - minSizeExp + 2
)

// SizeClasses are counts per size class, not cumulative: the size
// histograms' buckets. Class 0 holds sizes up to 128 B, class i
// (0 < i < NumSizeClasses-1) sizes in (2^(i+6), 2^(i+7)], the last class
// sizes above 1 GiB. The bounds are powers of two, so a recommendation is
// a class's upper bound and every figure drawn from the classes is exact
// or a bucket bound.
type SizeClasses [NumSizeClasses]uint64

// SizeClassOf is the class holding size n: the smallest power of two >= n
// (at least 128 B), or the last class above 1 GiB.
func SizeClassOf(n uint64) int {
	if n <= 1<<minSizeExp {
		return 0
	}
	exp := bits.Len64(n - 1) // smallest e with 2^e >= n
	if exp > maxSizeExp {
		return NumSizeClasses - 1
	}
	return exp - minSizeExp
}

// SizeClassUpper is class i's upper bound, 0 for the last (no bound).
func SizeClassUpper(i int) uint64 {
	if i >= NumSizeClasses-1 {
		return 0
	}
	return 1 << (i + minSizeExp)
}

// SizeClassLower is class i's lower bound (exclusive): the sizes it holds
// are above it.
func SizeClassLower(i int) uint64 {
	if i == 0 {
		return 0
	}
	return 1 << (i + minSizeExp - 1)
}

// Total is the sum of the counts.
func (c *SizeClasses) Total() uint64 {
	var t uint64
	for _, n := range c {
		t += n
	}
	return t
}

// Quantile is the smallest class upper bound holding fraction of the
// counts (the first whose cumulative count reaches ceil(total *
// fraction)), and false with no counts or when that is above 1 GiB.
func (c *SizeClasses) Quantile(fraction float64) (uint64, bool) {
	total := c.Total()
	if total == 0 {
		return 0, false
	}
	want := uint64(math.Ceil(float64(total) * fraction))
	var acc uint64
	for i, n := range c {
		acc += n
		if acc >= want {
			size := SizeClassUpper(i)
			return size, size != 0
		}
	}
	return 0, false
}

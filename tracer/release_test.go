package tracer

import "testing"

func TestParseRelease(t *testing.T) {
	for _, c := range []struct {
		release      string
		major, minor int
	}{
		{"5.10.0-30-amd64", 5, 10},
		{"6.18.0", 6, 18},
		{"6.1.0-rc3", 6, 1},
		{"6.18-rc1", 6, 18},
		{"6.12.48+deb13-cloud-arm64", 6, 12},
		{"5.15.167.4-microsoft-standard-WSL2", 5, 15},
		{"4.19", 4, 19},
	} {
		major, minor, err := ParseRelease(c.release)
		if err != nil || major != c.major || minor != c.minor {
			t.Errorf("ParseRelease(%q) = %d, %d, %v; want %d, %d", c.release, major, minor, err, c.major, c.minor)
		}
	}
	for _, garbage := range []string{"", "garbage", "6", "6.", "6.x", ".10", "v6.1", "+6.1", "-6.1", " 6.1", "6.-1", "99999999999999999999.1"} {
		if major, minor, err := ParseRelease(garbage); err == nil {
			t.Errorf("ParseRelease(%q) = %d, %d, want an error", garbage, major, minor)
		}
	}
}

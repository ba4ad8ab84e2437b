package main

import "testing"

func TestReplaceSection(t *testing.T) {
	doc := "# Benchmarks\n\nintro\n\n## Load storm\n\nold storm\n\n## Footprint\n\nold footprint\n\n## Fleet\n\nfleet\n"
	got := replaceSection(doc, footprintHeading, "## Footprint\n\nnew footprint\n")
	want := "# Benchmarks\n\nintro\n\n## Load storm\n\nold storm\n\n## Footprint\n\nnew footprint\n\n## Fleet\n\nfleet\n"
	if got != want {
		t.Errorf("replaced:\n%s\nwant:\n%s", got, want)
	}
	got = replaceSection("# Benchmarks\n\n## Fleet\n\nfleet\n", footprintHeading, "## Footprint\n\nnew\n")
	want = "# Benchmarks\n\n## Fleet\n\nfleet\n\n## Footprint\n\nnew\n"
	if got != want {
		t.Errorf("appended:\n%s\nwant:\n%s", got, want)
	}
}

func TestKeepSections(t *testing.T) {
	old := "# Benchmarks\n\nold intro\n\n## Load storm\n\nold\n\n## Fleet\n\nfleet table\n\n## Footprint\n\nold\n"
	report := "# Benchmarks\n\nnew intro\n\n## Load storm\n\nnew\n\n## Footprint\n\nnew\n"
	got := keepSections(report, old)
	want := report + "\n## Fleet\n\nfleet table\n"
	if got != want {
		t.Errorf("kept:\n%s\nwant:\n%s", got, want)
	}
	if got := keepSections(report, ""); got != report {
		t.Errorf("without an old file:\n%s\nwant:\n%s", got, report)
	}
}
